"""MatNet (Bachman 2016, "An Architecture for Deep, Hierarchical Generative
Models"), arranged as a codec: one latent group per stochastic top-down module,
generated top-most first, with fixed-width posteriors like the Conv DRAW's.

    bottom-up (encoder only; Eq. 9), once per image:
      h_b[finest] = BU(g_a(x));  h_b[s+1] = BU(down(h_b[s]))
    top-down, one group i at a time (both sides; coarsest scale first):
      mu_p, sigma_p = prior_i(h_t)                                       Eq. 8
      h_m = lrelu(h_m + conv(lrelu(conv([h_m; h_b[scale_i]; h_t]))))     Eq. 10 (encoder)
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

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import analysis, by_tiles, run_analysis, run_synthesis, synthesis
from .rollout import LatentGroups


@dataclass
class MatNetConfig:
    backbone: str = "matnet"            # registry key; checkpoints are rebuilt from this
    latent: int = 16                    # latent maps per group
    width: int = 64                     # channels of h_b, h_t and h_m at every scale
    groups: tuple = (2, 3, 3)           # stochastic TD modules per scale, coarsest first
    bu_blocks: int = 1                  # BU residual modules per scale (Eq. 9)
    analysis: tuple = (64, 64, 64)      # g_a: image -> finest latent scale; last = width
    synthesis: tuple = (64, 64)         # g_s widths from the finest scale upwards (then RGB)

    @property
    def stride(self) -> int:
        """Padding multiple: the coarsest scale must have whole pixels."""
        return 2 ** (len(self.analysis) + len(self.groups) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("groups", "analysis", "synthesis"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MatNetConfig":
        d = dict(d)
        for k in ("groups", "analysis", "synthesis"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class TopDownState:
    """What the decoder knows: the TD state and the index of the next group."""
    h: torch.Tensor
    g: int


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
    vdvae's scaled init), which keeps a deep ladder trainable from step one."""

    def __init__(self, in_ch: int, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, h, inp):
        return _lrelu(h + self.c2(_lrelu(self.c1(inp))))


def _up(ch):
    return nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)


class MatNet(LatentGroups):
    def __init__(self, cfg: MatNetConfig):
        super().__init__()
        assert cfg.analysis[-1] == cfg.width, "g_a produces the finest BU state"
        self.cfg = cfg
        C, L, S = cfg.width, cfg.latent, len(cfg.groups)
        self.g_a = analysis(3, cfg.analysis)
        self.g_s = synthesis(C, cfg.synthesis, 3)
        # bottom-up, finest scale first
        self.bu = nn.ModuleList(nn.ModuleList(Residual(C, C) for _ in range(cfg.bu_blocks))
                                for _ in range(S))
        self.down = nn.ModuleList(nn.Conv2d(C, C, 3, stride=2, padding=1) for _ in range(S - 1))
        # top-down, coarsest scale first; one entry per group
        self.h_top = nn.Parameter(torch.zeros(1, C, 1, 1))
        n = sum(cfg.groups)
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.LeakyReLU(0.1),
                          nn.Conv2d(C, 2 * L, 3, padding=1)) for _ in range(n))
        self.td = nn.ModuleList(Residual(C + L, C) for _ in range(n))
        self.merge = nn.ModuleList(Residual(3 * C, C) for _ in range(n))
        self.q_heads = nn.ModuleList(nn.Conv2d(C, L, 3, padding=1) for _ in range(n))
        self.up_t = nn.ModuleList(_up(C) for _ in range(S - 1))
        self.up_m = nn.ModuleList(_up(C) for _ in range(S - 1))
        # The posterior's width is a learned constant per latent map, independent
        # of the input: it defines the quantization grid of that map.
        self.log_width = nn.Parameter(torch.zeros(L))
        # group index -> (scale, is the last group of its scale)
        self._scale_of, self._last_of_scale = [], []
        for s, k in enumerate(cfg.groups):
            self._scale_of += [s] * k
            self._last_of_scale += [False] * (k - 1) + [True]

    # ---- the group interface shared by trainer, encoder and decoder ----
    @property
    def num_groups(self) -> int:
        return sum(self.cfg.groups)

    def init_state(self, batch: int, height: int, width: int, device=None):
        s = self.cfg.stride
        hs, ws = height // s, width // s
        h = self.h_top.float().to(device).expand(batch, -1, hs, ws).contiguous()
        return TopDownState(h, 0), MergeState(torch.zeros_like(h))

    def begin(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up pass (Eq. 9), returned coarsest scale first like the TD."""
        h = run_analysis(self.g_a, x01, 2 ** len(self.cfg.analysis))
        feats = []
        for s, blocks in enumerate(self.bu):
            if s > 0:
                h = self.down[s - 1](h)
            for blk in blocks:
                h = blk(h, h)
            feats.append(h.float())
        return feats[::-1]

    def prior(self, st: TopDownState):
        mu, log_sigma = by_tiles(lambda h: self.prior_heads[st.g](h).float().chunk(2, 1), st.h, halo=2)
        return mu, log_sigma.clamp(-10, 10).exp()

    def posterior(self, h_b: list[torch.Tensor], st: TopDownState, enc: MergeState):
        g = st.g
        def step(hm, hb, ht):
            hm = self.merge[g](hm, torch.cat([hm, hb, ht], 1)).float()
            return hm, self.q_heads[g](hm).float()
        hm, mu_q = by_tiles(step, enc.h, h_b[self._scale_of[g]], st.h, halo=3)
        if self._last_of_scale[g] and g + 1 < self.num_groups:
            hm = self.up_m[self._scale_of[g]](hm).float()
        return mu_q, MergeState(hm)

    def update(self, st: TopDownState, z: torch.Tensor) -> TopDownState:
        g = st.g
        (h,) = by_tiles(lambda h, z: (self.td[g](h, torch.cat([h, z.to(h.dtype)], 1)).float(),),
                        st.h, z, halo=2)
        if self._last_of_scale[g] and g + 1 < self.num_groups:
            h = self.up_t[self._scale_of[g]](h).float()
        return TopDownState(h, g + 1)

    def render(self, st: TopDownState) -> torch.Tensor:
        return run_synthesis(self.g_s, st.h, 2 ** len(self.cfg.analysis))
