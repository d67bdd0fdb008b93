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


class Reader(nn.Module):
    """Image -> features at 1/2**len(widths) resolution.

    Space-to-depth then a 3x3 conv per octave: the same receptive field as a
    strided 5x5 stem for a fraction of its cost on a CPU.
    """

    def __init__(self, in_ch: int, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        for i, w in enumerate(widths):
            layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * c, w, 3, padding=1)]
            if i < len(widths) - 1:
                layers.append(nn.LeakyReLU(0.2))
            c = w
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Writer(nn.Module):
    """Features at 1/2**len(widths) resolution -> image (the canvas update W h_dec).

    Sub-pixel convolutions (conv then depth-to-space), mirror of Reader.
    """

    def __init__(self, in_ch: int, widths: tuple[int, ...], out_ch: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        outs = list(widths[1:]) + [out_ch]
        for i, w in enumerate(outs):
            layers += [nn.Conv2d(c, 4 * w, 3, padding=1), nn.PixelShuffle(2)]
            if i < len(outs) - 1:
                layers.append(nn.LeakyReLU(0.2))
            c = w
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


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
