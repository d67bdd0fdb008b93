"""Image input/output: colour modes, orientation, size limits. No torch."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .container import MAX_PIXELS, MAX_SIDE


class ImageError(Exception):
    """The input cannot be read as an image we encode; the message says why."""


def _check_size(w: int, h: int):
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise ImageError(f"image is too large ({w}x{h}; at most {MAX_SIDE} per side "
                         f"and {MAX_PIXELS // 1_000_000} megapixels)")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> HxWx3 uint8.

    Alpha is flattened onto white (what a viewer shows for transparent areas);
    16-bit and 32-bit greyscale are scaled to 8 bits rather than clipped.
    """
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        g = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "F":
        g = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_image(src) -> np.ndarray:
    """Path, bytes, file object, PIL image or numpy array -> HxWx3 uint8."""
    if isinstance(src, np.ndarray):
        a = src
        if a.ndim in (2, 3):
            _check_size(a.shape[1], a.shape[0])
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ImageError(f"array of shape {src.shape} is not an image (want HxW, HxWx3 or HxWx4)")
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating):
                a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
            else:
                raise ImageError(f"array dtype {a.dtype} not supported (use uint8 or float in [0, 1])")
        if a.shape[2] == 4:
            return to_rgb8(Image.fromarray(a, "RGBA"))
        return np.ascontiguousarray(a)
    if isinstance(src, Image.Image):
        _check_size(*src.size)
        return to_rgb8(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    name = src if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "input")
    try:
        with Image.open(src) as im:
            _check_size(*im.size)     # before decoding pixels: no decompression bombs
            im.load()
            return to_rgb8(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image is too large, refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from None


def save_image(rgb: np.ndarray, fp, fmt: str | None = None):
    """Write HxWx3 uint8 with Pillow; ``fmt`` from the file name when None."""
    Image.fromarray(rgb, "RGB").save(fp, format=fmt)
