"""Building blocks shared by the backbones."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# The coder snaps prior scales (in quantization-bin units) to a table spanning
# [SCALE_MIN, SCALE_MAX]; training clamps to the same range so the rate it
# optimises is the rate the coder can spend (see convcodec.entropy).
from ..entropy import SCALE_MAX, SCALE_MIN  # noqa: E402  (re-exported)

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


# The smallest coupling gamma starts from (below the fixed-point weight grid,
# 2^-14, so it changes no coded bit until trained). The layer uses |gamma|,
# whose gradient at exactly 0 is 0: couplings started at 0 never train.
# Every model trained before this floor has a diagonal gamma (a
# per-channel normalization, not GDN); ``unstick_gdn`` lifts them.
GAMMA_FLOOR = 1e-7


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
        eye = torch.eye(ch)
        self.gamma = nn.Parameter(0.1 * eye + GAMMA_FLOOR * (1 - eye))

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


def unstick_gdn(model: nn.Module) -> int:
    """Lift every GDN coupling that is exactly 0 to GAMMA_FLOOR, so training
    can move it (see GAMMA_FLOOR; the layers' outputs change by ~1e-7
    relative). Returns how many were lifted."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GDN):
                stuck = m.gamma == 0
                n += int(stuck.sum())
                m.gamma[stuck] = GAMMA_FLOOR
    return n


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


# Inference on big images runs g_a and g_s tile by tile, on square tiles of
# TILE_PIXELS pixels, so memory stays bounded and each tile's intermediate
# maps stay the same size at any image size. With row bands as wide as the
# image, 12 MP ran 22% slower per pixel than 1 MP (the bands' working set grew
# with the width and left the caches); with these tiles 12 MP runs at the
# speed per pixel of 1 MP (tools/bigimage.py: 2.36, 2.25 and 2.37 s/MP at 1, 4
# and 12 MP). 256-pixel tiles were as linear but 10% slower on Kodak (their
# halos are a larger share). Each tile carries a halo at least as wide as the
# network's reach, so the result is that of one pass over the whole image: no seams.
TILE_PIXELS = 512


def reach(net: nn.Sequential) -> float:
    """How far (in input positions) an output of ``net`` sees on each side:
    the halo a tile needs. g_a's three 5x5 stride-2 convs reach 2 + 4 + 8 =
    14 pixels; g_s's 3x3 convs at 1, 1/2 and 1/4 canvas steps reach 1.75.
    Knows the layers analysis() and synthesis() use, and refuses others
    rather than under-count (a halo too small would show as seams)."""
    r, step = 0.0, 1.0          # step: input positions per position of the current map
    for m in net:
        if isinstance(m, nn.Conv2d) and len(set(m.kernel_size)) == 1 \
                and m.padding == (m.kernel_size[0] // 2,) * 2:
            r += (m.kernel_size[0] // 2) * m.dilation[0] * step
            step *= m.stride[0]
        elif isinstance(m, nn.PixelShuffle):
            step /= m.upscale_factor
        elif not isinstance(m, GDN):
            raise ValueError(f"reach() does not know the layer {m!r}")
    return r


def _spans(n: int, tile: int, align: int) -> list[tuple[int, int]]:
    """[0, n) cut into the fewest spans of at most ``tile`` positions, of
    near-equal length (no thin sliver at the end, whose halo would cost more
    than its content) and starting on multiples of ``align``."""
    assert tile % align == 0, "tiles must stay on the stride's grid"
    units, k = -(-n // align), -(-n // tile)
    starts = [align * (i * units // k) for i in range(k)] + [n]
    return list(zip(starts[:-1], starts[1:]))


def _tiles(fn, maps, tile: int, halo: int, up: int = 1, down: int = 1) -> tuple:
    """The one tile loop: ``fn(*maps)`` -> tuple of maps, computed on tiles of
    at most ``tile`` x ``tile`` input positions with ``halo`` positions of
    context on every side (``halo`` and the tile corners are multiples of
    ``down``); outputs have up/down positions per input position, and each
    tile's output is cropped back to the tile and written into place."""
    rows, cols = maps[0].shape[-2:]
    outs = None
    o = lambda v: v * up // down        # input position -> output position
    for a, b in _spans(rows, tile, down):
        r0, r1 = max(0, a - halo), min(rows, b + halo)
        for c, d in _spans(cols, tile, down):
            c0, c1 = max(0, c - halo), min(cols, d + halo)
            part = fn(*(m[..., r0:r1, c0:c1] for m in maps))
            if outs is None:
                outs = [p.new_empty(*p.shape[:-2], o(rows), o(cols)) for p in part]
            for out, p in zip(outs, part):
                out[..., o(a):o(b), o(c):o(d)] = p[..., o(a - r0):o(b - r0), o(c - c0):o(d - c0)]
    return tuple(outs)


def _in_tiles(fn, x: torch.Tensor, tile: int, halo: int, up: int, down: int) -> torch.Tensor:
    """fn(x) for a spatially local fn (g_a or g_s), tiled at inference on
    images larger than a tile plus halos (``tile`` and ``halo`` in positions
    of x), where it bounds memory and keeps the working set in cache;
    elsewhere one pass."""
    if torch.is_grad_enabled() or max(x.shape[-2:]) <= tile + 2 * halo:
        return fn(x)
    return _tiles(lambda t: (fn(t),), (x,), tile, halo, up, down)[0]


# The per-group networks (prior, posterior, update) work on latent maps. On
# big images whole maps leave the CPU caches and each position costs more
# (measured: 3.3 s/MP at 12 MP against 1.9 s/MP at 1 MP for the Conv DRAW
# steps, one thread), so they run on square tiles of TILE_POSITIONS latent
# positions a side. Each tile carries ``halo`` positions of context (the
# network's reach), so the result is that of one pass: the test checks that
# tiled and whole maps give the same files and pictures.
TILE_POSITIONS = 96


def by_tiles(fn, *maps: torch.Tensor, halo: int):
    """``fn(*maps)`` -> tuple of maps of the same size, computed on tiles at
    inference when the maps are large (one pass otherwise, and always when
    training). ``halo`` = positions of context ``fn`` needs on each side."""
    rows, cols = maps[0].shape[-2:]
    if torch.is_grad_enabled() or max(rows, cols) <= TILE_POSITIONS + 2 * halo:
        return fn(*maps)
    return _tiles(fn, maps, TILE_POSITIONS, halo)


def run_analysis(g_a: nn.Sequential, x01: torch.Tensor, stride: int) -> torch.Tensor:
    """y = g_a(x - 1/2) in float32, tiled on big images (``stride`` = g_a's;
    the halo is g_a's reach rounded up to it, so tiles stay on its grid)."""
    assert x01.shape[-2] % stride == 0 and x01.shape[-1] % stride == 0, "pad the image to the stride first"
    halo = stride * math.ceil(reach(g_a) / stride)
    return _in_tiles(lambda t: g_a(t).float(), x01 - 0.5, TILE_PIXELS, halo, up=1, down=stride)


def run_synthesis(g_s: nn.Sequential, y: torch.Tensor, stride: int) -> torch.Tensor:
    """x_hat = g_s(y) + 1/2 in float32, tiled on big images."""
    return _in_tiles(lambda t: g_s(t).float(), y, TILE_PIXELS // stride, math.ceil(reach(g_s)),
                     up=stride, down=1) + 0.5
