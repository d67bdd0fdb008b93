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

from convcodec.zoo import MODELS_DIR, build_model, config_from_dict, save_model


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
    tc = ck["train_cfg"]
    hw = a.hardware or f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    last = log[-1] if log else {}
    card = {
        "name": a.name,
        "description": a.notes,
        "training": {
            "data": list(tc["data"]), "never_trained_on": "Kodak",
            "iterations": ck["step"], "batch": tc["batch"], "crop": tc["crop"],
            "patches": ck["step"] * tc["batch"], "lambda": tc["lmbda"], "lr": tc["lr"],
            "schedule": f"warm-up {tc['warmup']} it, cosine over {tc['minutes']} min to {tc['lr_final']}x",
            "ema": tc["ema"], "bf16_autocast": tc["bf16"],
            "wall_minutes": round(ck["elapsed"] / 60, 1), "hardware": hw,
            "patches_per_s_median": float(np.median([r["patches_per_s"] for r in log])) if log else None,
            "final_train_log": {k: last.get(k) for k in ("step", "loss", "bpp", "psnr", "psnr_pre")},
            "objective": "bpp + lambda*255^2*(MSE(all groups) + MSE(random prefix, rest from prior mean))",
        },
    }
    save_model(model, MODELS_DIR / a.name, card)
    print(f"wrote {MODELS_DIR / a.name}.safetensors and .json ({ck['step']} iterations, "
          f"{card['training']['wall_minutes']} min)")


if __name__ == "__main__":
    main()
