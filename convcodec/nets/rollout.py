"""What every backbone shares (``LatentGroups``) and the strategies of the one
walk over latent groups (``nets.walk``), for training, encoding, decoding and refinement.

Every side runs ``walk``: for each group the model gives its prior, a stored
group's offsets (integers, in bins from the prior mean) are chosen by a
strategy object, and the decoder state takes the latent ``mu_p + width * k``;
a group not stored is regenerated from the prior (its mean, or a seeded
sample). The strategies differ only in how a stored group's offsets are
chosen:

    Noisy    training: the encoder network's offsets, relaxed with uniform
             noise for the rate, rounded (straight-through) for the decoder
    Coded    the codec: a callback that quantizes and codes the encoder's
             offsets (encoder) or reads them from the file (decoder)
    Given    refinement: offsets being optimised, rounded straight-through

so training, the encoder, the decoder and refinement cannot drift apart,
and the exact prior path (convcodec.nets.exact) is written once, in the
model's ``prior_of``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .layers import gaussian_bits
# The loop itself is torch-free (the numpy decoder walks it too); re-exported here.
from .walk import Prior, prior_mean_fill, walk  # noqa: F401

from ..entropy import SYMBOL_MAX      # the coder's alphabet: offsets in [-SYMBOL_MAX, SYMBOL_MAX]


def coder_scales(idx: torch.Tensor) -> torch.Tensor:
    """The scale table's entries at ``idx``: the std the range coder uses."""
    from ..entropy import SCALES
    return torch.as_tensor(SCALES, dtype=torch.float32, device=idx.device)[idx.long()]


def quantize(offsets: torch.Tensor) -> torch.Tensor:
    """Offsets in bins -> the integers the coder stores."""
    return torch.round(offsets).clamp_(-SYMBOL_MAX, SYMBOL_MAX)


def straight_through(offsets: torch.Tensor) -> torch.Tensor:
    """The stored integers on the forward pass, the identity's gradient."""
    return offsets + (quantize(offsets.detach()) - offsets).detach()


class LatentGroups(nn.Module):
    """What every backbone shares: a posterior width per latent map (the
    learned constant that fixes the quantization grid; subclasses create
    ``self.log_width``), the coder's view of a float prior, and the training
    pass. Subclasses provide the group interface: begin, init_state, prior,
    posterior, update, render, num_groups; a backbone with its own entropy
    model (exact scales, variable rate) overrides prior_of, bin_width, step."""

    # The modules the decoder runs (prior mean, updates, g_s): in fixed point
    # when coding a portable file (``coder``), so the pixels are the same on
    # every machine. Empty: the float layers (version-1 backbones).
    DECODER: tuple = ()

    def coder(self) -> "LatentGroups":
        """The model as the codec runs it: its decoder modules in fixed point
        (convcodec.nets.fixed; cached), its encoder's as trained."""
        if not self.DECODER:
            return self
        from .fixed import coder_twin
        return coder_twin(self, self.DECODER)

    def width(self) -> torch.Tensor:
        """Posterior width (bin size) per latent map, shaped for broadcasting."""
        return self.log_width.float().exp().view(1, -1, 1, 1)

    def bin_width(self, st, coding: bool = False) -> torch.Tensor:
        return self.width()

    def quality_bin_width(self, g: int, u, batch: int, device, coding: bool) -> torch.Tensor:
        """Group g's bin widths at quality u, for backbones with a gain table
        (``log_gain``) or exact scales: when coding with exact scales the
        file's widths (on the fixed-point grid, from ``self.exact()``), else
        the float ones training differentiates."""
        if coding and getattr(self.cfg, "exact_scales", False):
            w = self.exact().constants(u)[0][g]
            return torch.tensor(w, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        if self.cfg.rate_knots and not torch.is_tensor(u):
            u = torch.full((batch,), float(u), device=device)
        gains = self.log_gain if self.cfg.rate_knots else None
        return log_bin_width(self.log_width, gains, g, u).exp()[..., None, None]

    def prior_of(self, st, coding: bool) -> Prior:
        """The float prior's mean and scale; when coding, the scale snapped
        to the coder's table from float arithmetic (version-1 files: not
        portable across machines, see convcodec.nets.exact)."""
        mu, sigma = self.prior(st)
        scale = sigma / self.width()
        if not coding:
            return Prior(mu, scale)
        from ..entropy import scale_index
        return Prior(mu, scale, scale_index(scale.detach().float().cpu().numpy()))

    def step(self, st, z: torch.Tensor, k: torch.Tensor | None, coding: bool):
        return self.update(st, z)

    def sample(self, prior: Prior, w: torch.Tensor, temperature: float, gens):
        """A group regenerated as a sample from the prior the coder would use,
        drawn with ``gens[b]`` for image b: ``(k, z)``, its offsets (which feed
        the later groups' scales as decoded ones would) and its latent."""
        eps = torch.stack([torch.randn(prior.mu.shape[1:], generator=gn) for gn in gens]).to(prior.mu.device)
        k = quantize(temperature * prior.scale * eps)
        return k, prior.mu + temperature * w * prior.scale * eps

    def forward(self, x01: torch.Tensor, prefixes=(), mixed: bool = True, quality=None):
        """Training pass: ``(bits, recon)``, bits per group and image
        (T x B) and the reconstructions of the prefixes (see ``walk``)."""
        ctx = self.begin(x01, quality)
        st, enc = self.init_state(x01.shape[0], x01.shape[-2], x01.shape[-1], x01.device, quality=quality)
        noisy = Noisy(self, ctx, enc, mixed)
        recon = walk(self, st, noisy, self.num_groups, prefixes=prefixes)
        return torch.stack(noisy.bits), recon


def initial_gains(lambdas, knots: int, groups: int, latent: int) -> torch.Tensor:
    """A variable-rate model's table of log bin-width gains (knot x group x
    map), started at the high-rate rule w ~ lambda^-1/2 around the geometric
    middle of the lambda range (where an initial single-rate model was trained)."""
    lo, hi = (math.log(v) for v in lambdas)
    k = torch.linspace(lo, hi, knots) - 0.5 * (lo + hi)
    return (-0.5 * k).view(-1, 1, 1).repeat(1, groups, latent).contiguous()


def log_bin_width(log_width: torch.Tensor, log_gain: torch.Tensor | None, g: int, u) -> torch.Tensor:
    """Group g's log bin widths per image and latent map (B x L): the model's
    log widths plus its gain table interpolated at each image's quality u
    (a tensor of B values in [0, 1]); ``log_gain`` None: a single rate."""
    lw = log_width.float()[None]
    if log_gain is None:
        return lw
    k = log_gain.shape[0]
    pos = u.float().clamp(0, 1) * (k - 1)
    i = pos.floor().clamp(max=k - 2).long()
    f = (pos - i)[:, None]
    table = log_gain[:, g].float()
    return lw + table[i] * (1 - f) + table[i + 1] * f


def lambda_t(first: float, last: float, t: int, T: int) -> float:
    """The distortion weight of a file of t groups out of T: log-spaced from
    ``first`` (one group) to ``last`` (all groups)."""
    return first * (last / first) ** ((t - 1) / max(1, T - 1))


class Noisy:
    """Training: the encoder network's offsets. The rate is that of the noisy
    offset (uniform noise of one bin: its expected cost is the coded rate's
    smooth relaxation). With ``mixed`` (Minnen & Singh 2020) the decoder is
    fed the *rounded* offset, exactly what it gets from a file, with a
    straight-through gradient; otherwise the noisy one."""

    def __init__(self, model, ctx, enc, mixed: bool = True):
        self.model, self.ctx, self.enc, self.mixed = model, ctx, enc, mixed
        self.bits: list[torch.Tensor] = []          # per group: bits per image (B)

    def __call__(self, g, st, prior: Prior, w) -> torch.Tensor:
        mu_q, self.enc = self.model.posterior(self.ctx, st, self.enc)
        offset = (mu_q - prior.mu) / w
        noisy = offset + torch.rand_like(offset) - 0.5
        self.bits.append(gaussian_bits(noisy, prior.scale).flatten(1).sum(1))
        return straight_through(offset) if self.mixed else noisy


class Coded:
    """The codec: ``take(g, st, prior, w)`` returns stored group g's integer
    offsets (int32 numpy, batch first): the encoder quantizes and codes
    them, the decoder reads them from the file."""

    def __init__(self, take: Callable):
        self.take = take

    def __call__(self, g, st, prior: Prior, w) -> torch.Tensor:
        k = self.take(g, st, prior, w)
        return torch.from_numpy(k).to(device=prior.mu.device, dtype=prior.mu.dtype)


class Given:
    """Refinement: offsets being optimised (one float tensor per stored
    group), rounded on the forward pass with a straight-through gradient;
    ``bits`` collects the cost of those integers under the coder's scales."""

    def __init__(self, offsets: list[torch.Tensor]):
        self.offsets = offsets
        self.bits: list[torch.Tensor] = []

    def __call__(self, g, st, prior: Prior, w) -> torch.Tensor:
        k = straight_through(self.offsets[g])
        self.bits.append(gaussian_bits(k, prior.scale).sum())
        return k
