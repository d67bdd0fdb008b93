"""The training pass, written once for every backbone.

A backbone exposes the group interface the codec drives (begin, init_state,
prior, posterior, update, render, width, num_groups); this module runs it with
additive uniform noise in place of rounding, so the rate it measures is the
rate the range coder spends (see convcodec.codec._walk for the coded loop).
"""
from __future__ import annotations

import torch

from .layers import gaussian_bits


def prior_mean_fill(model, st, start: int):
    """Regenerate groups start..T-1 from the prior mean: what the decoder does
    (at temperature 0) for a file that stores only the first ``start`` groups."""
    for _ in range(start, model.num_groups):
        mu_p, _ = model.prior(st)
        st = model.update(st, mu_p)
    return st


def noisy_rollout(model, x01: torch.Tensor, prefixes=()):
    """Noisy-quantization pass for training.

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
        z = mu_q + w * (torch.rand_like(mu_q) - 0.5)
        bits.append(gaussian_bits((z - mu_p) / w, sigma_p / w).sum())
        st = model.update(st, z)
        if t < T and t in prefixes:
            recon[t] = model.render(prior_mean_fill(model, st, t))
    recon[T] = model.render(st)
    return torch.stack(bits), recon
