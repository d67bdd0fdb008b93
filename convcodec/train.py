"""Training loop: rate-distortion with the coder's own rate, trained for prefixes.

loss = bpp(all groups) + lambda * 255^2 * (MSE(x_hat) + MSE(x_prefix))
where x_prefix is the decode of a random prefix of groups with the rest
regenerated from the prior mean, so that every cut of a file looks good.

Resumable: a checkpoint (model, EMA, optimizer, step, elapsed time, RNG) is
written every few minutes and picked up by re-running the same command.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .zoo import build_model, config_from_dict, save_model


@dataclass
class TrainConfig:
    data: tuple = ("../shared/data/train",)   # folders of training photos (never Kodak)
    crop: int = 128                           # square random crops
    batch: int = 8
    lmbda: float = 0.01                       # lambda: distortion weight (MSE on 0..255)
    lr: float = 1e-3
    warmup: int = 200                         # linear LR warm-up iterations
    minutes: float = 100.0                    # wall-time budget; LR follows a cosine over it
    lr_final: float = 0.02                    # final LR as a fraction of lr
    ema: float = 0.999                        # EMA decay of the shipped weights
    clip: float = 5.0                         # gradient-norm clip
    bf16: bool = True                         # bf16 autocast (about 1.6x on this CPU)
    ckpt_minutes: float = 4.0                 # checkpoint period
    seed: int = 0


def load_images(folders, seed=0) -> list[torch.Tensor]:
    """All training photos in memory as uint8 CHW tensors. Large photos (SUN,
    JPEG-compressed at 1024 px) are also kept downscaled: downscaling hides
    their JPEG artefacts and matches the scale statistics of Kodak."""
    paths = []
    for f in folders:
        paths += sorted(p for p in glob.glob(os.path.join(f, "**", "*"), recursive=True)
                        if p.lower().endswith((".png", ".jpg", ".jpeg")))
    if any("kodak" in p.lower() for p in paths):
        raise SystemExit("refusing to train on Kodak: it is the benchmark")
    imgs = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        versions = [im]
        if max(im.size) > 700:
            versions = [im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
                        for s in (0.5, 0.75)]
        for v in versions:
            imgs.append(torch.from_numpy(np.asarray(v).copy()).permute(2, 0, 1).contiguous())
    return imgs


def random_batch(imgs, n, crop, gen: random.Random) -> torch.Tensor:
    out = torch.empty(n, 3, crop, crop, dtype=torch.uint8)
    for i in range(n):
        im = imgs[gen.randrange(len(imgs))]
        _, h, w = im.shape
        y, x = gen.randrange(h - crop + 1), gen.randrange(w - crop + 1)
        c = im[:, y:y + crop, x:x + crop]
        if gen.random() < 0.5:
            c = c.flip(2)
        out[i] = c
    return out.float().div_(255.0)


def lr_at(tc: TrainConfig, step: int, progress: float) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    p = min(progress, 1.0)
    return tc.lr * (tc.lr_final + (1 - tc.lr_final) * 0.5 * (1 + math.cos(math.pi * p)))


def train(model_cfg: dict, tc: TrainConfig, out_dir: str, name: str):
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    torch.manual_seed(tc.seed)
    model = build_model(config_from_dict(model_cfg))
    ema = build_model(config_from_dict(model_cfg))
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    step, elapsed, gen = 0, 0.0, random.Random(tc.seed)
    loss_avg = None
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)  # our own file, written below
        model.load_state_dict(ck["model"]); ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, elapsed, loss_avg = ck["step"], ck["elapsed"], ck["loss_avg"]
        gen.setstate(ck["py_rng"]); torch.set_rng_state(ck["torch_rng"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min")
    imgs = load_images(tc.data)
    print(f"{len(imgs)} training images; model {sum(p.numel() for p in model.parameters())} params")
    T = model.num_groups
    log = open(os.path.join(out_dir, "log.jsonl"), "a")
    budget = tc.minutes * 60
    last_ckpt, t_log, n_log = time.time(), time.time(), 0
    acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "mse_pre": 0.0, "skipped": 0}

    def save():
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": elapsed, "loss_avg": loss_avg,
                    "py_rng": gen.getstate(), "torch_rng": torch.get_rng_state(),
                    "model_cfg": model_cfg, "train_cfg": asdict(tc)}, tmp)
        os.replace(tmp, ckpt_path)
        save_model(ema, os.path.join(out_dir, name), {
            "name": name, "training": {"iterations": step, "minutes": round(elapsed / 60, 1),
                                       "batch": tc.batch, "crop": tc.crop, "lambda": tc.lmbda,
                                       "data": list(tc.data)}})

    while elapsed < budget:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(tc, step, elapsed / budget)
        x = random_batch(imgs, tc.batch, tc.crop, gen)
        prefix = gen.randrange(1, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
            x_hat, bits, x_pre = model(x, prefix=prefix)
        mse = F.mse_loss(x_hat.float(), x)
        mse_pre = F.mse_loss(x_pre.float(), x)
        bpp = bits.sum() / (x.shape[0] * x.shape[2] * x.shape[3])
        loss = bpp + tc.lmbda * 255 ** 2 * (mse + mse_pre)
        lv = loss.item()
        # Spike guard (the paper reverts on cost jumps): skip updates whose loss
        # is far above the running average rather than let them wreck the weights.
        if loss_avg is not None and step > tc.warmup and (lv > 3 * loss_avg or not math.isfinite(lv)):
            acc["skipped"] += 1
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            opt.step()
            loss_avg = lv if loss_avg is None else 0.99 * loss_avg + 0.01 * lv
            with torch.no_grad():
                d = min(tc.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
        step += 1
        elapsed += time.time() - t0
        acc["loss"] += lv; acc["bpp"] += bpp.item(); acc["mse"] += mse.item(); acc["mse_pre"] += mse_pre.item()
        n_log += 1
        if n_log == 50:
            dt = time.time() - t_log
            rec = {"step": step, "minutes": round(elapsed / 60, 2), "lr": opt.param_groups[0]["lr"],
                   **{k: (v / n_log if k != "skipped" else v) for k, v in acc.items()},
                   "patches_per_s": round(n_log * tc.batch / dt, 2)}
            rec["psnr"] = -10 * math.log10(rec["mse"])
            rec["psnr_pre"] = -10 * math.log10(rec["mse_pre"])
            log.write(json.dumps(rec) + "\n"); log.flush()
            print(json.dumps(rec), flush=True)
            t_log, n_log = time.time(), 0
            acc = {k: 0.0 if k != "skipped" else 0 for k in acc}
        if time.time() - last_ckpt > tc.ckpt_minutes * 60:
            save(); last_ckpt = time.time()
    save()
    print("done", step)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a convcodec model (resumable).")
    ap.add_argument("--out", required=True, help="run folder (checkpoint, log, exported weights)")
    ap.add_argument("--name", required=True, help="model name for the exported weights")
    ap.add_argument("--model-config", default="{}", help="JSON overrides of the backbone config")
    ap.add_argument("--backbone", default="convdraw")
    for k, v in asdict(TrainConfig()).items():
        if k == "data":
            ap.add_argument("--data", nargs="+", default=list(v))
        elif isinstance(v, bool):
            ap.add_argument(f"--{k.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"), default=v)
        else:
            ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    a = ap.parse_args(argv)
    tc = TrainConfig(**{k: (tuple(getattr(a, k)) if k == "data" else getattr(a, k))
                        for k in asdict(TrainConfig())})
    cfg = {"backbone": a.backbone, **json.loads(a.model_config)}
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train(cfg, tc, a.out, a.name)


if __name__ == "__main__":
    main()
