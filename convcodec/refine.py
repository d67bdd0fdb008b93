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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .nets.rollout import Given, lambda_t, quantize, walk
from .quality import quality_lambda
from .zoo import ModelError

BF16 = True       # the models trained under bf16 autocast; refinement runs 1.4x faster under it on CPU
MAX_PIXELS = 4_000_000   # the gradient graph of the whole walk is held: ~1.7 GB per megapixel
TRAVEL = 0.2      # Adam's step (bins) times the steps: small, so that few offsets cross a rounding boundary at once


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
    from .codec import _start
    x01 = x01.clone()                                      # a plain tensor, not an inference one
    ys = [y.clone().requires_grad_(True) for y in start]
    opt = torch.optim.Adam(ys, lr=TRAVEL / iters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / iters)))
    best_cost, best = math.inf, [quantize(y.detach()) for y in ys]
    for i in range(iters + 1):
        given = Given(ys)
        with torch.autocast(x01.device.type, dtype=torch.bfloat16, enabled=BF16):
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
