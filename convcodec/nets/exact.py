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
  product grid. Convolutions run in float64 as matrix products, so
  every partial sum is an integer multiple of 2^-(ACT_BITS+WEIGHT_BITS) far
  below 2^53 of them: exact whatever the order of summation (checked per
  layer on load, with activations clamped to +-ACT_MAX).
* Elementwise steps are single IEEE operations (correctly rounded everywhere):
  ReLU, rounding back to the activation grid (a multiply by a power of two,
  a round-half-even, a divide by it), and the final (v - c) * inv_step.
* The per-file constants (bin widths at the file's quality, their logs) are
  computed once in Python with ``decimal`` (correctly rounded exp/ln), never
  with the platform's libm.

This module is numpy only: the torch codec and the torch-free decoder
(convcodec.npdecode) run this one implementation, on the CPU whatever the
device of the rest. Training runs the float twin (``nets.matnet.ScaleNet``);
at this grid (2^-12 activations, 2^-14 weights) the fixed-point network
differs from it by ~1e-4 in log-scale, far below the 0.1 step of the table.
"""
from __future__ import annotations

import decimal
import math

import numpy as np

ACT_BITS = 12                  # activations on a 2^-12 grid
WEIGHT_BITS = 14               # weights on a 2^-14 grid
ACT_MAX = float(2 ** 15)       # activations are clamped to +-ACT_MAX
RECON_MAX = float(2 ** 11)     # the reconstruction's activations (nets.fixed): exact in float32
SQ_MAX = float(2 ** 16)        # its inverse GDN's squares are clamped to SQ_MAX
_SUM_LIMIT = 2.0 ** (53 - ACT_BITS - WEIGHT_BITS)   # |partial sums| below this are exact
MIN_WIDTH_STEPS = 4            # a bin width is at least 4 grid steps (2^-10)

_CTX = decimal.Context(prec=40)


def dexp(x: float) -> float:
    """exp(x), correctly rounded (decimal), the same on every machine."""
    return float(_CTX.exp(decimal.Decimal(x)))


def dlog(x: float) -> float:
    """log(x), correctly rounded (decimal), the same on every machine."""
    return float(_CTX.ln(decimal.Decimal(x)))


def to_grid(x, bits: int):
    """Round to the nearest multiple of 2^-bits (exact IEEE steps, half to
    even); numpy arrays and torch tensors alike."""
    s = float(2 ** bits)
    if isinstance(x, float):
        return round(x * s) / s
    return (x * s).round() / s


def act_grid(x: np.ndarray) -> np.ndarray:
    return np.clip(to_grid(x, ACT_BITS), -ACT_MAX, ACT_MAX)


def interp_knots(table, u: float) -> list:
    """Piecewise-linear interpolation of a K-row table at u in [0, 1], in
    Python floats (IEEE, no libm): the per-file constants of a quality."""
    k = len(table)
    pos = min(max(u, 0.0), 1.0) * (k - 1)
    i = min(int(math.floor(pos)), k - 2) if k > 1 else 0
    f = pos - i if k > 1 else 0.0
    lo, hi = table[i], table[min(i + 1, k - 1)]
    return [a * (1.0 - f) + b * f for a, b in zip(lo, hi)]


_BLAS = None


def single_threaded_blas():
    """numpy's BLAS on one thread for the small exact products: its threads
    spin after each call and took the cores from torch's own pool (measured:
    a torch decode with exact scales went from 0.2 to 0.4 s). The result
    does not depend on it (the sums are exact)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class ExactConv:
    """A trained Conv2d (stride 1, 'same' padding) in fixed point, evaluated
    in float64 as one matrix product per tap (a plain sum of products:
    exact). Refuses weights whose worst-case sum could leave the exactly
    representable range."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        w = to_grid(np.asarray(weight, dtype=np.float64), WEIGHT_BITS)
        b = to_grid(np.asarray(bias, dtype=np.float64), ACT_BITS + WEIGHT_BITS)
        worst = float(np.abs(w).sum(axis=(1, 2, 3)).max()) * ACT_MAX + float(np.abs(b).max())
        if worst >= _SUM_LIMIT:
            raise ValueError(f"weights too large for exact fixed point ({worst:.3g} >= {_SUM_LIMIT:.3g})")
        self.k = w.shape[-1]
        self.taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1]))  # taps x O x C
        self.w_all = np.ascontiguousarray(self.taps.transpose(1, 0, 2).reshape(w.shape[0], -1))    # O x (taps C), im2col
        self.b = b.reshape(-1, 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: B x C x H x W float64 on the activation grid. Over the flattened,
        zero-padded map each tap's input is a strided view (no im2col copy);
        each output row gets 2p junk columns (the padding), cut away. Any
        order of summation gives the same exact sums (nets.fixed does the same
        in torch)."""
        bsz, c, h, w = x.shape
        k, p = self.k, self.k // 2
        wp = w + 2 * p
        out = np.empty((bsz, self.taps.shape[1], h, w))
        for n in range(bsz):
            flat = np.pad(x[n], ((0, 0), (p, p + 1), (p, p))).reshape(c, -1)
            acc = np.repeat(self.b, h * wp, axis=1)
            for i in range(k):
                for j in range(k):
                    off = i * wp + j
                    acc += self.taps[i * k + j] @ flat[:, off:off + h * wp]
            out[n] = acc.reshape(-1, h, wp)[:, :, :w]
        return out


class ExactScaleNet:
    """One group's scale network in fixed point: 3x3 conv, ReLU, 1x1 conv,
    ReLU, 1x1 conv (the float twin is nets.matnet.ScaleNet)."""

    def __init__(self, state: dict, prefix: str):
        self.convs = [ExactConv(state[f"{prefix}.{c}.weight"], state[f"{prefix}.{c}.bias"])
                      for c in ("c1", "c2", "c3")]

    def __call__(self, ctx: np.ndarray) -> np.ndarray:
        a = act_grid(np.maximum(self.convs[0](ctx), 0.0))
        a = act_grid(np.maximum(self.convs[1](a), 0.0))
        return self.convs[2](a)


class ExactScales:
    """A model's whole exact entropy model, from its weights (numpy arrays by
    state-dict name) and config: the bin widths of every group at a quality,
    and every group's scale-table indices from the decoded symbols."""

    def __init__(self, state: dict, latent: int, groups: int, scale_of: list, rate_knots: int):
        self.latent, self.groups, self.scale_of = latent, groups, scale_of
        self.log_width = [float(v) for v in np.asarray(state["log_width"], dtype=np.float64)]
        self.gain = (np.asarray(state["log_gain"], dtype=np.float64) if rate_knots else None)
        if "log_sigma" in state:     # a flat prior (VLAE): a constant log scale per group and map
            self.const = to_grid(np.asarray(state["log_sigma"], dtype=np.float64), ACT_BITS + WEIGHT_BITS)
            self.nets = []
        else:                        # group 0 constant, the others from their context networks
            self.const = to_grid(np.asarray(state["log_sigma0"], dtype=np.float64), ACT_BITS + WEIGHT_BITS)[None]
            self.nets = [ExactScaleNet(state, f"scale_nets.{g - 1}") for g in range(1, groups)]
        self._const: dict = {}

    def constants(self, u):
        """(widths, offsets), groups x latent float64: each group's bin widths on
        the activation grid, and log(width) + log(smallest table scale)."""
        hit = self._const.get(u)
        if hit is None:
            from ..entropy import LOG_SCALE_MIN
            widths, offsets = [], []
            for g in range(self.groups):
                gains = interp_knots(self.gain[:, g].tolist(), u) if self.gain is not None else [0.0] * self.latent
                wg = [max(round(dexp(a + b) * 2 ** ACT_BITS), MIN_WIDTH_STEPS) / 2 ** ACT_BITS
                      for a, b in zip(self.log_width, gains)]
                widths.append(wg)
                offsets.append([dlog(v) + LOG_SCALE_MIN for v in wg])
            hit = self._const[u] = (np.array(widths), np.array(offsets))
        return hit

    def magnitudes(self, g: int, k: np.ndarray, u) -> np.ndarray:
        """|w k| of group g's decoded offsets: what later groups' scales see (exact)."""
        return self.constants(u)[0][g].reshape(1, -1, 1, 1) * np.abs(np.asarray(k, dtype=np.float64))

    def context(self, g: int, hist: list, u, shape) -> np.ndarray:
        """|w k| of groups g-1 and g-2 at group g's resolution, and the quality map."""
        b, hs, ws = shape
        maps = []
        for back in (1, 2):
            j = g - back
            if j < 0:
                maps.append(np.zeros((b, self.latent, hs, ws)))
                continue
            f = hs // hist[j].shape[-2]
            maps.append(hist[j].repeat(f, -2).repeat(f, -1) if f > 1 else hist[j])
        uq = to_grid(float(u if u is not None else 0.0), ACT_BITS)
        maps.append(np.full((b, 1, hs, ws), uq))
        return np.concatenate(maps, 1)

    def index(self, g: int, hist: list, u, shape) -> np.ndarray:
        """Group g's scale-table indices (uint8, B x L x H x W), the same bits on every machine."""
        from ..entropy import INV_LOG_STEP, NUM_SCALES
        b, hs, ws = shape
        offset = self.constants(u)[1][g].reshape(1, -1, 1, 1)
        if g < len(self.const):
            log_sigma = np.broadcast_to(self.const[g].reshape(1, -1, 1, 1), (b, self.latent, hs, ws))
        else:
            with single_threaded_blas():
                log_sigma = self.nets[g - 1](self.context(g, hist, u, shape))
        v = np.round((log_sigma - offset) * INV_LOG_STEP)
        return np.clip(v, 0, NUM_SCALES - 1).astype(np.uint8)


# ---- the fixed-point reconstruction with numpy (the torch layers: nets.fixed) ----

# Both decoders (nets.fixed in torch, this module in numpy) work through a
# map in bands of rows whose float64 working set (input rows, accumulator,
# rounding) is about this size, so the taps' products, the rounding and the
# GDN's steps find their data in cache instead of streaming whole float64
# maps through memory once per step (1, 2, 8, 32 MB and whole maps tried on
# matnet-vr's and a 128-wide g_s's layers: 8 MB was fastest, by 25% over
# whole maps). The bits do not depend on it: the sums are exact.
BAND_BYTES = 1 << 23


def _band_rows(bytes_per_row: int) -> int:
    return max(1, BAND_BYTES // max(1, bytes_per_row))


def grid32(x: np.ndarray) -> np.ndarray:
    """nets.fixed.grid32: a float32 map on the activation grid, float32 (every
    step exact in float32; a float64 map takes the same steps in float64)."""
    v = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    s = v.dtype.type(2.0 ** ACT_BITS)
    v *= s
    np.rint(v, out=v)
    np.clip(v, -RECON_MAX * s, RECON_MAX * s, out=v)
    v *= v.dtype.type(2.0 ** -ACT_BITS)
    return v


def fixed_input(x: np.ndarray) -> np.ndarray:
    """nets.fixed.fixed_input: on the activation grid, float64."""
    return grid32(x).astype(np.float64)


def _round_into(out: np.ndarray, acc: np.ndarray):
    """nets.fixed._round_into: ``acc`` in steps of the grid (integers) into
    the float32 ``out``; the caller scales ``out`` by 2^-12 at the end."""
    acc *= 2.0 ** ACT_BITS
    np.rint(acc, out=acc)
    np.clip(acc, -RECON_MAX * 2.0 ** ACT_BITS, RECON_MAX * 2.0 ** ACT_BITS, out=acc)
    out[...] = acc


def fixed_output(y: np.ndarray) -> np.ndarray:
    """nets.fixed.fixed_output: back on the grid, float32 (exact). Overwrites ``y``."""
    out = np.empty(y.shape, dtype=np.float32)
    _round_into(out, y)
    out *= np.float32(2.0 ** -ACT_BITS)
    return out


def fixed_conv(conv: ExactConv, x: np.ndarray) -> np.ndarray:
    """nets.fixed.FixedConv2d: C x H x W float32 -> O x H x W float32, one
    product per tap over strided views of the padded map, band by band of
    output rows, each band rounded while it is in cache."""
    c, h, w = x.shape
    k, p = conv.k, conv.k // 2
    wp = w + 2 * p
    xp = np.zeros((c, h + 2 * p + 1, wp))
    xp[:, p:p + h, p:p + w] = grid32(x)
    flat = xp.reshape(c, -1)
    o = conv.taps.shape[1]
    # A layer with many outputs per input (g_s's sub-pixel convolutions) runs
    # as one product over the band's im2col copy: numpy's per-tap "acc += W @ x"
    # streams a temporary and the accumulator once per tap, which cost more
    # than the copy there (measured on matnet-vr3's g_s: 57 -> 33 ms and
    # 166 -> 139 ms on 2 threads). Few outputs per input keep the per-tap products.
    im2col = o >= 2 * c
    rows = _band_rows(8 * (o + (k * k * c if im2col else c)) * wp)
    out = np.empty((o, h, w), dtype=np.float32)
    acc_buf = np.empty((o, min(rows, h) * wp))
    if im2col:
        col_buf = np.empty((k * k * c, min(rows, h) * wp))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        m = (r1 - r0) * wp
        acc = acc_buf[:, :m]
        if im2col:
            cols = col_buf[:, :m]
            for t in range(k * k):
                off = (r0 + t // k) * wp + t % k
                cols[t * c:(t + 1) * c] = flat[:, off:off + m]
            np.matmul(conv.w_all, cols, out=acc)
            acc += conv.b
        else:
            acc[...] = conv.b
            for i in range(k):
                for j in range(k):
                    off = (r0 + i) * wp + j
                    acc += conv.taps[i * k + j] @ flat[:, off:off + m]
        _round_into(out[:, r0:r1], acc.reshape(o, r1 - r0, wp)[:, :, :w])
    out *= np.float32(2.0 ** -ACT_BITS)
    return out


class FixedConvTranspose:
    """nets.fixed.FixedConvTranspose2d for kernel 4, stride 2, padding 1:
    C x H x W -> C' x 2H x 2W; each tap's product added into place (exact)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        w = to_grid(np.asarray(weight, dtype=np.float64), WEIGHT_BITS)     # Cin x Cout x 4 x 4
        if w.shape[2:] != (4, 4):
            raise ValueError("only kernel 4, stride 2, padding 1")
        self.w = w
        self.b = to_grid(np.asarray(bias, dtype=np.float64), ACT_BITS + WEIGHT_BITS).reshape(-1, 1, 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = fixed_input(x)
        cin, h, wd = x.shape
        cout, k = self.w.shape[1], self.w.shape[2]
        full = np.zeros((cout, 2 * h + 2, 2 * wd + 2))
        xf = x.reshape(cin, h * wd)
        for i in range(k):
            for j in range(k):
                full[:, i:i + 2 * h:2, j:j + 2 * wd:2] += (self.w[:, :, i, j].T @ xf).reshape(cout, h, wd)
        return fixed_output(full[:, 1:2 * h + 1, 1:2 * wd + 1] + self.b)


class FixedGDN:
    """nets.fixed.FixedGDN (the inverse GDN of g_s): C x H x W float32."""

    def __init__(self, beta: np.ndarray, gamma: np.ndarray, inverse: bool = True):
        self.gm = to_grid(np.abs(np.asarray(gamma, dtype=np.float64)), WEIGHT_BITS)
        self.bt = to_grid(np.abs(np.asarray(beta, dtype=np.float64)) + 1e-6, ACT_BITS + WEIGHT_BITS).reshape(-1, 1)
        self.inverse = inverse

    def __call__(self, x: np.ndarray) -> np.ndarray:
        c, h, w = x.shape
        q = grid32(x)
        out = np.empty(q.shape, dtype=np.float32)
        rows = _band_rows(8 * 3 * c * w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            xb = q[:, r0:r1].astype(np.float64).reshape(c, -1)
            sq = xb * xb
            sq *= 2.0 ** ACT_BITS
            np.rint(sq, out=sq)
            sq *= 2.0 ** -ACT_BITS
            np.minimum(sq, SQ_MAX, out=sq)
            norm = self.gm @ sq
            norm += self.bt
            np.sqrt(norm, out=norm)
            y = np.multiply(xb, norm, out=norm) if self.inverse else np.divide(xb, norm, out=norm)
            _round_into(out[:, r0:r1], y.reshape(c, r1 - r0, w))
        out *= np.float32(2.0 ** -ACT_BITS)
        return out
