"""The training pass, written once for every backbone.

A backbone exposes the group interface the codec drives (begin, init_state,
prior, posterior, update, render, width, num_groups); this module runs it with
additive uniform noise in place of rounding, so the rate it measures is the
rate the range coder spends (see convcodec.codec._walk for the coded loop).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import gaussian_bits


class LatentGroups(nn.Module):
    """What every backbone shares: a posterior width per latent map (the
    learned constant that fixes the quantization grid; subclasses create
    ``self.log_width``) and the training pass. Subclasses provide the group
    interface: begin, init_state, prior, posterior, update, render, num_groups."""

    def width(self) -> torch.Tensor:
        """Posterior width (bin size) per latent map, shaped for broadcasting."""
        return self.log_width.float().exp().view(1, -1, 1, 1)

    def forward(self, x01: torch.Tensor, prefixes=(), mixed: bool = True):
        """Training pass; see noisy_rollout."""
        return noisy_rollout(self, x01, prefixes, mixed)


def lambda_t(first: float, last: float, t: int, T: int) -> float:
    """The distortion weight of a file of t groups out of T: log-spaced from
    ``first`` (one group) to ``last`` (all groups)."""
    return first * (last / first) ** ((t - 1) / max(1, T - 1))


def prior_mean_fill(model, st, start: int):
    """Regenerate groups start..T-1 from the prior mean: what the decoder does
    (at temperature 0) for a file that stores only the first ``start`` groups."""
    for _ in range(start, model.num_groups):
        mu_p, _ = model.prior(st)
        st = model.update(st, mu_p)
    return st


def noisy_rollout(model, x01: torch.Tensor, prefixes=(), mixed: bool = True):
    """Training pass with the coder's quantization relaxed.

    The rate is that of the noisy offset (uniform noise of one bin: its
    expected cost is the coded rate's smooth relaxation). With ``mixed``
    (Minnen & Singh 2020) the decoder is fed the *rounded* offset, exactly
    what it gets from a file, with a straight-through gradient; otherwise
    the noisy one. Mixed removes the train/test mismatch of the decoder: a
    group that carries nothing adds no noise to the picture.

    Returns ``(bits, recon)``: bits per group (a [T] tensor, summed over the
    batch) and ``recon[t]`` = the reconstruction from the first t groups with
    the rest regenerated from the prior mean, for each t in ``prefixes``;
    ``recon[T]`` (all groups) is always present.
    """
    b, _, hgt, wid = x01.shape
    T = model.num_groups
    ctx = model.begin(x01)
    st, enc = model.init_state(b, hgt, wid, x01.device)
    w = model.width()
    bits, recon = [], {}
    for t in range(1, T + 1):
        mu_p, sigma_p = model.prior(st)
        mu_q, enc = model.posterior(ctx, st, enc)
        offset = (mu_q - mu_p) / w
        noisy = offset + torch.rand_like(offset) - 0.5
        bits.append(gaussian_bits(noisy, sigma_p / w).sum())
        shown = offset + (torch.round(offset) - offset).detach() if mixed else noisy
        st = model.update(st, mu_p + w * shown)
        if t < T and t in prefixes:
            recon[t] = model.render(prior_mean_fill(model, st, t))
    recon[T] = model.render(st)
    return torch.stack(bits), recon
