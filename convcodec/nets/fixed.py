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

from .exact import ACT_BITS, RECON_MAX, SQ_MAX, WEIGHT_BITS, _SUM_LIMIT, _band_rows, to_grid
from .layers import GDN


def grid32(x: torch.Tensor) -> torch.Tensor:
    """A float32 map on the activation grid (clamped to +-RECON_MAX), still
    float32: x * 2^12 is exact in float32, so are its rounding, the clamp
    and the scaling back, and the result is what rounding the float64 value
    would give. Half the memory traffic of doing it in float64."""
    s = float(2 ** ACT_BITS)
    if x.dtype != torch.float32:      # (a float64 map: the same steps, in float64)
        return (x.double() * s).round_().clamp_(-RECON_MAX * s, RECON_MAX * s).mul_(1.0 / s)
    return (x * s).round_().clamp_(-RECON_MAX * s, RECON_MAX * s).mul_(1.0 / s)


def fixed_input(x: torch.Tensor) -> torch.Tensor:
    """A layer's input on the activation grid, float64."""
    return grid32(x).double()


def _round_into(out: torch.Tensor, acc: torch.Tensor):
    """An exact float64 result on the activation grid, written into the
    float32 ``out`` as integers (steps of the grid): exact, |y| <= 2^23.
    Overwrites ``acc``; the caller scales ``out`` by 2^-12 once at the end."""
    s = float(2 ** ACT_BITS)
    out.copy_(acc.mul_(s).round_().clamp_(-RECON_MAX * s, RECON_MAX * s))


def _round_steps_into(out: torch.Tensor, acc: torch.Tensor):
    """``_round_into`` for an ``acc`` already in steps of the grid (a layer
    whose weights and bias were scaled by 2^ACT_BITS: exact, a power of two),
    one float64 pass fewer. Overwrites ``acc``."""
    s = float(2 ** ACT_BITS)
    out.copy_(acc.round_().clamp_(-RECON_MAX * s, RECON_MAX * s))


def fixed_output(y: torch.Tensor) -> torch.Tensor:
    """An exact float64 result back on the activation grid, as float32 (exact:
    |y| <= 2^11 on a 2^-12 grid needs 23 bits). Overwrites ``y``."""
    out = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    _round_into(out, y)
    return out.mul_(1.0 / float(2 ** ACT_BITS))


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
        # Weights and bias times 2^ACT_BITS (exact: a power of two), so the sums
        # come out in steps of the grid and need no scaling before rounding.
        s = float(2 ** ACT_BITS)
        new.wt = (w * s).permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1]).contiguous()   # taps x O x C
        new.bm = (b * s).view(-1, 1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One matrix product per tap over the flattened, zero-padded map: the
        tap's input is then a strided view, with no im2col copy; each output
        row also gets 2p junk columns (the padding), cut away when rounding.
        Band by band of output rows (nets.exact.BAND_BYTES)."""
        bsz, c, h, w = x.shape
        k = self.kernel_size[0]
        p = k // 2
        wp = w + 2 * p
        # One more row below: the last tap's view stays inside. Only the
        # border is zeroed (zeroing the whole map was 13% of a decode).
        xp = x.new_empty(bsz, c, h + 2 * p + 1, wp, dtype=torch.float64)
        xp[:, :, :p].zero_()
        xp[:, :, p + h:].zero_()
        xp[:, :, p:p + h, :p].zero_()
        xp[:, :, p:p + h, p + w:].zero_()
        xp[:, :, p:p + h, p:p + w] = grid32(x)
        o = self.wt.shape[1]
        rows = h if x.is_cuda else _band_rows(8 * (o + c) * wp)   # (a GPU: one band; each is a launch)
        out = x.new_empty(bsz, o, h, w, dtype=torch.float32)
        acc_buf = xp.new_empty(o, min(rows, h) * wp)
        for n in range(bsz):
            flat = xp[n].reshape(c, -1)
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                m = (r1 - r0) * wp
                acc = acc_buf[:, :m]
                acc.copy_(self.bm.expand(-1, m))
                for i in range(k):
                    for j in range(k):
                        off = (r0 + i) * wp + j
                        acc.addmm_(self.wt[i * k + j], flat[:, off:off + m])
                _round_steps_into(out[n, :, r0:r1], acc.view(o, r1 - r0, wp)[..., :w])
        return out.mul_(1.0 / float(2 ** ACT_BITS))


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
        b, ch, h, w = x.shape
        s = float(2 ** ACT_BITS)
        q = grid32(x)
        out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        rows = h if x.is_cuda else _band_rows(8 * 3 * ch * w)
        for n in range(b):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                xb = q[n, :, r0:r1].double().reshape(ch, -1)
                sq = (xb * xb).mul_(s).round_().mul_(1.0 / s).clamp_(max=SQ_MAX)
                norm = torch.mm(self.gm, sq).add_(self.bt).sqrt_()
                y = norm.mul_(xb) if self.inverse else xb.div_(norm)
                _round_into(out[n, :, r0:r1], y.view(ch, r1 - r0, w))
        return out.mul_(1.0 / s)


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
    # Decoder modules the encoder also runs (ENCODER_FLOAT) stay float for
    # it: the model's own modules, held in a plain dict so that they are not
    # the twin's submodules (no second copy of their weights in its
    # state_dict). Not a reference to the model itself: the cache's value
    # would then keep its weak key alive.
    twin.float_modules = {name: getattr(model, name) for name in getattr(model, "ENCODER_FLOAT", ())}
    twin.eval()
    _TWINS[model] = (key, twin)
    return twin
