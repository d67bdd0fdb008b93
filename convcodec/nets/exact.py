"""Exact entropy-model arithmetic: the prior scales every machine agrees on.

A coded symbol's probability is fixed by its scale index. If the index comes
out of float arithmetic whose summation order depends on the CPU's
instruction set, the thread count or the GPU, then two machines can snap the
same scale to neighbouring table entries, and the range decoder goes out of
step (issue 15). Here the index is computed so that every machine gets the
same bits:

* The inputs are already-decoded integer symbols (offsets k from the prior
  mean, times the bin width; never a float state of the network).
* Weights and activations are fixed-point: activations are multiples of
  2^-ACT_BITS, weights multiples of 2^-WEIGHT_BITS, biases multiples of the
  product grid. Convolutions run in float64 as unfold + matrix product, so
  every partial sum is an integer multiple of 2^-(ACT_BITS+WEIGHT_BITS) far
  below 2^53 of them: exact whatever the order of summation (checked per layer
  on load, with activations clamped to +-ACT_MAX).
* Elementwise steps are single IEEE operations (correctly rounded everywhere):
  ReLU, rounding back to the activation grid (a multiply by a power of two,
  a round-half-even, a divide by it), and the final (v - c) * inv_step.
* The per-file constants (bin widths at the file's quality, their logs) are
  computed once in Python with ``decimal`` (correctly rounded exp/ln), never
  with the platform's libm.

Training runs the same network in float32 (``ScaleNet.forward``); at this
grid (2^-12 activations, 2^-14 weights) the fixed-point network differs from
the float one by ~1e-4 in log-scale, far below the 0.1 step of the scale table.
"""
from __future__ import annotations

import decimal
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_BITS = 12                  # activations on a 2^-12 grid
WEIGHT_BITS = 14               # weights on a 2^-14 grid
ACT_MAX = float(2 ** 15)       # activations are clamped to +-ACT_MAX
_SUM_LIMIT = 2.0 ** (53 - ACT_BITS - WEIGHT_BITS)   # |partial sums| below this are exact

_CTX = decimal.Context(prec=40)


def dexp(x: float) -> float:
    """exp(x), correctly rounded (decimal), the same on every machine."""
    return float(_CTX.exp(decimal.Decimal(x)))


def dlog(x: float) -> float:
    """log(x), correctly rounded (decimal), the same on every machine."""
    return float(_CTX.ln(decimal.Decimal(x)))


def to_grid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to the nearest multiple of 2^-bits (exact IEEE steps, half to even)."""
    s = float(2 ** bits)
    return torch.round(x * s) / s


def act_grid(x: torch.Tensor) -> torch.Tensor:
    return to_grid(x, ACT_BITS).clamp_(-ACT_MAX, ACT_MAX)


class ExactConv:
    """A trained Conv2d in fixed point: weights on the 2^-WEIGHT_BITS grid,
    evaluated in float64 as unfold + matmul (a plain sum of products on every
    device, so exact). Refuses weights whose worst-case sum could leave the
    exactly representable range."""

    def __init__(self, conv: nn.Conv2d):
        assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        k = conv.kernel_size[0]
        assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
        w = to_grid(conv.weight.detach().double(), WEIGHT_BITS)
        b = to_grid(conv.bias.detach().double(), ACT_BITS + WEIGHT_BITS)
        worst = float(w.abs().sum(dim=(1, 2, 3)).max()) * ACT_MAX + float(b.abs().max())
        if worst >= _SUM_LIMIT:
            raise ValueError(f"weights too large for exact fixed point ({worst:.3g} >= {_SUM_LIMIT:.3g})")
        self.k, self.out = k, w.shape[0]
        self.w = w.reshape(self.out, -1)
        self.b = b.view(-1, 1)

    def to(self, device) -> "ExactConv":
        self.w, self.b = self.w.to(device), self.b.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bsz, _, h, wd = x.shape
        cols = x if self.k == 1 else F.unfold(x, self.k, padding=self.k // 2)
        cols = cols.reshape(bsz, -1, h * wd)
        return (torch.matmul(self.w, cols) + self.b).view(bsz, self.out, h, wd)


class ScaleNet(nn.Module):
    """The prior scale of one latent group from integer context only.

    Input: ``ctx`` (B x C_in x H x W), the magnitudes |w k| of earlier
    groups' decoded offsets (in latent units) brought to this group's
    resolution, and the file's quality as one constant map. Output: log of
    the prior's standard deviation in latent units, per latent map.
    3x3 conv, ReLU, 1x1, ReLU, 1x1: cheap enough to run in float64."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, init_log_sigma: float = 0.0):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.c2 = nn.Conv2d(hidden, hidden, 1)
        self.c3 = nn.Conv2d(hidden, out_ch, 1)
        # Start as a constant scale (a factorized prior), learn the context from there.
        nn.init.zeros_(self.c3.weight)
        nn.init.constant_(self.c3.bias, init_log_sigma)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.c3(F.relu(self.c2(F.relu(self.c1(ctx)))))

    def exact(self) -> "ExactScaleNet":
        return ExactScaleNet(self)


class ExactScaleNet:
    """ScaleNet in fixed point (see the module docstring); built once per model."""

    def __init__(self, net: ScaleNet):
        self.convs = [ExactConv(net.c1), ExactConv(net.c2), ExactConv(net.c3)]
        self.device = torch.device("cpu")

    def to(self, device) -> "ExactScaleNet":
        device = torch.device(device)
        if device != self.device:
            self.convs = [c.to(device) for c in self.convs]
            self.device = device
        return self

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx on the activation grid (float64) -> log sigma on the product grid (float64)."""
        a = act_grid(F.relu(self.convs[0](ctx)))
        a = act_grid(F.relu(self.convs[1](a)))
        return self.convs[2](a)


def snap_index(log_sigma: torch.Tensor, offset: torch.Tensor, inv_step: float, levels: int) -> torch.Tensor:
    """Scale-table index round((log_sigma - offset) * inv_step), clipped: two
    correctly rounded IEEE operations and a round, the same on every device.
    ``offset`` = log(bin width) + log(smallest table scale), per latent map."""
    v = torch.round((log_sigma - offset) * inv_step)
    return v.clamp_(0, levels - 1).to(torch.uint8)


def interp_knots(table, u: float) -> list:
    """Piecewise-linear interpolation of a K-row table at u in [0, 1], in
    Python floats (IEEE, no libm): the per-file constants of a quality."""
    k = len(table)
    pos = min(max(u, 0.0), 1.0) * (k - 1)
    i = min(int(math.floor(pos)), k - 2) if k > 1 else 0
    f = pos - i if k > 1 else 0.0
    lo, hi = table[i], table[min(i + 1, k - 1)]
    return [a * (1.0 - f) + b * f for a, b in zip(lo, hi)]
