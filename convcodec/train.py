"""Training loop: rate-distortion with the coder's own rate, trained for prefixes.

A file cut after t groups is a codec operating point of its own, with rate
R_<=t (bits of the first t groups) and distortion D_t (the decode of those
groups, the rest regenerated from the prior mean). Each iteration adds the
rate-distortion cost of two such points, all groups and a random prefix t:

    loss = sum over t in {t_random, T} of  R_<=t/pixels + lambda_t * 255^2 * MSE_t

with lambda_t log-spaced from ``lmbda_first`` (one group) to ``lmbda`` (all
groups). A rising lambda_t is what orders the information from global to
fine: a bit in group s is paid by every prefix that contains it but bought
only by distortion weighted with the lambdas of those prefixes, so early
groups carry what is worth most per bit. (With one lambda for every prefix,
the first groups take nearly everything and the later ones go empty.)

Resumable: a checkpoint (model, EMA, optimizer, step, elapsed time, every
process's RNG) is written every few minutes and picked up by re-running the
same command. Runs on the CPU and on CUDA with bf16 autocast, and on several
GPUs (or CPU processes) with DDP under torchrun, same script:

    torchrun --nproc_per_node 8 tools/train.py --out runs/NAME --name NAME ...

(--batch is per process; the card records the global batch.)
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
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from .zoo import build_model, config_from_dict, save_model


@dataclass
class TrainConfig:
    data: tuple = ("../shared/data/train",)   # folders of training photos (never Kodak)
    crop: int = 128                           # square random crops
    batch: int = 8
    lmbda: float = 0.01                       # lambda_T: distortion weight (MSE on 0..255), all groups
    lmbda_first: float = 0.0                  # lambda_1 for a one-group file; 0 = same as lmbda
    lr: float = 1e-3
    warmup: int = 200                         # linear LR warm-up iterations
    minutes: float = 100.0                    # wall-time budget; LR follows a cosine over it
    lr_final: float = 0.02                    # final LR as a fraction of lr
    ema: float = 0.999                        # EMA decay of the shipped weights
    clip: float = 5.0                         # gradient-norm clip
    bf16: bool = True                         # bf16 autocast (about 1.6x on this CPU)
    ckpt_minutes: float = 4.0                 # checkpoint period
    seed: int = 0
    init: str = ""                            # start from these weights (model name or .safetensors)
    device: str = "auto"                      # auto (CUDA when present), cpu or cuda
    distortion: str = "mse"                   # mse (lambda * 255^2 * MSE) or msssim (lambda * (1 - MS-SSIM))
    mixed: bool = True                        # decoder sees rounded latents (straight-through), rate from noise
    compile: bool = False                     # torch.compile each block (faster after a minute of compiling)


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


def lambda_at(tc: TrainConfig, t: int, T: int) -> float:
    """lambda_t, log-spaced from lmbda_first (t = 1) to lmbda (t = T)."""
    lo = tc.lmbda_first or tc.lmbda
    return lo * (tc.lmbda / lo) ** ((t - 1) / max(1, T - 1))


def _setup(device: str):
    """(rank, world size, device). One process per GPU under torchrun (DDP over
    NCCL); on CPU, torchrun's processes share the cores (DDP over gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def compile_blocks(module: torch.nn.Module):
    """torch.compile every block of a model in place: each child module, and
    each member of a ModuleList. In place, so the state_dict keys (the
    checkpoints, the shipped weights) do not change. Measured on this 2-core
    CPU under load: 1.1-1.3x more patches/s after 10-40 s of compiling. The
    rollout over groups stays eager: compiled whole it was faster still
    (about 1.4x for the Conv DRAW) but recompiled for every prefix length,
    two minutes or more each here."""
    import torch._dynamo
    # Blocks of one class share one forward(); each instance is a recompile.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            compile_blocks(child)
        else:
            child.compile()


def distortion(tc: TrainConfig, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The distortion term lambda_t multiplies: 255^2 * MSE, or 1 - MS-SSIM
    (pytorch-msssim, five scales; on crops under 161 px its 11-tap window is
    narrowed so the coarsest scale still fits)."""
    if tc.distortion == "mse":
        return 255 ** 2 * F.mse_loss(x_hat, x)
    if tc.distortion != "msssim":
        raise ValueError(f"unknown distortion {tc.distortion!r} (mse or msssim)")
    from pytorch_msssim import ms_ssim
    side = min(x.shape[-2:])
    win = 11 if side > 160 else max(3, 2 * (((side - 1) // 16 + 1) // 2) - 1)
    return 1 - ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0, win_size=win)


def _restore_weights(ck: dict, model, ema, opt):
    """Model, EMA and optimizer from a checkpoint (resume, and spike revert)."""
    model.load_state_dict(ck["model"]); ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])


def _resume(ck: dict, model, ema, opt, gen: random.Random, rank: int, dev):
    """Load a checkpoint into the run; returns (step, elapsed, loss_avg)."""
    _restore_weights(ck, model, ema, opt)
    rngs = ck.get("rngs") or [{"py": ck["py_rng"], "torch": ck["torch_rng"]}]
    if rank < len(rngs):       # same world size: exact resume
        gen.setstate(rngs[rank]["py"]); torch.set_rng_state(rngs[rank]["torch"].cpu())
        if dev.type == "cuda" and rngs[rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rngs[rank]["cuda"].cpu())
    else:
        gen.seed(1000 * rank + ck["step"])
    return ck["step"], ck["elapsed"], ck["loss_avg"]


def _init_from(init: str, model) -> str:
    """Start from a shipped model: every weight for the same backbone (or an
    error), the parts with the same name and shape (the g_a / g_s
    transforms) for another backbone, the rest trained from scratch."""
    from .zoo import load_model
    src, info = load_model(init)
    mine, theirs = model.state_dict(), src.state_dict()
    shared = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    if src.cfg.backbone == model.cfg.backbone:
        model.load_state_dict(theirs)
    else:
        model.load_state_dict(shared, strict=False)
    n = sum(v.numel() for v in shared.values())
    return (f"initialised {n} of {sum(v.numel() for v in mine.values())} parameters "
            f"from {info['name']} ({info['sha256'][:12]})")


def train(model_cfg: dict, tc: TrainConfig, out_dir: str, name: str):
    rank, world, dev = _setup(tc.device)
    main_proc = rank == 0
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    torch.manual_seed(tc.seed + rank)
    model = build_model(config_from_dict(model_cfg)).to(dev)
    ema = build_model(config_from_dict(model_cfg)).to(dev)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    step, elapsed, gen = 0, 0.0, random.Random(tc.seed * 1000 + rank)
    loss_avg, gn_avg, skips_in_row = None, None, 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False, map_location=dev)  # our own file, written below
        step, elapsed, loss_avg = _resume(ck, model, ema, opt, gen, rank, dev)
        if main_proc:
            print(f"resumed at step {step}, {elapsed / 60:.1f} min")
    elif tc.init:
        msg = _init_from(tc.init, model)
        ema.load_state_dict(model.state_dict())
        if main_proc:
            print(msg)
    if tc.compile:
        compile_blocks(model)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    imgs = load_images(tc.data)
    if main_proc:
        print(f"{len(imgs)} training images; model {sum(p.numel() for p in model.parameters())} params; "
              f"{world} process(es) on {dev.type}")
    T = model.num_groups
    log = open(os.path.join(out_dir, "log.jsonl"), "a") if main_proc else None
    budget, ckpt_every = tc.minutes * 60, tc.ckpt_minutes * 60
    next_ckpt = (elapsed // ckpt_every + 1) * ckpt_every
    t_log, n_log = time.time(), 0
    acc = {"loss": 0.0, "bpp": 0.0, "dist": 0.0, "dist_pre": 0.0, "mse": 0.0, "mse_pre": 0.0,
           "skipped": 0, "reverted": 0}
    counts = ("skipped", "reverted")
    group_bpp = torch.zeros(T)

    def save():
        # Every process hands over its RNG state (collective); the first writes.
        mine = {"py": gen.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if dev.type == "cuda" else None}
        rngs = [mine]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, mine)
        if not main_proc:
            return
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": elapsed, "loss_avg": loss_avg, "rngs": rngs,
                    "world": world, "model_cfg": model_cfg, "train_cfg": asdict(tc)}, tmp)
        os.replace(tmp, ckpt_path)
        save_model(ema, os.path.join(out_dir, name), {
            "name": name, "training": {"iterations": step, "minutes": round(elapsed / 60, 1),
                                       "batch": tc.batch * world, "crop": tc.crop, "lambda": tc.lmbda,
                                       "lambda_first": tc.lmbda_first or tc.lmbda,
                                       "distortion": tc.distortion,
                                       "init": tc.init or None, "data": list(tc.data)}})

    while elapsed < budget:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(tc, step, elapsed / budget)
        x = random_batch(imgs, tc.batch, tc.crop, gen).to(dev, non_blocking=True)
        prefix = gen.randrange(1, T)
        if world > 1:   # every process must score the same prefix (same graph for DDP)
            pt = torch.tensor([prefix], device=dev)
            dist.broadcast(pt, 0)
            prefix = int(pt)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tc.bf16):
            bits, recon = net(x, prefixes=(prefix,), mixed=tc.mixed)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        gbpp = bits / pixels
        d_all, d_pre = distortion(tc, recon[T].float(), x), distortion(tc, recon[prefix].float(), x)
        bpp = gbpp.sum()
        loss = (bpp + lambda_at(tc, T, T) * d_all
                + gbpp[:prefix].sum() + lambda_at(tc, prefix, T) * d_pre)
        # One number per iteration is shared by all processes: the mean loss
        # (for the spike guard, which must decide alike everywhere or DDP
        # would wait forever) and the mean seconds (so budgets agree).
        stats = torch.tensor([loss.item(), 0.0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
            stats /= world
        lv = float(stats[0])
        # Spike guards. The paper reverts to older parameters when the cost
        # jumps; we (1) skip an update whose loss is far above the running
        # average, or whose gradient norm is far above its running average
        # (as vdvae does: Adam rescales gradients, so clipping alone does not
        # stop a wild step), and (2) after many skips in a row, revert to the
        # last checkpoint, since by then the weights themselves have gone bad.
        # All decisions use numbers that every DDP process shares.
        guarded = loss_avg is not None and step > tc.warmup
        if guarded and (lv > 3 * loss_avg or not math.isfinite(lv)):
            skip = True
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip))
            skip = guarded and gn_avg is not None and (not math.isfinite(gn) or gn > 20 * gn_avg)
            if not skip:
                opt.step()
                loss_avg = lv if loss_avg is None else 0.99 * loss_avg + 0.01 * lv
                gn_avg = gn if gn_avg is None else 0.99 * gn_avg + 0.01 * min(gn, 5 * gn_avg)
                with torch.no_grad():
                    d = min(tc.ema, (1 + step) / (10 + step))
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, 1 - d)
        if skip:
            acc["skipped"] += 1
            skips_in_row += 1
            if skips_in_row >= 20 and os.path.exists(ckpt_path):
                ck = torch.load(ckpt_path, weights_only=False, map_location=dev)
                _restore_weights(ck, model, ema, opt)
                loss_avg, gn_avg, skips_in_row = ck["loss_avg"], None, 0
                acc["reverted"] += 1
                if main_proc:
                    print(f"reverted to the checkpoint of step {ck['step']} after 20 skipped updates", flush=True)
        else:
            skips_in_row = 0
        step += 1
        dt = torch.tensor([time.time() - t0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(dt)
            dt /= world
        elapsed += float(dt)
        n_log += 1
        if not skip:   # averages are over the updates made; skips are counted
            group_bpp += gbpp.detach().float().cpu()
            if tc.distortion == "mse":      # the distortion is 255^2 * MSE already
                mse, mse_pre = d_all.item() / 255 ** 2, d_pre.item() / 255 ** 2
            else:
                with torch.no_grad():
                    mse, mse_pre = F.mse_loss(recon[T].float(), x).item(), F.mse_loss(recon[prefix].float(), x).item()
            acc["loss"] += lv; acc["bpp"] += bpp.item(); acc["dist"] += d_all.item()
            acc["dist_pre"] += d_pre.item(); acc["mse"] += mse; acc["mse_pre"] += mse_pre
        if n_log == 50:
            dt_log = time.time() - t_log
            made = n_log - acc["skipped"]
            rec = {"step": step, "minutes": round(elapsed / 60, 2), "lr": opt.param_groups[0]["lr"],
                   **{k: acc[k] for k in counts},
                   "patches_per_s": round(n_log * tc.batch * world / dt_log, 2)}
            if made:
                rec.update({k: v / made for k, v in acc.items() if k not in counts})
                rec["bpp_groups"] = [round(v, 4) for v in (group_bpp / made).tolist()]
                rec["psnr"] = -10 * math.log10(max(rec["mse"], 1e-12))
                rec["psnr_pre"] = -10 * math.log10(max(rec["mse_pre"], 1e-12))
            if main_proc:
                log.write(json.dumps(rec) + "\n"); log.flush()
                print(json.dumps(rec), flush=True)
            t_log, n_log = time.time(), 0
            acc = {k: 0.0 if k not in counts else 0 for k in acc}
            group_bpp.zero_()
        if elapsed >= next_ckpt:
            save()
            next_ckpt += ckpt_every
    save()
    if main_proc:
        print("done", step)
    if world > 1:
        # Tear down in order: the DDP wrapper (its reducer holds the process
        # group), then, once every process is here, the group itself. Out of
        # order, gloo's threads abort the process at exit now and then.
        del net
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a convcodec model (resumable).")
    ap.add_argument("--out", required=True, help="run folder (checkpoint, log, exported weights)")
    ap.add_argument("--name", required=True, help="model name for the exported weights")
    ap.add_argument("--model-config", default="{}", help="JSON overrides of the backbone config")
    ap.add_argument("--backbone", default="convdraw")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // world))
    train(cfg, tc, a.out, a.name)
    if world > 1:
        leave_distributed()


def leave_distributed():
    """End a DDP process that has finished (checkpoint written, group
    destroyed) without running the interpreter's finalizers: DDP's reducer
    stays alive through its hooks on the parameters, and destroying it during
    finalization makes gloo abort the process now and then ("terminate
    called without an active exception", seen about 1 run in 8 here; see
    pytorch/pytorch#179291), which would turn a finished run into a failed one."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
