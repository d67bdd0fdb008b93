"""Encoder-side refinement of the latents: a slower encoder, a better file.

The encoder network is amortized: one pass guesses every image's latents,
and the guess leaves bits on the table (the amortization gap; Campos et al.
2019, "Content adaptive optimization for neural image compression"; Yang et
al. 2020, "Improving inference for neural image compression"). Refinement
starts from that guess and improves the stored groups' offsets by gradient
descent on the cost the model was trained for, bpp + lambda_t * 255^2 * MSE,
of the very file it will write: the first ``stored`` groups coded, the rest
regenerated from the prior mean. It walks the codec's own loop
(``nets.rollout.walk`` with the ``Given`` strategy, under the coder's own
scales), so the cost is that of the decoder's picture and the file's bits.

Offsets are rounded on the forward pass (what the file holds) with a
straight-through gradient, so each iteration scores the exact integers it
would store; the best set seen is kept. The result is therefore never worse
than the encoder network's guess by the model's own measure. Neither the
decoder nor the file format change: refinement only picks other integers.
The bits it scores are the quantized Gaussian's of the coder's scales (the
rate the networks were trained on, and the version-2 coder); a model with
code tables (versions 3 and 4) writes those integers in 1.4-3.6% fewer
bits (matnet-vr16c on Kodak, quality 100 to 1), so the set kept is the
best by the training cost, not by the file's own size. Scoring each set by
the tables' bits instead was measured (session 28, matnet-vr16c, 6 Kodak
images x 11 qualities): 22 of 66 files changed, by -0.01% BD-rate in all.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .nets.rollout import Given, lambda_t, quantize, walk
from .quality import quality_lambda
from .zoo import ModelError

# The models trained under bf16 autocast; refinement runs 1.4x faster under it
# on a CPU with native bf16, and ~50x slower where bf16 is emulated (AVX2
# alone), so it asks codec.bf16_native first.
BF16 = True
MAX_PIXELS = 4_000_000   # the gradient graph of the whole walk is held: ~1.7 GB per megapixel
# How far Adam may move the offsets in all (its step times the steps, in
# bins): at low rates far enough to flip the offsets lying near a rounding
# boundary and no farther (a larger travel moves many across at once, the
# cost jumps up and nothing better is found), at high rates much farther.
# Tuned with matnet-vr9 on 3 training photos (BSDS), 40 steps, by J, the
# training cost of the real file (bits from the file, MSE from its decode):
# quality 20: travel 0.2 gave J -1.8 to -2.9%, 0.6 or more found nothing
# better than the network's guess; quality 50: 0.25 gave -0.7 to -3.5%, 1.0
# 0 to -1.1%; quality 75: 0.3 -2.4 to -6.2%, 0.8 -1.5 to -7.8%, 1.5 -0.3 to
# -7.3%; quality 90: 1.5 -6.5 to -13.0%, 0.2 only -3.5 to -6.3%. Between the
# two knots the travel is log-linear in lambda (0.8 at quality 75).
TRAVEL = (0.2, 1.5)
TRAVEL_LAMBDAS = (0.01, 0.1)     # matnet-vr9's lambda at quality 50 and about 86


def travel(lmbda: float) -> float:
    """The offsets' total travel (bins) for distortion weight ``lmbda``."""
    (t0, t1), (l0, l1) = TRAVEL, TRAVEL_LAMBDAS
    f = min(1.0, max(0.0, math.log(lmbda / l0) / math.log(l1 / l0)))
    return t0 * (t1 / t0) ** f


def model_lambda(card: dict, stored: int, groups: int, cfg=None, quality: int = 0) -> float:
    """The distortion weight the model was trained with for a file of
    ``stored`` groups (a variable-rate model: at the file's quality)."""
    if cfg is not None and getattr(cfg, "rate_knots", 0):
        return quality_lambda(cfg.lambdas, quality)
    tr = card.get("training") or {}
    if not isinstance(tr.get("lambda"), (int, float)):
        raise ModelError("this model's card does not say the lambda it was trained with, "
                         "which refinement needs")
    return lambda_t(tr.get("lambda_first") or tr["lambda"], tr["lambda"], stored, groups)


def check_size(h: int, w: int):
    if h * w > MAX_PIXELS:
        raise ValueError(f"refinement holds the gradients of the whole image in memory (about 1.7 GB "
                         f"per megapixel) and takes images of up to {MAX_PIXELS / 1e6:g} MP; this one "
                         f"is {h * w / 1e6:.1f} MP: compress it without refinement")


def refine_offsets(net, x01: torch.Tensor, h: int, w: int, start: list[torch.Tensor], iters: int,
                   lmbda: float, quality: int = 0) -> list[torch.Tensor]:
    """The stored groups' integer offsets (as float tensors) after ``iters``
    gradient steps from ``start``, the encoder network's unrounded offsets,
    on the cost with distortion weight ``lmbda`` (``model_lambda``). ``x01``
    is the padded image, ``h`` x ``w`` its real size (``check_size`` first)."""
    from .codec import _start, bf16_native
    x01 = x01.clone()                                      # a plain tensor, not an inference one
    ys = [y.clone().requires_grad_(True) for y in start]
    opt = torch.optim.Adam(ys, lr=travel(lmbda) / iters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / iters)))
    best_cost, best = math.inf, [quantize(y.detach()) for y in ys]
    bf16 = BF16 and bf16_native(x01.device)
    for i in range(iters + 1):
        given = Given(ys)
        with torch.autocast(x01.device.type, dtype=torch.bfloat16, enabled=bf16):
            st, _ = _start(net, 1, x01.shape[-2], x01.shape[-1], x01.device, quality)
            rec = walk(net, st, given, len(ys), coding=True).float()
        mse = F.mse_loss(rec[..., :h, :w].clamp(0, 1), x01[..., :h, :w])
        cost = torch.stack(given.bits).sum() / (h * w) + lmbda * 255 ** 2 * mse
        if cost.item() < best_cost:
            best_cost, best = cost.item(), [quantize(y.detach()) for y in ys]
        if i == iters:
            break
        opt.zero_grad(set_to_none=True)
        cost.backward()
        opt.step()
        sched.step()
    return best
