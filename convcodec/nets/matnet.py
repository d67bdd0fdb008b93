"""MatNet (Bachman 2016, "An Architecture for Deep, Hierarchical Generative
Models"), arranged as a codec: one latent group per stochastic top-down module,
generated top-most first, with fixed-width posteriors like the Conv DRAW's.

    bottom-up (encoder only; Eq. 9), once per image:
      h_b[finest] = BU(g_a(x));  h_b[s+1] = BU(down(h_b[s]))
    top-down, one group i at a time (both sides; coarsest scale first):
      mu_p, sigma_p = prior_i(h_t)                                       Eq. 8
      h_m = lrelu(h_m + conv(lrelu(conv([h_m; h_b[scale_i]; h_t]))))     Eq. 10 (encoder)
            (residual_read, finest scale: also [x - g_s(h_t)] in 8x8 blocks, DRAW's read)
      mu_q = conv(h_m)                                                   Eq. 11, width fixed
      h_t = lrelu(h_t + conv(lrelu(conv([h_t; z_i]))))                   Eq. 7
      after the last group of a scale, h_t and h_m go up one octave (transposed conv)
    x_hat = g_s(h_t)                                                     synthesis

Departures from the paper, for a codec on a CPU budget: the finest latent
scale is 1/8 of the image (g_a / g_s with GDN, as in our Conv DRAW, do the
full-resolution work once), there is no mixture prior on the top group (its
prior is computed from a learned constant state, so it is a learned Gaussian),
and the reconstruction is a deterministic g_s (no autoregressive pixel model,
which would make decoding sequential in pixels).

The codec (convcodec.codec) drives begin/init_state/prior/posterior/update/
render exactly as for Conv DRAW: storing the first t groups fixes the coarse
scales and lets the prior regenerate the finer ones.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from .exact import ExactScales
from .layers import analysis, by_tiles, run_analysis, run_synthesis, synthesis
from .rollout import LatentGroups, Prior, coder_scales, initial_gains


@dataclass
class MatNetConfig:
    backbone: str = "matnet"            # registry key; checkpoints are rebuilt from this
    latent: int = 16                    # latent maps per group
    width: int = 64                     # channels of h_b, h_t and h_m at every scale
    groups: tuple = (2, 3, 3)           # stochastic TD modules per scale, coarsest first
    bu_blocks: int = 1                  # BU residual modules per scale (Eq. 9)
    analysis: tuple = (64, 64, 64)      # g_a: image -> finest latent scale; last = bu_width
    # Channels of h_b at the finest scale (0: width). Encoder only: the merge
    # modules there read them; the decoder never does, so no decode cost.
    # Why: with h_b as wide as the ladder, 64 numbers per 8x8 block of 192
    # pixel values are all the posteriors of the finest groups can know of
    # the image (docs/campaign.md, "A wider view of the image").
    bu_width: int = 0
    synthesis: tuple = (64, 64)         # g_s widths from the finest scale upwards (then RGB)
    # Variable rate (Cui et al. 2021, gain units): a table of log bin-width
    # gains per (knot, group, latent map); quality u in [0, 1] interpolates it
    # and trains with lambda = lambdas[0] * (lambdas[1] / lambdas[0]) ** u.
    # 0 knots: a single-rate model (the width is log_width alone).
    rate_knots: int = 0
    lambdas: tuple = (0.0004, 0.25)
    # Portable entropy model (convcodec.nets.exact): the prior's scale comes
    # from a fixed-point network on already-decoded symbols, the same bits on
    # every machine; the prior mean stays on the float top-down path.
    exact_scales: bool = False
    scale_hidden: int = 32
    # The encoder sees the quality (variable-rate models): u - 1/2 as one more
    # input map of g_a and of every merge module (Eq. 10). Without it the
    # posterior means are the same at every rate and only the grid changes,
    # so one encoder compromises between lambdas 625x apart (measured on
    # matnet-vr3 at quality 100: latents optimised for MSE alone decoded 1.2
    # and 2.0 dB better than the encoder's on two Kodak crops; docs/campaign.md,
    # "The encoder sees the rate"). The decoder is unchanged: no decode cost.
    encoder_quality: bool = False
    # DRAW's "read" of the error (Gregor et al. 2015, 2016): the merge
    # modules of the finest groups also see the image minus the picture the
    # decoder would draw from the groups so far (g_s of h_t, clamped), as
    # 8x8 blocks of pixels (pixel-unshuffled: 192 channels at 1/8). Encoder
    # only: the decoder never runs it. Why: the merges see h_t, but not
    # what g_s makes of it, so they cannot aim a group at what the picture
    # still lacks; with free latents the decoder draws 3-4 dB more than the
    # encoder asks of it (docs/campaign.md, tools/decoder_ceiling.py).
    residual_read: bool = False
    # Hidden channels of every merge module (Eq. 10; 0: width). Encoder only,
    # so no decode cost. Why: at the finest scale a merge of matnet-vr16
    # reads 449 channels (h_m, h_b's 128, h_t, the quality, the residual's
    # 192) through 64 hidden ones before its group's 16 posterior means, and
    # the encoder's latents, not the decoder, cap the top of the curve.
    # Measured: 192, grown from matnet-vr16 and trained 120 min (matnet-vr18,
    # not shipped), bought 0.33% BD-rate (docs/campaign.md).
    merge_hidden: int = 0
    # Version-3 files (needs exact_scales): the coder's probabilities are a
    # table per (group, scale index), stored with the weights as the buffer
    # ``coder_table`` (convcodec.entropy.CodeTables), instead of the
    # quantized Gaussian. Why: the real offsets are not Gaussian (heavier
    # tails, more zeros at small scales); tables fitted on training photos
    # (tools/fit_tables.py) code Kodak in about 1% fewer bits at low rates,
    # and a table per run of equal scale decodes faster than a Gaussian
    # evaluated per symbol. Training never reads them (its rate stays the
    # Gaussian's); a new model starts with the Gaussian's own tables.
    coder_tables: bool = False
    # Version-4 files (needs coder_tables): a checkerboard context inside the
    # coder (convcodec.entropy.context_class), with context tables per
    # (group, class, small scale index) stored as the buffer ``coder_context``.
    # Why: the offsets of a non-anchor follow how large its anchor
    # neighbours' are, which the prior (computed from earlier groups only)
    # cannot see: 1.5% fewer bits on Kodak (matnet-vr16c against
    # matnet-vr16t), with no change to the networks or the pictures. Fitted
    # like the tables (tools/fit_tables.py --context).
    coder_context: bool = False

    @property
    def finest_bu(self) -> int:
        return self.bu_width or self.width

    @property
    def stride(self) -> int:
        """Padding multiple: the coarsest scale must have whole pixels."""
        return 2 ** (len(self.analysis) + len(self.groups) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("groups", "analysis", "synthesis", "lambdas"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MatNetConfig":
        d = dict(d)
        for k in ("groups", "analysis", "synthesis", "lambdas"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class TopDownState:
    """What the decoder knows: the TD state, the index of the next group, the
    quality (per image when training, one number when coding) and, for the
    exact scales, the magnitudes |w k| of the groups decoded so far."""
    h: torch.Tensor
    g: int
    u: torch.Tensor | float | None = None
    hist: tuple = ()


# The residual read's input gain. The residual of a 27-33 dB picture has an
# rms of 0.02-0.05 (0..1 scale), 20-50x smaller than the other inputs of the
# merges, and Adam moves every weight by about the same step, so unscaled it
# learned that much slower (runs/matnet-vr8a, gain 1, after 32 minutes: weights on it at
# half the size of those on h_t, their effect 1/40). A power of two: exact.
RESIDUAL_GAIN = 16.0


class BottomUp(list):
    """The encoder's bottom-up features, coarsest scale first (h_b per
    scale), and the padded image for the residual read (None without it)."""
    image: torch.Tensor | None = None


@dataclass
class MergeState:
    """What only the encoder has: the merge modules' state."""
    h: torch.Tensor


def _lrelu(x):
    return F.leaky_relu(x, 0.1)


class Residual(nn.Module):
    """h' = lrelu(h + conv(lrelu(conv(inp)))): the residual module of Eq. 7, 9
    and 10 (inp is h, or h concatenated with what the module merges in). The
    second conv starts at zero so every module starts as the identity (as in
    vdvae's scaled init), which keeps a deep ladder trainable from step one.
    ``hidden``: the channels between the two convs (default ``ch``)."""

    def __init__(self, in_ch: int, ch: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or ch
        self.c1 = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.c2 = nn.Conv2d(hidden, ch, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, h, inp):
        return _lrelu(h + self.c2(_lrelu(self.c1(inp))))


class ScaleNet(nn.Module):
    """The prior scale of one latent group from integer context only (the
    float twin of nets.exact.ExactScaleNet, which codes with it).

    Input: the magnitudes |w k| of earlier groups' decoded offsets (latent
    units) brought to this group's resolution, and the file's quality as one
    constant map. Output: log of the prior's standard deviation in latent
    units, per latent map. 3x3 conv, ReLU, 1x1, ReLU, 1x1: cheap enough to
    run in float64 fixed point."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.c2 = nn.Conv2d(hidden, hidden, 1)
        self.c3 = nn.Conv2d(hidden, out_ch, 1)
        # Start as a constant scale (a factorized prior), learn the context from there.
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.c3(F.relu(self.c2(F.relu(self.c1(ctx)))))


def run_residuals(blocks, h: torch.Tensor) -> torch.Tensor:
    """A stack of Residual modules applied to h alone (Eq. 9)."""
    for b in blocks:
        h = b(h, h)
    return h


def _up(ch):
    return nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)


class MatNet(LatentGroups):
    DECODER = ("prior_heads", "td", "up_t", "g_s")
    # g_s also runs in the encoder (the residual read), where it only helps
    # choose the symbols: the coder twin keeps it in float there (as trained,
    # and faster: in fixed point these renders were 2/3 of an encode, and a
    # Kodak encode went from 2.5 s to 1.6 s on 1 thread).
    ENCODER_FLOAT = ("g_s",)

    def __init__(self, cfg: MatNetConfig):
        super().__init__()
        assert cfg.analysis[-1] == cfg.finest_bu, "g_a produces the finest BU state"
        self.cfg = cfg
        C, L, S, Cb = cfg.width, cfg.latent, len(cfg.groups), cfg.finest_bu
        if cfg.encoder_quality and not cfg.rate_knots:
            raise ValueError("encoder_quality needs a variable-rate model (rate_knots > 0)")
        q = int(cfg.encoder_quality)        # the quality map, last input channel of g_a and the merges
        self.g_a = analysis(3 + q, cfg.analysis)
        self.g_s = synthesis(C, cfg.synthesis, 3)
        # bottom-up, finest scale first (h_b there: Cb channels)
        self.bu = nn.ModuleList(nn.ModuleList(Residual(c, c) for _ in range(cfg.bu_blocks))
                                for c in [Cb] + [C] * (S - 1))
        self.down = nn.ModuleList(nn.Conv2d(Cb if s == 0 else C, C, 3, stride=2, padding=1)
                                  for s in range(S - 1))
        # top-down, coarsest scale first; one entry per group
        self.h_top = nn.Parameter(torch.zeros(1, C, 1, 1))
        n = sum(cfg.groups)
        # Eq. 8: [mu; log sigma] from h_t; with exact scales only mu (the scale
        # comes from the group's ScaleNet on decoded symbols instead).
        p_out = L if cfg.exact_scales else 2 * L
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.LeakyReLU(0.1),
                          nn.Conv2d(C, p_out, 3, padding=1)) for _ in range(n))
        self.td = nn.ModuleList(Residual(C + L, C) for _ in range(n))
        finest = [s == S - 1 for s, k in enumerate(cfg.groups) for _ in range(k)]
        r = 3 * 4 ** len(cfg.analysis) if cfg.residual_read else 0     # the residual's channels at 1/8
        self.merge = nn.ModuleList(Residual(2 * C + q + (Cb + r if f else C), C, cfg.merge_hidden)
                                   for f in finest)
        self.q_heads = nn.ModuleList(nn.Conv2d(C, L, 3, padding=1) for _ in range(n))
        self.up_t = nn.ModuleList(_up(C) for _ in range(S - 1))
        self.up_m = nn.ModuleList(_up(C) for _ in range(S - 1))
        # The posterior's width is a learned constant per latent map, independent
        # of the input: it defines the quantization grid of that map.
        self.log_width = nn.Parameter(torch.zeros(L))
        if cfg.rate_knots:
            self.log_gain = nn.Parameter(initial_gains(cfg.lambdas, cfg.rate_knots, n, L))
        if cfg.exact_scales:
            # group 0 has no decoded context: a learned constant per map; group g > 0
            # sees |w k| of groups g-1 and g-2 (at its resolution) and the quality.
            self.log_sigma0 = nn.Parameter(torch.zeros(L))
            self.scale_nets = nn.ModuleList(ScaleNet(2 * L + 1, cfg.scale_hidden, L) for _ in range(n - 1))
            self._exact_cache: dict = {}
        if cfg.coder_tables:
            if not cfg.exact_scales:
                raise ValueError("coder_tables needs exact_scales (version-3 files are portable ones)")
            from ..entropy import gaussian_tables
            row = torch.from_numpy(gaussian_tables()).float()
            self.register_buffer("coder_table", row.expand(n, -1).clone())
        if cfg.coder_context:
            if not cfg.coder_tables:
                raise ValueError("coder_context needs coder_tables (version 4 extends version 3)")
            from ..entropy import CTX_CLASSES, CTX_LEN
            self.register_buffer("coder_context", row[:CTX_LEN].expand(n, CTX_CLASSES, -1).clone())
        # group index -> (scale, is the last group of its scale)
        self._scale_of, self._last_of_scale = [], []
        for s, k in enumerate(cfg.groups):
            self._scale_of += [s] * k
            self._last_of_scale += [False] * (k - 1) + [True]

    def start_silent(self, first: int):
        """Groups ``first``.. were appended to the finest scale (``--init`` from
        a model with fewer groups there): start them silent, so the grown
        model stores the source's symbols in the old groups and zeros in the
        new ones. Posterior and prior means start at zero (every offset 0), the
        TD update starts as lrelu(h) (Residual's zero second conv; on a state
        already through a leaky ReLU that shrinks its negative values tenfold:
        -0.004 dB on kodim05 grown from matnet-vr5, which training undoes), the bin
        widths copy the last old group's, and the scale starts small, 0.3
        bins at the top quality (fewer below; under the coder's smallest
        scale a 0 costs nearly nothing), but inside the range where it still
        has a gradient, so training can open the group up."""
        n = self.num_groups
        if not 0 < first < n or self._scale_of[first - 1] != self._scale_of[n - 1]:
            raise ValueError("only groups appended at the finest scale can start silent")
        with torch.no_grad():
            for g in range(first, n):
                for conv in (self.prior_heads[g][-1], self.q_heads[g]):
                    conv.weight.zero_()
                    conv.bias.zero_()
                if self.cfg.rate_knots:
                    self.log_gain[:, g] = self.log_gain[:, first - 1]
                if self.cfg.exact_scales:
                    c3 = self.scale_nets[g - 1].c3
                    c3.weight.zero_()
                    c3.bias.copy_(self._top_log_width(g) + math.log(0.3))

    def engage(self, first: int, gain: float = 0.3, scale_bins: float = 1.5, gen: torch.Generator | None = None):
        """Groups ``first``.. (appended, after ``start_silent``) switched on:
        their TD update's second convolution and their posterior head drawn
        at random with ``gain`` times the standard deviation of the last old
        group's, and their scale ``scale_bins`` bins at the top quality. Why:
        silence is a stable point (while the update's second convolution is
        zero the decoder ignores the group, so no distortion gradient reaches
        its posterior); an engaged group gets that gradient from step 0. The
        prior mean stays zero."""
        n = self.num_groups
        if not 0 < first < n:
            raise ValueError("engage: no appended groups")
        with torch.no_grad():
            for g in range(first, n):
                for mine, old in ((self.td[g].c2, self.td[first - 1].c2), (self.q_heads[g], self.q_heads[first - 1])):
                    std = float(old.weight.std()) * gain
                    mine.weight.copy_(torch.randn(mine.weight.shape, generator=gen) * std)
                    mine.bias.zero_()
                if self.cfg.exact_scales:
                    self.scale_nets[g - 1].c3.bias.copy_(self._top_log_width(g) + math.log(scale_bins))

    def _top_log_width(self, g: int) -> torch.Tensor:
        """log of group g's bin widths at the top quality (per latent map): where
        an appended group's scale is set relative to, in bins."""
        return self.log_width + self.log_gain[-1, g] if self.cfg.rate_knots else self.log_width

    def remap_quality(self, src_lambdas):
        """Weights copied from a variable-rate model whose lambda range was
        ``src_lambdas``: re-express everything that reads the quality u so
        the model keeps its function under this config's range (``--init``
        to a wider range, e.g. a top quality that reaches 2 bpp). Both
        ranges are log-spaced in u, so the source's u is affine in ours,
        u_src = a u + b; where u_src lies in [0, 1] the model starts as the
        source at the same lambda, beyond it as the source extrapolated:

        * the gain table at our knots is the source's (piecewise linear in
          u_src, extrapolated from its end segments);
        * a convolution fed u - 1/2 (g_a, the merges) or u (the scale
          networks) gets the weights of that channel times a and their sum
          times the offset added to its bias. Only the zero padding of the
          u - 1/2 channel at the image border still means u = 1/2 (it meant
          u_src = 1/2): a border effect training absorbs."""
        if not self.cfg.rate_knots:
            raise ValueError("only a variable-rate model has a quality to remap")
        lo, hi = (math.log(v) for v in src_lambdas)
        nlo, nhi = (math.log(v) for v in self.cfg.lambdas)
        a, b = (nhi - nlo) / (hi - lo), (nlo - lo) / (hi - lo)
        with torch.no_grad():
            k = self.log_gain.shape[0]
            old = self.log_gain.detach().clone()
            for j in range(k):
                pos = (a * j / (k - 1) + b) * (k - 1)          # in the source's knot steps
                i = min(max(int(math.floor(pos)), 0), k - 2)
                f = pos - i
                self.log_gain[j] = old[i] * (1 - f) + old[i + 1] * f

            def reads_u(conv, ch, offset):
                w = conv.weight[:, ch]
                conv.bias.add_(w.sum((1, 2)) * offset)
                w.mul_(a)
            # u - 1/2 = a (u_ours - 1/2) + (a/2 + b - 1/2)
            if self.cfg.encoder_quality:
                reads_u(self.g_a[0], 3, a / 2 + b - 0.5)
                for m in self.merge:
                    reads_u(m.c1, 3 * self.cfg.width, a / 2 + b - 0.5)
            if self.cfg.exact_scales:
                for s in self.scale_nets:
                    reads_u(s.c1, 2 * self.cfg.latent, b)

    # ---- the group interface shared by trainer, encoder and decoder ----
    @property
    def num_groups(self) -> int:
        return sum(self.cfg.groups)

    def init_state(self, batch: int, height: int, width: int, device=None, quality=None):
        """``quality``: u in [0, 1] for a variable-rate model (a float, or one
        per image when training); ignored by a single-rate one."""
        s = self.cfg.stride
        hs, ws = height // s, width // s
        h = self.h_top.float().to(device).expand(batch, -1, hs, ws).contiguous()
        if self.cfg.rate_knots and quality is None:
            raise ValueError("a variable-rate model needs a quality")
        u = quality if self.cfg.rate_knots else None
        return TopDownState(h, 0, u), MergeState(torch.zeros_like(h))

    def _quality_map(self, u, like: torch.Tensor) -> torch.Tensor:
        """u (a float, or one per image) as a B x 1 x H x W map like ``like``."""
        b, _, hh, ww = like.shape
        u = torch.as_tensor(u, dtype=torch.float32, device=like.device).reshape(-1, 1, 1, 1)
        return u.expand(b, 1, hh, ww).to(like.dtype)

    def begin(self, x01: torch.Tensor, quality=None) -> list[torch.Tensor]:
        """Bottom-up pass (Eq. 9), returned coarsest scale first like the TD.
        ``quality``: u, which an encoder_quality model's g_a sees (as u - 1/2:
        run_analysis centres its input)."""
        if self.cfg.encoder_quality:
            if quality is None:
                raise ValueError("this model's encoder needs the quality")
            x01 = torch.cat([x01, self._quality_map(quality, x01)], 1)
        h = run_analysis(self.g_a, x01, 2 ** len(self.cfg.analysis))
        feats = []
        for s, blocks in enumerate(self.bu):
            if s > 0:
                h = self.down[s - 1](h)
            h = run_residuals(blocks, h)
            feats.append(h.float())
        out = BottomUp(feats[::-1])
        if self.cfg.residual_read:
            out.image = x01[:, :3]
        return out

    def residual(self, image: torch.Tensor, st: TopDownState) -> torch.Tensor:
        """The residual read: the image minus the decoder's picture from
        state ``st`` (its prefix of groups, no more), as 8x8 pixel blocks at
        1/8 of the image. A constant of the posterior: no gradient flows into
        g_s or the earlier groups through it (g_s runs forward only)."""
        g_s = getattr(self, "float_modules", {}).get("g_s", self.g_s)     # the coder twin's float g_s
        with torch.no_grad():
            x_hat = self.render(st, g_s).clamp(0, 1)
        return F.pixel_unshuffle(RESIDUAL_GAIN * (image - x_hat).float(), 2 ** len(self.cfg.analysis))

    def prior(self, st: TopDownState):
        """Eq. 8 on the float path: mean and std (latent units) for a
        single-rate model; with exact scales only the mean."""
        if self.cfg.exact_scales:
            (mu,) = by_tiles(lambda h: (self.prior_heads[st.g](h).float(),), st.h, halo=2)
            return mu, None
        mu, log_sigma = by_tiles(lambda h: self.prior_heads[st.g](h).float().chunk(2, 1), st.h, halo=2)
        return mu, log_sigma.clamp(-10, 10).exp()

    def exact(self) -> ExactScales:
        """The exact entropy model (convcodec.nets.exact) of these weights,
        rebuilt when any of them changed (training, load_state_dict)."""
        params = [self.log_width, self.log_sigma0, *self.scale_nets.parameters()]
        if self.cfg.rate_knots:
            params.append(self.log_gain)
        key = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        if self._exact_cache.get("key") != key:
            state = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()
                     if k.startswith(("log_width", "log_gain", "log_sigma0", "scale_nets."))}
            self._exact_cache = {"key": key, "exact": ExactScales(state, self.cfg.latent, self.num_groups,
                                                                   self._scale_of, self.cfg.rate_knots)}
        return self._exact_cache["exact"]

    def bin_width(self, st: TopDownState, coding: bool = False) -> torch.Tensor:
        """Group st.g's bin width per latent map, broadcastable to a latent map
        (when coding with exact scales: the width on the grid, as the file uses)."""
        return self.quality_bin_width(st.g, st.u, st.h.shape[0], st.h.device, coding)

    # ---- exact scales: context of decoded symbols -> scale index ----
    def _context(self, st: TopDownState) -> torch.Tensor:
        """Training's float twin of ExactScales.context: |w k| of groups g-1
        and g-2 at group g's resolution, and the quality map."""
        b, _, hs, ws = st.h.shape
        maps = []
        for back in (1, 2):
            j = st.g - back
            if j < 0:
                maps.append(st.h.new_zeros(b, self.cfg.latent, hs, ws))
                continue
            d = st.hist[j]
            f = hs // d.shape[-2]
            maps.append(d.repeat_interleave(f, -2).repeat_interleave(f, -1) if f > 1 else d)
        maps.append(self._quality_map(st.u if self.cfg.rate_knots else 0.0, st.h))
        return torch.cat(maps, 1)

    def log_sigma(self, st: TopDownState) -> torch.Tensor:
        """Float twin of the exact scale path (training): log std, latent units."""
        b, _, hs, ws = st.h.shape
        if st.g == 0:
            return self.log_sigma0.float().view(1, -1, 1, 1).expand(b, -1, hs, ws)
        with torch.autocast(st.h.device.type, enabled=False):
            return self.scale_nets[st.g - 1](self._context(st))

    def posterior(self, h_b: list[torch.Tensor], st: TopDownState, enc: MergeState):
        g = st.g
        def step(hm, hb, ht, *um):
            hm = self.merge[g](hm, torch.cat([hm, hb, ht, *um], 1)).float()
            return hm, self.q_heads[g](hm).float()
        hb, C = h_b[self._scale_of[g]], self.cfg.width
        maps = [enc.h, hb[:, :C], st.h]
        if self.cfg.encoder_quality:
            maps.append(self._quality_map(st.u, st.h) - 0.5)
        if hb.shape[1] > C:
            # h_b's channels beyond the ladder's width come last, so a model
            # grown from a narrower one (train --init) keeps every weight's input.
            maps.append(hb[:, C:])
        if self.cfg.residual_read and self._scale_of[g] == len(self.cfg.groups) - 1:
            if getattr(h_b, "image", None) is None:
                raise ValueError("this model's encoder reads the residual: begin() needs the image")
            maps.append(self.residual(h_b.image, st))     # last, so a model grown into it keeps every weight's input
        hm, mu_q = by_tiles(step, *maps, halo=3)
        if self._last_of_scale[g] and g + 1 < self.num_groups:
            hm = self.up_m[self._scale_of[g]](hm).float()
        return mu_q, MergeState(hm)

    def update(self, st: TopDownState, z: torch.Tensor) -> TopDownState:
        """Eq. 7: merge the group's latent into h_t."""
        g = st.g
        (h,) = by_tiles(lambda h, z: (self.td[g](h, torch.cat([h, z.to(h.dtype)], 1)).float(),),
                        st.h, z, halo=2)
        if self._last_of_scale[g] and g + 1 < self.num_groups:
            h = self.up_t[self._scale_of[g]](h).float()
        return TopDownState(h, g + 1, st.u, st.hist)

    def step(self, st: TopDownState, z: torch.Tensor, k: torch.Tensor | None, coding: bool) -> TopDownState:
        """update(), keeping |w k| of the group's integer offsets ``k`` (bins;
        None for a regenerated group: no offsets) for the exact scales of the
        later groups: exact (float64, width on the grid) when coding."""
        nxt = self.update(st, z)
        if not self.cfg.exact_scales:
            return nxt
        if coding:       # exact: the width on the grid times an integer (numpy float64)
            kk = np.zeros(z.shape) if k is None else k.detach().cpu().numpy()
            d = self.exact().magnitudes(st.g, kk, st.u)
        elif k is None:
            d = torch.zeros_like(z)
        else:
            d = (self.bin_width(st, False) * k.detach().abs()).float()
        nxt.hist = st.hist + (d,)
        return nxt

    def prior_of(self, st: TopDownState, coding: bool) -> Prior:
        if not self.cfg.exact_scales:
            return super().prior_of(st, coding)
        mu, _ = self.prior(st)
        if coding:
            b, _, hs, ws = st.h.shape
            idx = self.exact().index(st.g, list(st.hist), st.u, (b, hs, ws))
            return Prior(mu, coder_scales(torch.from_numpy(idx).to(mu.device)), idx)
        log_w = self.bin_width(st, False).log()
        scale = (self.log_sigma(st).float() - log_w).exp()
        return Prior(mu, scale, None)

    def render(self, st: TopDownState, g_s: nn.Module | None = None) -> torch.Tensor:
        """The picture from state ``st`` (g_s: another synthesis of the same
        shape, as the residual read's float twin)."""
        return run_synthesis(self.g_s if g_s is None else g_s, st.h, 2 ** len(self.cfg.analysis))
