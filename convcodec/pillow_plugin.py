"""Pillow plugin: ``Image.open("x.cdr")`` decodes, ``img.save("x.cdr", steps=8)`` encodes.

Registered by ``import convcodec``. Opening reads only the header (size and
mode); pixels are decoded on first access. Save options: ``steps``,
``quality``, ``model``, ``max_bytes``, ``bpp``, ``device``; open options are set on the
image before loading it: ``img.decode_options = {"temperature": 1, "seed": 3}``.
"""
from __future__ import annotations

from PIL import Image, ImageFile

from .container import MAGIC, unpack


def _accept(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


class CdrImageFile(ImageFile.ImageFile):
    format = "CDR"
    format_description = "convcodec neural image"

    def _open(self):
        cdr = unpack(self.fp.read())    # ContainerError says what is wrong with it
        self._cdr = cdr
        self._mode = "RGB"
        self._size = (cdr.header.width, cdr.header.height)
        self.info["model"] = cdr.header.model_name
        self.info["groups"] = (cdr.header.groups_stored, cdr.header.groups_total)
        if cdr.header.quality:
            self.info["quality"] = cdr.header.quality
        self.decode_options: dict = {}
        self.tile = []

    def load(self):
        if getattr(self, "_cdr", None) is not None:
            from . import codec
            rgb = codec.decode(self._cdr, **self.decode_options)
            self.im = Image.fromarray(rgb, "RGB").im
            self._cdr = None
        return Image.Image.load(self)


def _save(im: Image.Image, fp, filename):
    from .api import compress
    opts = {k: im.encoderinfo[k] for k in ("quality", "steps", "model", "max_bytes", "bpp", "device")
            if k in im.encoderinfo}
    fp.write(compress(im, **opts))


def register():
    Image.register_open(CdrImageFile.format, CdrImageFile, _accept)
    Image.register_save(CdrImageFile.format, _save)
    Image.register_extension(CdrImageFile.format, ".cdr")
    Image.register_mime(CdrImageFile.format, "image/x-convcodec")
