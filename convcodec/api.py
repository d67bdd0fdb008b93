"""The Python API: ``compress`` and ``decompress``.

    >>> import convcodec
    >>> data = convcodec.compress("photo.png", quality=60)       # bytes of a .cdr file
    >>> data = convcodec.compress("photo.png", steps=6)          # the first 6 groups only
    >>> img = convcodec.decompress(data)                          # PIL.Image.Image, RGB
    >>> data = convcodec.compress(img, max_bytes=6000)            # the best file that fits

Models are loaded once per process and reused. torch is imported on the
first call, not by ``import convcodec``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

from .container import CdrFile, pack, truncate, unpack

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

ImageLike = Union[str, os.PathLike, bytes, "Image.Image", "np.ndarray"]


class RateError(ValueError):
    """No file of the asked size can be made; ``smallest`` is the smallest possible."""

    def __init__(self, msg: str, smallest: int = 0):
        super().__init__(msg)
        self.smallest = smallest


def fit_to_budget(cdr: CdrFile, max_bytes: int) -> CdrFile:
    """The longest prefix of ``cdr`` whose file is at most ``max_bytes``.

    Cutting groups is exact: a file cut to t groups is byte for byte the file
    that compressing with ``steps=t`` writes. At least one group is kept, since
    a file of no groups shows only the model's prior, not the image.
    """
    for t in range(len(cdr.chunks), 0, -1):
        cut = truncate(cdr, t)
        n = len(pack(cut))
        if n <= max_bytes:
            return cut
    smallest = len(pack(truncate(cdr, 1))) if cdr.chunks else 0
    raise RateError(f"cannot fit the image in {max_bytes} bytes: the smallest file with one group "
                    f"is {smallest} bytes", smallest)


def compress(image: ImageLike, steps: int | None = None, model: str | None = None,
             max_bytes: int | None = None, bpp: float | None = None, device: str = "auto",
             refine: int = 0, quality: int | None = None) -> bytes:
    """Compress an image to the bytes of a ``.cdr`` file.

    Args:
        image: a path, the bytes of an image file, a PIL image, or a numpy
            array (HxW, HxWx3 or HxWx4; uint8, or float in [0, 1]).
        quality: 1..100 for a variable-rate model (the default model is one;
            default 50); higher means more bytes and a closer picture.
        steps: latent groups to store (default: all the model has).
        model: model name (``convcodec.models()``) or path to a .safetensors file.
        max_bytes: write the best file that fits in this many bytes (never
            more): the highest quality of a variable-rate model, the longest
            prefix of groups; combined with ``steps``, the smaller wins.
        bpp: like ``max_bytes``, as bits per pixel.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        refine: gradient steps that improve the encoder's latents for this
            image (convcodec.refine): 0 is one network pass; 40 is about 17x
            slower and, with matnet-vr9 on Kodak, 4.6% fewer bits at equal
            PSNR (the gain is at high qualities).
    """
    from .image import load_image
    rgb = load_image(image)
    budget = _budget(rgb.shape[1], rgb.shape[0], max_bytes, bpp)
    if budget is not None and quality is not None:
        raise ValueError("quality and max_bytes/bpp both set the rate: give one")
    if budget is None:
        from . import codec
        return codec.encode(rgb, model=model, steps=steps, device=device, refine=refine, quality=quality).data
    return encode_to_budget(rgb, model, steps, budget, device, refine)


def _fit_quality(rgb, model, steps, budget: int, device: str):
    """A variable-rate model's best file within ``budget``: the highest
    quality whose file fits (bisection; the rate rises with quality), or at
    the lowest quality the longest prefix of groups that fits. Returns
    (CdrFile, quality)."""
    from . import codec
    lo, hi = 1, 100
    first = codec.encode(rgb, model=model, steps=steps, device=device, quality=lo)
    if len(first.data) > budget:
        return fit_to_budget(first.cdr, budget), lo
    best = first.cdr
    while lo < hi:                      # invariant: quality lo fits
        mid = (lo + hi + 1) // 2
        enc = codec.encode(rgb, model=model, steps=steps, device=device, quality=mid)
        if len(enc.data) <= budget:
            lo, best = mid, enc.cdr
        else:
            hi = mid - 1
    return best, lo


def encode_to_budget(rgb, model: str | None, steps: int | None, budget: int,
                     device: str = "auto", refine: int = 0) -> bytes:
    """The best file within ``budget`` bytes. A variable-rate model (the
    default) searches its quality; a single-rate one cuts groups. With no
    model named, every current (not superseded) model is tried and the file
    that decodes best (highest PSNR) is kept. With ``refine``, the file
    chosen is then encoded again with refinement (kept if it still fits)."""
    from . import codec
    from .metrics import psnr
    from .zoo import DEFAULT_MODEL, current_models
    candidates = [model] if model is not None else (current_models() or [DEFAULT_MODEL])
    best, errors = None, []
    for m in candidates:
        net, _ = codec.load_model(m)
        try:
            if codec.is_variable_rate(net):
                cut, quality = _fit_quality(rgb, m, steps, budget, device)
            else:
                cut, quality = fit_to_budget(codec.encode(rgb, model=m, steps=steps, device=device).cdr, budget), None
        except RateError as e:
            errors.append(e)
            continue
        data = pack(cut)
        q = psnr(rgb, codec.decode(cut, model=m, device=device)) if len(candidates) > 1 else 0.0
        if best is None or q > best[0]:
            best = (q, data, m, len(cut.chunks), quality)
    if best is None:
        raise min(errors, key=lambda e: e.smallest)
    _, data, m, t, quality = best
    if refine:
        better = codec.encode(rgb, model=m, steps=t, device=device, refine=refine, quality=quality).data
        if len(better) <= budget:
            data = better
    return data


def _budget(w: int, h: int, max_bytes: int | None, bpp: float | None) -> int | None:
    budgets = []
    if max_bytes is not None:
        if max_bytes <= 0:
            raise RateError("max_bytes must be positive")
        budgets.append(int(max_bytes))
    if bpp is not None:
        if not bpp > 0:
            raise RateError("bpp must be positive")
        budgets.append(int(bpp * w * h / 8))
    return min(budgets) if budgets else None


def decompress(data: bytes | os.PathLike | str, steps: int | None = None, temperature: float = 0.0,
               seed: int = 0, model: str | None = None, device: str = "auto") -> "Image.Image":
    """Decode a ``.cdr`` file (its bytes or its path) to an RGB PIL image.

    Args:
        steps: decode only the first ``steps`` stored groups.
        temperature: groups not decoded come from the prior mean (0) or a
            sample at this temperature, seeded by ``seed``.
        model: decode with this model instead of the one named in the file
            (it must have the same weights).
    """
    from PIL import Image
    from . import codec
    if not isinstance(data, (bytes, bytearray, memoryview)):
        with open(data, "rb") as f:
            data = f.read()
    rgb = codec.decode(unpack(bytes(data)), model=model, steps=steps, temperature=temperature,
                       seed=seed, device=device)
    return Image.fromarray(rgb, "RGB")


def decompress_many(files, temperature: float = 0.0, seed: int = 0, model: str | None = None,
                    device: str = "auto", batch: int = 16) -> list["Image.Image"]:
    """Decode several ``.cdr`` files (bytes or paths) to RGB PIL images.

    Files made by the same model at the same size go through the network
    together, ``batch`` at a time: the way to keep a GPU busy. Each picture
    is exactly what ``decompress`` gives for that file.
    """
    from PIL import Image
    from . import codec
    blobs = []
    for f in files:
        if not isinstance(f, (bytes, bytearray, memoryview)):
            with open(f, "rb") as fh:
                f = fh.read()
        blobs.append(bytes(f))
    pics = codec.decode_many(blobs, model=model, temperature=temperature, seed=seed, device=device, batch=batch)
    return [Image.fromarray(p, "RGB") for p in pics]


def cut(data: bytes, steps: int | None = None, max_bytes: int | None = None) -> bytes:
    """Cut a ``.cdr`` file to fewer groups without re-encoding."""
    cdr = unpack(bytes(data))
    if steps is not None:
        cdr = truncate(cdr, steps)
    if max_bytes is not None:
        cdr = fit_to_budget(cdr, max_bytes)
    return pack(cdr)


def models() -> list[str]:
    """Names of the installed models."""
    from .zoo import list_models
    return list_models()
