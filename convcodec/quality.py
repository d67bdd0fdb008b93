"""The quality scale of variable-rate models, 1..100 as in cjpeg and cwebp.

Torch-free, so the numpy decoder (convcodec.npdecode) reads a file's quality
byte exactly as the torch codec writes it: one definition for both.
"""
from __future__ import annotations

# The default sits near the knee of matnet-vr's curve (above quality 60 its PSNR saturated
# near 30 dB on Kodak); later flagships keep it (matnet-vr5: 0.50 bpp, 30.86 dB on Kodak).
DEFAULT_QUALITY = 50
QUALITY_RANGE = (1, 100)


def quality_u(quality: int) -> float:
    """Quality 1..100 -> the model's rate position u in [0, 1] (u = 0 is the
    smallest lambda of its range, u = 1 the largest)."""
    return (int(quality) - 1) / 99.0


def quality_lambda(lambdas, quality: int) -> float:
    """The distortion weight a model with lambda range ``lambdas`` (lo, hi)
    trained for this quality: log-spaced in u, as training draws it."""
    lo, hi = lambdas
    return lo * (hi / lo) ** quality_u(quality)


def check_quality(quality) -> int:
    """``quality`` as an int in QUALITY_RANGE, or ValueError."""
    q = int(quality)
    if q != quality or not QUALITY_RANGE[0] <= q <= QUALITY_RANGE[1]:
        raise ValueError(f"quality must be an integer from {QUALITY_RANGE[0]} to {QUALITY_RANGE[1]}, not {quality!r}")
    return q
