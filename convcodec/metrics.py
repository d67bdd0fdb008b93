"""Quality and rate measures shared by the tools (numpy only)."""
from __future__ import annotations

import io
import time
from typing import NamedTuple

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over all RGB samples, 8-bit peak (CompressAI's convention)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def bpp(nbytes: int, rgb: np.ndarray) -> float:
    return 8.0 * nbytes / (rgb.shape[0] * rgb.shape[1])


class Roundtrip(NamedTuple):
    nbytes: int             # size of the encoded file
    decoded: np.ndarray     # decoded RGB
    encode_s: float
    decode_s: float


def pillow_roundtrip(rgb: np.ndarray, fmt: str, **params) -> Roundtrip:
    """Encode with Pillow, decode again, timing both."""
    buf = io.BytesIO()
    t0 = time.perf_counter()
    Image.fromarray(rgb).save(buf, format=fmt, **params)
    te = time.perf_counter() - t0
    n = buf.tell()
    buf.seek(0)
    t0 = time.perf_counter()
    dec = np.asarray(Image.open(buf).convert("RGB"))
    return Roundtrip(n, dec, te, time.perf_counter() - t0)


def interp_curve(bpps, psnrs, at: float) -> float | None:
    """PSNR of a (mean bpp, mean PSNR) curve at ``at`` bpp, linear between its
    points; None outside its range (no extrapolation)."""
    order = np.argsort(bpps)
    x, y = np.asarray(bpps)[order], np.asarray(psnrs)[order]
    if at < x[0] or at > x[-1]:
        return None
    return float(np.interp(at, x, y))


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper envelope of (bpp, quality) points: those no other point beats
    with fewer bits and at least the same quality. Sorted by bpp."""
    out, best = [], -float("inf")
    for b, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            out.append((b, q))
            best = q
    return out


def rate_window(points: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """The part of a (bpp, quality) curve between ``lo`` and ``hi`` bpp: its
    points inside, plus the curve's value at each end it reaches (linear
    between points, as ``interp_curve``). Dropping the outside points alone
    would cut the curve short of the window's ends (at the last point below
    ``hi``), so a BD-rate "over 0.1-1.5 bpp" would cover less than that."""
    pts = sorted(points)
    b, q = [p[0] for p in pts], [p[1] for p in pts]
    out = [p for p in pts if lo < p[0] < hi]
    for edge in (lo, hi):
        v = interp_curve(b, q, edge)
        if v is not None:
            out.append((edge, v))
    return sorted(out)


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]],
            bpp_range: tuple[float, float] | None = None) -> float | None:
    """Bjontegaard delta rate (%) of ``test`` against ``anchor``: the average
    bitrate difference at equal quality over the overlapping quality range.
    Curves are (bpp, quality) points; log-rate is interpolated as a function
    of quality with PCHIP (as in the JVET/AOM tools), and integrated exactly.
    With ``bpp_range`` both curves are first cut to that window of rates
    (``rate_window``). Negative means ``test`` needs fewer bits. None if the
    ranges do not overlap."""
    from scipy.interpolate import PchipInterpolator

    if bpp_range is not None:
        anchor, test = rate_window(anchor, *bpp_range), rate_window(test, *bpp_range)

    def prep(pts):
        pts = pareto(pts)
        q = np.array([p[1] for p in pts]); r = np.log(np.array([p[0] for p in pts]))
        return q, r

    qa, ra = prep(anchor)
    qt, rt = prep(test)
    if len(qa) < 2 or len(qt) < 2:
        return None
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if hi <= lo:
        return None
    ia = PchipInterpolator(qa, ra).antiderivative()
    it = PchipInterpolator(qt, rt).antiderivative()
    avg = ((it(hi) - it(lo)) - (ia(hi) - ia(lo))) / (hi - lo)
    return float((np.exp(avg) - 1) * 100)


def msssim_db(v: float) -> float:
    """MS-SSIM on the dB scale used for BD-rates: -10 log10(1 - MS-SSIM)."""
    return float(-10 * np.log10(max(1e-10, 1 - v)))


class EntropyClock:
    """Seconds spent in the range coder (convcodec.entropy.encode/decode),
    counted by wrapping both functions while the clock is installed. The
    codec looks them up on the module at call time, so wrapping the module's
    attributes catches every call. ``reset()`` before a measurement, read
    ``seconds`` after."""

    def __init__(self):
        from . import entropy
        self.seconds = 0.0
        self._entropy = entropy
        self._orig = (entropy.encode, entropy.decode)
        entropy.encode, entropy.decode = self._timed(entropy.encode), self._timed(entropy.decode)

    def _timed(self, f):
        def g(*args, **kw):
            t0 = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        return g

    def reset(self):
        self.seconds = 0.0

    def close(self):
        """Put the coder's functions back."""
        self._entropy.encode, self._entropy.decode = self._orig
