"""Variational Ladder Autoencoder (Zhao, Song & Ermon 2017, "Learning
Hierarchical Features from Deep Generative Models"), arranged as a codec.

A flat set of latents z_1..z_L tied to networks of increasing depth, so the
deepest latent carries the most abstract features:

    inference (encoder only), once per image:
      h_0 = g_a(x);  h_l = g_l(h_{l-1})   (l = 1..L; one octave down per level after the first)
      mu_q(z_l) = q_l(h_l)                 fixed-width posterior, as every backbone
    generation, one group at a time (both sides), deepest first:
      zt_L = f_L(z_L);  zt_l = u_l([up(zt_{l+1}); v_l(z_l)]);  x_hat = g_s(zt_1)

Groups are stored from the deepest latent (most abstract) to the shallowest:
group 0 is z_L. The prior is the paper's flat one: a learned constant mean
and scale per latent map and level, so the coder's scales depend on no
float state at all: the entropy model is exact by construction (the scale
index comes from the constant, on the fixed-point grid, through the same
ExactScales as MatNet's). A file cut after t groups regenerates the
shallower latents from their prior means.

Fully convolutional (any image size); g_a and g_s are the MatNet's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .exact import ExactScales
from .layers import analysis, run_analysis, run_synthesis, synthesis
from .matnet import Residual, run_residuals
from .rollout import LatentGroups, Prior, coder_scales, initial_gains


@dataclass
class VLAEConfig:
    backbone: str = "vlae"              # registry key; checkpoints are rebuilt from this
    latent: int = 16                    # latent maps per level (= per group)
    width: int = 64                     # channels of the ladder and generator states
    levels: int = 3                     # L: latents at 1/8, 1/16, ..., of the image
    blocks: int = 2                     # residual blocks per ladder / generator step
    analysis: tuple = (64, 64, 64)      # g_a: image -> 1/8; last = width
    synthesis: tuple = (64, 64)         # g_s widths from 1/8 upwards (then RGB)
    rate_knots: int = 0                 # variable rate, as MatNet (0: single rate)
    lambdas: tuple = (0.0004, 0.25)
    exact_scales: bool = True           # the flat prior's scales are exact by construction

    @property
    def stride(self) -> int:
        return 2 ** (len(self.analysis) + self.levels - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("analysis", "synthesis", "lambdas"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VLAEConfig":
        d = dict(d)
        for k in ("analysis", "synthesis", "lambdas"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class GenState:
    """The generator's state after some groups: zt of the last level made (None
    before the first), the index of the next group, the quality and (for the
    shared exact-scale interface) the decoded magnitudes, unused by a flat prior."""
    h: torch.Tensor | None
    g: int
    u: torch.Tensor | float | None
    shape: tuple                        # (batch, rows, cols) of the deepest level
    device: torch.device
    hist: tuple = ()


def _stack(ch: int, n: int) -> nn.ModuleList:
    return nn.ModuleList(Residual(ch, ch) for _ in range(n))


class VLAE(LatentGroups):
    DECODER = ("v", "merge_in", "gen", "up", "g_s")

    def __init__(self, cfg: VLAEConfig):
        super().__init__()
        assert cfg.analysis[-1] == cfg.width, "g_a produces the first ladder state"
        self.cfg = cfg
        C, L, n = cfg.width, cfg.latent, cfg.levels
        self.g_a = analysis(3, cfg.analysis)
        self.g_s = synthesis(C, cfg.synthesis, 3)
        # inference ladder, shallowest level first: level l goes one octave down (l > 0)
        self.down = nn.ModuleList(nn.Conv2d(C, C, 3, stride=2, padding=1) for _ in range(n - 1))
        self.ladder = nn.ModuleList(_stack(C, cfg.blocks) for _ in range(n))
        self.q_heads = nn.ModuleList(nn.Conv2d(C, L, 3, padding=1) for _ in range(n))
        # generator, per level: v_l(z_l), and u_l merging it with the deeper state
        self.v = nn.ModuleList(nn.Conv2d(L, C, 3, padding=1) for _ in range(n))
        self.merge_in = nn.ModuleList(nn.Conv2d(2 * C, C, 3, padding=1) for _ in range(n - 1))
        self.gen = nn.ModuleList(_stack(C, cfg.blocks) for _ in range(n))
        self.up = nn.ModuleList(nn.ConvTranspose2d(C, C, 4, stride=2, padding=1) for _ in range(n - 1))
        # the flat prior: a learned mean and log scale per level and latent map
        self.prior_mu = nn.Parameter(torch.zeros(n, L))
        self.log_sigma = nn.Parameter(torch.zeros(n, L))
        self.log_width = nn.Parameter(torch.zeros(L))
        if cfg.rate_knots:      # per (knot, group, map): groups deepest first, as coded
            self.log_gain = nn.Parameter(initial_gains(cfg.lambdas, cfg.rate_knots, n, L))
        self._exact_cache: dict = {}

    # groups are levels, deepest first
    @property
    def num_groups(self) -> int:
        return self.cfg.levels

    def _level(self, g: int) -> int:
        """Group g -> ladder level (0 = shallowest, at 1/8)."""
        return self.cfg.levels - 1 - g

    def init_state(self, batch: int, height: int, width: int, device=None, quality=None):
        if self.cfg.rate_knots and quality is None:
            raise ValueError("a variable-rate model needs a quality")
        s = self.cfg.stride
        st = GenState(None, 0, quality if self.cfg.rate_knots else None, (batch, height // s, width // s),
                      torch.device(device or "cpu"))
        return st, None

    def begin(self, x01: torch.Tensor, quality=None) -> list[torch.Tensor]:
        """The inference ladder: h_l for every level, shallowest first."""
        h = run_analysis(self.g_a, x01, 2 ** len(self.cfg.analysis))
        feats = []
        for l, blocks in enumerate(self.ladder):
            if l > 0:
                h = self.down[l - 1](h)
            h = run_residuals(blocks, h)
            feats.append(h.float())
        return feats

    def _shape(self, st: GenState) -> tuple:
        b, hs, ws = st.shape
        f = 2 ** st.g
        return b, hs * f, ws * f

    def prior(self, st: GenState):
        b, hs, ws = self._shape(st)
        l = self._level(st.g)
        mu = self.prior_mu[l].float().view(1, -1, 1, 1).expand(b, -1, hs, ws).to(st.device)
        sigma = self.log_sigma[l].float().exp().view(1, -1, 1, 1).expand(b, -1, hs, ws).to(st.device)
        return mu, sigma

    def posterior(self, feats: list[torch.Tensor], st: GenState, enc):
        """mu_q(z_l) from the ladder alone (VLAE's inference is bottom-up)."""
        l = self._level(st.g)
        return self.q_heads[l](feats[l]).float(), enc

    def update(self, st: GenState, z: torch.Tensor) -> GenState:
        l = self._level(st.g)
        v = self.v[l](z)
        if st.h is None:
            h = v
        else:
            h = self.merge_in[l](torch.cat([self.up[l](st.h), v], 1))
        h = run_residuals(self.gen[l], h).float()
        return GenState(h, st.g + 1, st.u, st.shape, st.device, st.hist)

    def render(self, st: GenState) -> torch.Tensor:
        assert st.g == self.num_groups, "render after every group (stored or regenerated)"
        return run_synthesis(self.g_s, st.h, 2 ** len(self.cfg.analysis))

    # ---- the coder's view: widths at a quality, exact scale indices ----
    def exact(self) -> ExactScales:
        params = [self.log_width, self.log_sigma] + ([self.log_gain] if self.cfg.rate_knots else [])
        key = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        if self._exact_cache.get("key") != key:
            state = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()
                     if k in ("log_width", "log_gain", "log_sigma")}
            # ExactScales counts groups (deepest first); log_sigma is by level
            state["log_sigma"] = state["log_sigma"][::-1].copy()
            self._exact_cache = {"key": key, "exact": ExactScales(state, self.cfg.latent, self.num_groups,
                                                                   list(range(self.num_groups)),
                                                                   self.cfg.rate_knots)}
        return self._exact_cache["exact"]

    def bin_width(self, st: GenState, coding: bool = False) -> torch.Tensor:
        return self.quality_bin_width(st.g, st.u, st.shape[0], st.device, coding)

    def prior_of(self, st: GenState, coding: bool) -> Prior:
        mu, sigma = self.prior(st)
        if coding:
            idx = self.exact().index(st.g, [], st.u, self._shape(st))
            return Prior(mu, coder_scales(torch.from_numpy(idx).to(mu.device)), idx)
        return Prior(mu, sigma / self.bin_width(st, False), None)

