#!/usr/bin/env python3
"""Ship a training run's EMA weights as a model in models/, with its card.

    python tools/ship_model.py runs/convdraw-base --name convdraw-base --hardware "2-core CPU, bf16"
    python tools/evaluate.py --model convdraw-base --update-card     # then add Kodak numbers

The card records the config, the training data, iterations, wall time,
hardware and throughput (patches per second, from the run's log).
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import torch

from convcodec.zoo import MODELS_DIR, ModelError, build_model, config_from_dict, load_model, save_model


def init_record(init: str | None) -> dict:
    """What a run started from, and that model's own training minutes, so a
    card can state the total compute behind it."""
    if not init:
        return {"init": None, "init_minutes": 0.0}
    try:
        _, info = load_model(init)
    except ModelError:
        return {"init": init, "init_minutes": None}
    tr = info["card"].get("training", {})
    if "wall_minutes_total" in tr:             # a shipped card: its whole lineage
        minutes = tr["wall_minutes_total"]
    else:                                      # a run's own export: its minutes, plus what it started from
        own = tr.get("wall_minutes", tr.get("minutes"))
        before = init_record(tr.get("init"))["init_minutes"]
        minutes = None if own is None or before is None else round(own + before, 1)
    return {"init": f"{info['name']} (sha256 {info['sha256'][:12]})", "init_minutes": minutes}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder with ckpt.pt and log.jsonl")
    ap.add_argument("--name", required=True)
    ap.add_argument("--hardware", default=None, help="what it trained on [default: this machine]")
    ap.add_argument("--notes", default="")
    a = ap.parse_args()
    ck = torch.load(os.path.join(a.run, "ckpt.pt"), weights_only=False)  # our own training checkpoint
    model = build_model(config_from_dict(ck["model_cfg"]))
    model.load_state_dict(ck["ema"])
    log = [json.loads(l) for l in open(os.path.join(a.run, "log.jsonl"))]
    # A resumed run logs the steps after its checkpoint again: keep the last.
    log = sorted({r["step"]: r for r in log}.values(), key=lambda r: r["step"])
    tc = ck["train_cfg"]
    hw = a.hardware or f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    last = log[-1] if log else {}
    lam_first = tc.get("lmbda_first") or tc["lmbda"]
    w = tc.get("prefix_weight", 1.0)      # runs before session 30 had no such option: 1
    variable_rate = bool(ck["model_cfg"].get("rate_knots"))
    if variable_rate:
        lo, hi = model.cfg.lambdas
        objective = ("variable rate: each image of a batch draws a quality u ~ U[0, 1] and is weighed "
                     f"with lambda = {lo} * ({hi} / {lo}) ** u; its loss is bpp + lambda*255^2*MSE for all "
                     f"groups plus {'the same' if w == 1 else f'{w:g} times the same'} for a random prefix "
                     "(rest from the prior mean)")
    else:
        objective = ("sum over t in {random prefix, all groups} of bpp(first t groups) + "
                     "lambda_t*255^2*MSE(first t groups, rest from the prior mean)"
                     f"{'' if w == 1 else f', the prefix term weighted {w:g}'}; lambda_t "
                     f"log-spaced from {lam_first} (t=1) to {tc['lmbda']} (all groups)")
    ini = init_record(tc.get("init"))
    own = round(ck["elapsed"] / 60, 1)
    card = {
        "name": a.name,
        "description": a.notes,
        "training": {
            "data": list(tc["data"]), "never_trained_on": "Kodak",
            "iterations": ck["step"], "batch": tc["batch"], "crop": tc["crop"],
            "patches": ck["step"] * tc["batch"],
            "lambda": None if variable_rate else tc["lmbda"], "lambda_first": None if variable_rate else lam_first,
            "lr": tc["lr"], "init": ini["init"],
            "schedule": f"warm-up {tc['warmup']} it, cosine over {tc['minutes']} min to {tc['lr_final']}x",
            "ema": tc["ema"], "bf16_autocast": tc["bf16"],
            "wall_minutes": own, "hardware": hw,
            "wall_minutes_total": None if ini["init_minutes"] is None else round(own + ini["init_minutes"], 1),
            "patches_per_s_median": float(np.median([r["patches_per_s"] for r in log])) if log else None,
            "final_train_log": {k: last.get(k) for k in ("step", "loss", "bpp", "psnr", "psnr_pre", "bpp_groups")},
            "objective": objective,
            "prefix_weight": w,
            "augment": tc.get("augment", "hflip"),     # runs before session 29 mirrored only
            "seed": tc.get("seed"),
        },
    }
    if variable_rate:
        card["training"]["lambda_range"] = [lo, hi]
    save_model(model, MODELS_DIR / a.name, card)
    print(f"wrote {MODELS_DIR / a.name}.safetensors and .json ({ck['step']} iterations, "
          f"{card['training']['wall_minutes']} min)")


if __name__ == "__main__":
    main()
