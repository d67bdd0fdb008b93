#!/usr/bin/env python3
"""What the trainer's spike guard skips: a model's per-image training losses
on random training batches, run through the guard as it is
(convcodec.train.SpikeGuard: each batch against what its qualities and its
prefix usually cost) and through the guard before session 23 (the batch loss against one
running average of it, 3x), with the same batches and the same bookkeeping
as the training loop (only accepted updates feed the averages).

    python tools/spike_guard.py --model matnet-vr16 --crop 256 --batch 4 --batches 300 --json docs/kodak/spike_guard.json

Forward passes only (no update): the losses are the shipped model's, so
this measures which batches each rule would refuse, not a training run.
"""
from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch

from convcodec.train import SpikeGuard, TrainConfig, fit_crop, load_images, random_batch, rd_loss, shared_prefix
from convcodec.zoo import load_model


class OneAverageGuard:
    """The guard before session 23: the batch loss against 3x one running
    average of the accepted batch losses (decay 0.99)."""

    def __init__(self, warmup: int):
        self.warmup, self.avg = warmup, None

    def bad_loss(self, step: int, loss: float) -> bool:
        return self.avg is not None and step > self.warmup and loss > SpikeGuard.LOSS_FACTOR * self.avg

    def accepted(self, loss: float):
        self.avg = loss if self.avg is None else 0.99 * self.avg + 0.01 * loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="matnet-vr16")
    ap.add_argument("--data", nargs="+", default=list(TrainConfig.data))
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    net, info = load_model(a.model)
    if not getattr(net.cfg, "rate_knots", 0):
        raise SystemExit(f"{a.model} is single-rate: both rules see one bin, nothing to compare")
    net.train()
    imgs, _ = fit_crop(load_images(a.data), a.crop)
    gen = random.Random(a.seed)
    torch.manual_seed(a.seed)
    tc = TrainConfig(crop=a.crop, batch=a.batch, bf16=False)
    T = net.num_groups
    new, old = SpikeGuard(a.warmup), OneAverageGuard(a.warmup)
    rows = []
    with torch.no_grad():
        for step in range(a.batches):
            x = random_batch(imgs, a.batch, a.crop, gen)
            prefix = shared_prefix(gen, T, 1, None)      # drawn as the trainer draws it
            _, terms = rd_loss(tc, net, x, prefix, T, gen)
            losses, quality = terms["per_image"], terms["quality"]
            kinds, lv = new.kinds(quality, prefix), float(np.mean(losses))
            skip_new, skip_old = new.bad_loss(step, lv, kinds), old.bad_loss(step, lv)
            if not skip_new:
                new.accepted(losses, kinds, gn=1.0)
            if not skip_old:
                old.accepted(lv)
            rows.append({"step": step, "prefix": prefix, "loss": lv, "quality": quality, "per_image": losses,
                         "skip_new": skip_new, "skip_old": skip_old})
            if (step + 1) % 50 == 0:
                print(f"{step + 1} batches", flush=True)

    armed = [r for r in rows if r["step"] > a.warmup]
    mean_u = lambda rs: float(np.mean([np.mean(r["quality"]) for r in rs])) if rs else None
    mean_p = lambda rs: float(np.mean([r["prefix"] for r in rs])) if rs else None
    summary = {"model": a.model, "sha256": info["sha256"], "crop": a.crop, "batch": a.batch,
               "batches_after_warmup": len(armed), "seed": a.seed}
    for rule in ("old", "new"):
        skipped = [r for r in armed if r[f"skip_{rule}"]]
        summary[rule] = {"skipped_fraction": round(len(skipped) / len(armed), 4),
                         "mean_u_of_skipped": mean_u(skipped), "mean_u_of_all": mean_u(armed),
                         "mean_prefix_of_skipped": mean_p(skipped), "mean_prefix_of_all": mean_p(armed),
                         "loss_share_of_skipped": round(sum(r["loss"] for r in skipped)
                                                        / sum(r["loss"] for r in armed), 4)}
    q = np.concatenate([r["quality"] for r in armed])
    per = np.concatenate([r["per_image"] for r in armed])
    octiles = [per[(q >= i / 8) & (q < (i + 1) / 8)] for i in range(8)]
    summary["per_image_loss_by_u_octile"] = [round(float(o.mean()), 3) if o.size else None for o in octiles]
    print(json.dumps(summary, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "batches": rows}, f, indent=1)


if __name__ == "__main__":
    main()
