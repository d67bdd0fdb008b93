"""Fixed-point reconstruction: the same pixels on every machine.

The exact entropy model (convcodec.nets.exact) makes the *symbols* of a file
the same everywhere, so a file always decodes. The pixels also depend on the
decoder's float layers (the prior mean, the top-down updates, g_s), whose
sums a CPU's instruction set, its thread count or a GPU order differently:
two machines then disagree by one level in a few pixels (issue 15). Here
those layers are evaluated so that every machine gets the same bits:

* Every convolution rounds its input to the activation grid (2^-ACT_BITS,
  clamped to +-RECON_MAX), uses weights on the 2^-WEIGHT_BITS grid and
  sums in float64: every partial sum is an integer multiple of
  2^-(ACT_BITS+WEIGHT_BITS) well below 2^53 of them, so it is exact in any
  order (checked per layer when the twin is built). Its output is rounded
  back to the activation grid: a float32 value, exactly.
* The inverse GDN squares its (grid) input exactly, rounds the squares to
  the grid, sums them exactly with fixed-point gammas and takes one IEEE
  square root and one product (correctly rounded on every machine).
* Between these layers the model's own float32 elementwise steps (leaky
  ReLU, residual sums, the latent mu + w k, pixel shuffles) are single IEEE
  operations: the same bits on every machine.

The torch layers here run the codec's walk on any device (convolutions as
one float64 matrix product per kernel tap: never a Winograd or FFT path,
which would not be exact); ``convcodec.npdecode`` evaluates the same
arithmetic with numpy (``nets.exact.fixed_*``), and the tests hold the two
to identical pixels. Training keeps the float layers: at this grid the
fixed-point network differs from them by ~1e-4 (tools/exact_cost.py
measures the cost in bytes, PSNR and time).
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .exact import ACT_BITS, RECON_MAX, SQ_MAX, WEIGHT_BITS, _SUM_LIMIT, to_grid
from .layers import GDN


def fixed_input(x: torch.Tensor) -> torch.Tensor:
    """A layer's input on the activation grid, float64 (in place on the copy:
    these maps are large and fresh allocations cost more than the arithmetic)."""
    s = float(2 ** ACT_BITS)
    return x.to(torch.float64, copy=True).mul_(s).round_().mul_(1.0 / s).clamp_(-RECON_MAX, RECON_MAX)


def fixed_output(y: torch.Tensor) -> torch.Tensor:
    """An exact float64 result back on the activation grid, as float32 (exact:
    |y| <= 2^11 on a 2^-12 grid needs 23 bits). Overwrites ``y``."""
    s = float(2 ** ACT_BITS)
    return y.mul_(s).round_().mul_(1.0 / s).clamp_(-RECON_MAX, RECON_MAX).float()


def _check(worst: float, what: str):
    if worst >= _SUM_LIMIT:
        raise ValueError(f"{what}: weights too large for exact fixed point ({worst:.3g} >= {_SUM_LIMIT:.3g})")


class FixedConv2d(nn.Conv2d):
    """A trained Conv2d (stride 1, 'same' padding) in fixed point."""

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "FixedConv2d":
        k = conv.kernel_size[0]
        if (conv.stride != (1, 1) or conv.kernel_size != (k, k) or conv.padding != (k // 2, k // 2)
                or conv.dilation != (1, 1) or conv.groups != 1 or conv.bias is None):
            raise ValueError(f"no fixed-point twin for {conv!r}")
        new = copy.deepcopy(conv)
        new.__class__ = cls
        w = to_grid(conv.weight.detach().double(), WEIGHT_BITS)
        b = to_grid(conv.bias.detach().double(), ACT_BITS + WEIGHT_BITS)
        _check(float(w.abs().sum((1, 2, 3)).max()) * RECON_MAX + float(b.abs().max()), repr(conv))
        new.wt = w.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1]).contiguous()   # taps x O x C
        new.bm = b.view(-1, 1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One matrix product per tap over the flattened, zero-padded map: the
        tap's input is then a strided view, with no im2col copy; each output
        row also gets 2p junk columns (the padding), cut away at the end."""
        x = fixed_input(x)
        bsz, c, h, w = x.shape
        k = self.kernel_size[0]
        p = k // 2
        wp = w + 2 * p
        xp = F.pad(x, (p, p, p, p + 1))             # one more row: the last tap's view stays inside
        out = x.new_empty(bsz, self.wt.shape[1], h * wp)
        for n in range(bsz):
            flat = xp[n].reshape(c, -1)
            acc = out[n]
            acc.copy_(self.bm.expand(-1, h * wp))
            for i in range(k):
                for j in range(k):
                    off = i * wp + j
                    acc.addmm_(self.wt[i * k + j], flat[:, off:off + h * wp])
        return fixed_output(out.view(bsz, -1, h, wp)[..., :w])


class FixedConvTranspose2d(nn.ConvTranspose2d):
    """A trained ConvTranspose2d in fixed point: one matrix product for every
    tap's contribution, then col2im (F.fold), whose overlapping sums are exact."""

    @classmethod
    def of(cls, conv: nn.ConvTranspose2d) -> "FixedConvTranspose2d":
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.output_padding != (0, 0) or conv.bias is None:
            raise ValueError(f"no fixed-point twin for {conv!r}")
        new = copy.deepcopy(conv)
        new.__class__ = cls
        w = to_grid(conv.weight.detach().double(), WEIGHT_BITS)        # Cin x Cout x k x k
        b = to_grid(conv.bias.detach().double(), ACT_BITS + WEIGHT_BITS)
        taps = -(-conv.kernel_size[0] // conv.stride[0]) * -(-conv.kernel_size[1] // conv.stride[1])   # per output
        _check(float(w.abs().sum(0).amax()) * taps * RECON_MAX + float(b.abs().max()), repr(conv))
        new.wt = w.reshape(w.shape[0], -1).t().contiguous()            # (Cout k k) x Cin
        new.bm = b.view(1, -1, 1, 1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fixed_input(x)
        bsz, c, h, w = x.shape
        (sh, sw), (ph, pw), (kh, kw) = self.stride, self.padding, self.kernel_size
        size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        cols = torch.matmul(self.wt, x.reshape(bsz, c, h * w))           # B x (Cout k k) x HW
        out = F.fold(cols, size, self.kernel_size, stride=self.stride, padding=self.padding)
        return fixed_output(out + self.bm)


class FixedGDN(GDN):
    """GDN or its inverse in fixed point: squares on the grid, an exact sum
    with fixed-point gammas, one square root and one product or quotient."""

    @classmethod
    def of(cls, gdn: GDN) -> "FixedGDN":
        new = copy.deepcopy(gdn)
        new.__class__ = cls
        new.gm = to_grid(gdn.gamma.detach().double().abs(), WEIGHT_BITS)
        new.bt = to_grid(gdn.beta.detach().double().abs() + 1e-6, ACT_BITS + WEIGHT_BITS).view(-1, 1)
        _check(float(new.gm.sum(1).max()) * SQ_MAX + float(new.bt.max()), repr(gdn))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fixed_input(x)
        b, ch, h, w = x.shape
        s = float(2 ** ACT_BITS)
        sq = (x * x).mul_(s).round_().mul_(1.0 / s).clamp_(max=SQ_MAX).reshape(b, ch, h * w)
        norm = torch.matmul(self.gm, sq).add_(self.bt).sqrt_().view(b, ch, h, w)
        return fixed_output(norm.mul_(x) if self.inverse else x.div_(norm))


def _fixed(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        return FixedConv2d.of(m)
    if isinstance(m, nn.ConvTranspose2d):
        return FixedConvTranspose2d.of(m)
    if isinstance(m, GDN):
        return FixedGDN.of(m)
    for name, child in m.named_children():
        setattr(m, name, _fixed(child))
    return m


_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def coder_twin(model: nn.Module, decoder: tuple[str, ...]) -> nn.Module:
    """``model`` as the codec runs it: a copy whose decoder modules (the
    attributes named in ``decoder``) are fixed point; the encoder's own
    modules stay float (they only choose the symbols, which the file then
    fixes). Cached per model, rebuilt when a weight or the device changed."""
    params = list(model.parameters())
    key = tuple((p._version, p.data_ptr()) for p in params) + (str(params[0].device),)
    hit = _TWINS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    # (outside inference mode: the twin's parameters must stay ordinary tensors,
    # whose version counters the exact() caches read)
    with torch.inference_mode(False), torch.no_grad():
        twin = copy.deepcopy(model)
        for name in decoder:
            setattr(twin, name, _fixed(getattr(twin, name)))
    twin.eval()
    _TWINS[model] = (key, twin)
    return twin
