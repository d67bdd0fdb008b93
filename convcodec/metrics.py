"""Quality and rate measures shared by the tools (numpy only)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over all RGB samples, 8-bit peak (CompressAI's convention)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def bpp(nbytes: int, rgb: np.ndarray) -> float:
    return 8.0 * nbytes / (rgb.shape[0] * rgb.shape[1])


def pillow_roundtrip(rgb: np.ndarray, fmt: str, **params) -> tuple[int, np.ndarray]:
    """Encode with Pillow, decode again: (bytes, decoded RGB)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **params)
    n = buf.tell()
    buf.seek(0)
    return n, np.asarray(Image.open(buf).convert("RGB"))


def interp_curve(bpps, psnrs, at: float) -> float | None:
    """PSNR of a (mean bpp, mean PSNR) curve at ``at`` bpp, linear between its
    points; None outside its range (no extrapolation)."""
    order = np.argsort(bpps)
    x, y = np.asarray(bpps)[order], np.asarray(psnrs)[order]
    if at < x[0] or at > x[-1]:
        return None
    return float(np.interp(at, x, y))
