"""Building blocks shared by the backbones."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# The coder snaps prior scales (in quantization-bin units) to a table spanning
# this range; training clamps to the same range so the rate it optimises is the
# rate the coder can spend (see convcodec.entropy).
SCALE_MIN = 0.11
SCALE_MAX = 64.0
LIKELIHOOD_MIN = 1e-9


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM (Shi et al. 2015) as used by Convolutional DRAW.

    The cell state is kept in float32 even under bf16 autocast: it integrates
    over all steps and bf16's 8-bit mantissa would let it drift.
    """

    def __init__(self, in_ch: int, hid_ch: int, kernel: int = 3):
        super().__init__()
        self.hid_ch = hid_ch
        self.gates = nn.Conv2d(in_ch + hid_ch, 4 * hid_ch, kernel, padding=kernel // 2)
        with torch.no_grad():  # forget-gate bias 1: remember by default
            self.gates.bias.zero_()
            self.gates.bias[hid_ch:2 * hid_ch].fill_(1.0)

    def forward(self, inp: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        i, f, g, o = self.gates(torch.cat([inp, h.to(inp.dtype)], 1)).float().chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def _normal_cdf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-v * (1.0 / math.sqrt(2.0)))


def gaussian_bits(offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Bits to code ``offset`` (in bin units) under a zero-mean Gaussian of
    ``scale`` (bin units) integrated over the bin [offset-1/2, offset+1/2].

    This is exactly the quantity the range coder spends for an integer offset,
    and its noisy relaxation during training. Computed in float32; uses the
    symmetry of the Gaussian to stay in the accurate tail of erfc.
    """
    offset = offset.float().abs()
    scale = scale.float().clamp(SCALE_MIN, SCALE_MAX)
    p = _normal_cdf((0.5 - offset) / scale) - _normal_cdf((-0.5 - offset) / scale)
    return -torch.log2(p.clamp_min(LIKELIHOOD_MIN))


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016), or its inverse.

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2). The workhorse
    nonlinearity of learned transform codecs: it gaussianizes the features at
    the cost of one 1x1 convolution. Computed in float32 (bf16 would lose the
    small denominators)."""

    def __init__(self, ch: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(ch))
        self.gamma = nn.Parameter(0.1 * torch.eye(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        b, ch, h, w = x32.shape
        # sum_j gamma_ij x_j^2 as one matrix product over all positions: the
        # 1x1 convolution gives the same numbers but took PyTorch's slow
        # conv path here (3x slower; 6-11% of a Kodak encode or decode).
        sq = (x32 * x32).reshape(b, ch, h * w)
        beta = (self.beta.abs() + 1e-6).view(ch, 1)
        if b == 1:
            norm = torch.addmm(beta, self.gamma.abs(), sq[0])
        else:
            norm = torch.matmul(self.gamma.abs(), sq) + beta
        norm = torch.sqrt(norm).view(b, ch, h, w)
        return x32 * norm if self.inverse else x32 / norm


def analysis(in_ch: int, widths: tuple[int, ...], kernel: int = 5) -> nn.Sequential:
    """g_a: strided convolutions with GDN, one octave per width."""
    layers: list[nn.Module] = []
    c = in_ch
    for i, w in enumerate(widths):
        layers.append(nn.Conv2d(c, w, kernel, stride=2, padding=kernel // 2))
        if i < len(widths) - 1:
            layers.append(GDN(w))
        c = w
    return nn.Sequential(*layers)


def synthesis(in_ch: int, widths: tuple[int, ...], out_ch: int, kernel: int = 3) -> nn.Sequential:
    """g_s: sub-pixel convolutions (conv, then depth-to-space) with inverse GDN."""
    layers: list[nn.Module] = []
    c = in_ch
    outs = list(widths) + [out_ch]
    for i, w in enumerate(outs):
        layers += [nn.Conv2d(c, 4 * w, kernel, padding=kernel // 2), nn.PixelShuffle(2)]
        if i < len(outs) - 1:
            layers.append(GDN(w, inverse=True))
        c = w
    return nn.Sequential(*layers)


# Inference on big images runs g_a and g_s in bands of BAND_ROWS pixel rows,
# so memory stays bounded. Each band carries a halo wider than the receptive
# field, so the result is that of one pass over the whole image: no seams.
BAND_ROWS = 256
ANALYSIS_HALO = 32      # pixels; g_a's receptive field reaches 29 (multiple of the stride)
SYNTHESIS_HALO = 2      # canvas rows; g_s's receptive field reaches < 2


def _bands(fn, maps, band: int, halo: int, up: int = 1, down: int = 1) -> tuple:
    """The one band loop: ``fn(*maps)`` -> tuple of maps, computed in bands of
    ``band`` input rows with ``halo`` rows of context each side; outputs have
    up/down rows per input row and are cropped back to each band's rows."""
    rows = maps[0].shape[-2]
    parts = []
    for a in range(0, rows, band):
        b = min(rows, a + band)
        lo, hi = max(0, a - halo), min(rows, b + halo)
        out = fn(*(m[..., lo:hi, :] for m in maps))
        parts.append([o[..., (a - lo) * up // down:(b - lo) * up // down, :] for o in out])
    return tuple(torch.cat(col, -2) for col in zip(*parts))


def _in_bands(fn, x: torch.Tensor, band: int, halo: int, up: int, down: int) -> torch.Tensor:
    """fn(x) for a row-local fn (g_a or g_s), in bands at inference on images
    taller than BAND_ROWS plus halos (in pixels), where it bounds memory;
    elsewhere one pass."""
    if torch.is_grad_enabled() or x.shape[-2] * up <= BAND_ROWS + 2 * ANALYSIS_HALO:
        return fn(x)
    return _bands(lambda t: (fn(t),), (x,), band, halo, up, down)[0]


# The per-group networks (prior, posterior, update) work on whole latent maps.
# On big images those maps leave the CPU caches and each position costs more
# (measured: 3.3 s/MP at 12 MP against 1.9 s/MP at 1 MP for the Conv DRAW
# steps, one thread); running each of them in bands of about BAND_POSITIONS
# latent positions brought 12 MP to 2.5 s/MP. Each band carries ``halo`` rows
# of context (the network's receptive field in rows), so the result is that
# of one pass: the test checks that banded and whole maps agree exactly.
BAND_POSITIONS = 16384


def by_rows(fn, *maps: torch.Tensor, halo: int):
    """``fn(*maps)`` -> tuple of maps of the same height, computed in row bands
    at inference when the maps are large (one pass otherwise, and always when
    training). ``halo`` = rows of context ``fn`` needs on each side."""
    rows, cols = maps[0].shape[-2:]
    if torch.is_grad_enabled() or rows * cols <= BAND_POSITIONS:
        return fn(*maps)
    return _bands(fn, maps, max(1, BAND_POSITIONS // cols), halo)


def run_analysis(g_a: nn.Module, x01: torch.Tensor, stride: int) -> torch.Tensor:
    """y = g_a(x - 1/2) in float32, banded on big images (``stride`` = g_a's)."""
    return _in_bands(lambda t: g_a(t).float(), x01 - 0.5, BAND_ROWS, ANALYSIS_HALO, up=1, down=stride)


def run_synthesis(g_s: nn.Module, y: torch.Tensor, stride: int) -> torch.Tensor:
    """x_hat = g_s(y) + 1/2 in float32, banded on big images."""
    return _in_bands(lambda t: g_s(t).float(), y, BAND_ROWS // stride, SYNTHESIS_HALO,
                     up=stride, down=1) + 0.5
