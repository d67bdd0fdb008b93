"""The one walk over latent groups, for training, encoding, decoding and refinement.

Every side runs ``walk``: the trainer, the encoder and the decoder of
``convcodec.codec`` (torch), refinement, and the torch-free decoder of
``convcodec.npdecode`` (numpy), so none of them can drift from the others.
The loop is written against the model's group interface alone (prior_of,
bin_width, step, prior, render, num_groups; ``sample`` for a group drawn at
a temperature) and imports no array library: the model's arrays, torch
tensors or numpy arrays, do the arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Prior:
    """A group's prior as the coder sees it (torch tensors, or numpy arrays in
    the numpy decoder)."""
    mu: Any                      # mean, latent units
    scale: Any                   # std in bins (differentiable when training; the table's when coding)
    idx: Any = None              # the coder's scale-table indices (uint8 numpy), when coding


def walk(model, st, choose, stored: int, *, coding: bool = False, temperature: float = 0.0,
         gens=None, prefixes=(), render: bool = True):
    """The loop every side shares. Groups 0..stored-1 take the offsets
    ``choose`` gives; the rest are regenerated from the prior (the mean, or
    with ``temperature`` > 0 a sample drawn with ``gens[b]`` for image b).
    ``coding``: the coder's view of the prior (scale-table indices; exact
    for a backbone with exact scales). Returns the reconstruction in [0, 1]
    at the padded size, or, with ``prefixes``, a dict t -> reconstruction of
    the first t groups with the rest from the prior mean (and the full one
    at T). ``render=False`` stops after the last stored group and returns
    None (nothing after it changes a file)."""
    T = model.num_groups
    recon = {}
    for g in range(T if render else stored):
        k = None
        if g < stored:
            prior = model.prior_of(st, coding)
            w = model.bin_width(st, coding)
            k = choose(g, st, prior, w)
            z = prior.mu + w * k
        elif temperature > 0:
            # A sample from the prior the coder would use (model.sample).
            prior = model.prior_of(st, coding)
            w = model.bin_width(st, coding)
            k, z = model.sample(prior, w, temperature, gens)
        else:
            z, _ = model.prior(st)
        if render or g + 1 < stored:
            st = model.step(st, z, k, coding)
        if g + 1 in prefixes and g + 1 < T:
            recon[g + 1] = model.render(prior_mean_fill(model, st, g + 1, coding))
    if not render:
        return None
    out = model.render(st)
    if prefixes:
        recon[T] = out
        return recon
    return out


def prior_mean_fill(model, st, start: int, coding: bool = False):
    """Regenerate groups start..T-1 from the prior mean: what the decoder does
    (at temperature 0) for a file that stores only the first ``start`` groups."""
    for _ in range(start, model.num_groups):
        mu, _ = model.prior(st)
        st = model.step(st, mu, None, coding)
    return st
