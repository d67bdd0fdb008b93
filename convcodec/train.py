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
import shutil
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from .codec import bf16_native
from .nets.layers import unstick_gdn
from .nets.rollout import lambda_t
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
    bf16: bool = True                         # bf16 autocast where the device computes bf16 natively (bf16_native)
    ckpt_minutes: float = 4.0                 # checkpoint period
    seed: int = 0
    init: str = ""                            # start from these weights (model name or .safetensors)
    device: str = "auto"                      # auto (CUDA when present), cpu or cuda
    distortion: str = "mse"                   # mse (lambda * 255^2 * MSE) or msssim (lambda * (1 - MS-SSIM))
    mixed: bool = True                        # decoder sees rounded latents (straight-through), rate from noise
    compile: bool = False                     # torch.compile each block (faster after a minute of compiling)
    snapshots: bool = False                   # also keep each checkpoint's export as snapshots/min-MMM (learning curves)
    engage: bool = False                      # groups appended by --init start engaged (MatNet.engage), not silent
    anneal_from: int = 0                      # first group whose rate term is annealed (0: none; appended groups)
    anneal_beta: float = 0.1                  # that rate term's weight at the start of the run
    anneal_until: float = 0.5                 # fraction of the run by which the weight has risen to 1 (log-linear)
    augment: str = "hflip"                    # hflip (mirror only, as every run before session 29) or
                                              # dihedral-scale (any of the 8 rotations/mirrors, and a random
                                              # downscale of the crop's source region: random_batch)
    prefix_weight: float = 1.0                # weight of the random prefix's cost beside the all-groups one
                                              # (1: every run before session 30; rd_loss says why less)


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


def fit_crop(imgs: list[torch.Tensor], crop: int) -> tuple[list[torch.Tensor], int]:
    """The photos a ``crop``-px square fits in, and how many were left out.
    Why: a smaller photo has no crop to give (one BSDS photo is 213 px high,
    below a 256-px crop); at the default 128 none is left out, so older runs
    draw the same batches."""
    kept = [im for im in imgs if min(im.shape[1:]) >= crop]
    if not kept:
        raise SystemExit(f"no training photo is at least {crop} px on both sides")
    return kept, len(imgs) - len(kept)


AUGMENTS = ("hflip", "dihedral-scale")
MIN_SCALE = 0.5     # dihedral-scale: the smallest downscale of a crop's source region


def random_batch(imgs, n, crop, gen: random.Random, augment: str = "hflip") -> torch.Tensor:
    """``n`` random ``crop``-px squares as floats in 0..1.

    ``hflip`` mirrors half of them. ``dihedral-scale`` (why: 280 photos are
    few for a model that has seen 1.4 million crops of them, so every
    crop should look new) also turns each by a random multiple of 90
    degrees and takes it from a larger region downscaled by a factor s,
    log-uniform in [max(MIN_SCALE, crop / the photo's short side), 1]
    (antialiased bilinear, rounded back to 8 bits as a real photo's pixels
    are). Downscaling also sharpens the crop and hides the JPEG artefacts of
    the training photos, which Kodak does not have. Measured (session 29,
    matnet-vr16 trained on 95 minutes with it): +1.49% BD-rate on Kodak,
    worse at every rate, so it is off by default (docs/campaign.md)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, not {augment!r}")
    out = torch.empty(n, 3, crop, crop, dtype=torch.uint8)
    for i in range(n):
        im = imgs[gen.randrange(len(imgs))]
        _, h, w = im.shape
        r = crop                                   # the side of the region the crop comes from
        if augment == "dihedral-scale":
            lo = max(MIN_SCALE, crop / min(h, w))
            if lo < 1:                             # a photo as small as the crop has no larger region
                r = min(h, w, max(crop, round(crop / lo ** gen.random())))
        y, x = gen.randrange(h - r + 1), gen.randrange(w - r + 1)
        c = im[:, y:y + r, x:x + r]
        if r != crop:
            c = F.interpolate(c[None].float(), size=(crop, crop), mode="bilinear", antialias=True,
                              align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
        if augment == "dihedral-scale":
            c = torch.rot90(c, gen.randrange(4), (1, 2))
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
    return lambda_t(tc.lmbda_first or tc.lmbda, tc.lmbda, t, T)


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


def _init_from(init: str, model, engage: bool = False) -> str:
    """Start from a shipped model. A tensor of the same name and shape is
    copied whole; one of the same name whose shape differs gets the
    overlapping leading block (how matnet-vr's prior heads, which give only
    the mean, came from matnet-mid's), the rest keeping its fresh
    initialisation; tensors the source lacks (new modules) stay fresh.

    Wider layers keep the source's function (Net2Net-style widening): in a
    convolution whose input grew, the weights from the new input channels
    start at zero, and a GDN's new channels start uncoupled from the old
    ones, so the new channels are computed but change nothing until trained
    (tests/test_train.py checks it on g_s and g_a). A transposed convolution
    cannot be widened this way and is refused. Latent groups appended at the
    finest scale start silent (``MatNet.start_silent``). A variable-rate
    source with another lambda range has its quality inputs and gain table
    re-expressed in ours (``MatNet.remap_quality``)."""
    from .nets.layers import GDN
    from .zoo import load_model
    src, info = load_model(init)
    mine_g, their_g = getattr(model.cfg, "groups", None), getattr(src.cfg, "groups", None)
    grown = 0
    if mine_g is not None and their_g is not None and tuple(mine_g) != tuple(their_g):
        # Modules are named by group index, so only groups appended at the
        # finest scale keep every old name's meaning.
        if tuple(mine_g[:-1]) != tuple(their_g[:-1]) or mine_g[-1] < their_g[-1]:
            raise ValueError(f"groups {list(their_g)} -> {list(mine_g)}: only groups added at the "
                             "finest scale (the last entry) can be grown into")
        grown = mine_g[-1] - their_g[-1]
    mine, theirs = model.state_dict(), src.state_dict()
    whole = block = 0
    with torch.no_grad():
        for k, v in theirs.items():
            if k not in mine or mine[k].dim() != v.dim():
                continue
            if mine[k].shape == v.shape:
                mine[k].copy_(v)
                whole += v.numel()
                continue
            owner = model.get_submodule(k.rsplit(".", 1)[0]) if "." in k else model
            if isinstance(owner, torch.nn.ConvTranspose2d):
                raise ValueError(f"{k}: a transposed convolution cannot be widened")
            sl = tuple(slice(0, min(a, b)) for a, b in zip(mine[k].shape, v.shape))
            if isinstance(owner, torch.nn.Conv2d) and k.endswith("weight") and mine[k].shape[1] > v.shape[1]:
                mine[k][:, v.shape[1]:] = 0                  # new inputs: no effect until trained
            if isinstance(owner, GDN) and k.endswith("gamma"):
                n = v.shape[0]
                mine[k][:n, n:] = 0                          # old channels stay uncoupled from new ones
                mine[k][n:, :n] = 0
            mine[k][sl].copy_(v[sl])
            block += mine[k][sl].numel()
    if grown:
        model.start_silent(sum(their_g))
        if engage:
            model.engage(sum(their_g))
    theirs_l, mine_l = getattr(src.cfg, "lambdas", None), getattr(model.cfg, "lambdas", None)
    remapped = (getattr(src.cfg, "rate_knots", 0) and getattr(model.cfg, "rate_knots", 0)
                and tuple(theirs_l) != tuple(mine_l))
    if remapped:
        if not hasattr(model, "remap_quality"):
            raise ValueError(f"lambdas {list(theirs_l)} -> {list(mine_l)}: this backbone cannot remap its quality inputs")
        model.remap_quality(theirs_l)
    total = sum(v.numel() for v in mine.values())
    return (f"initialised {whole} of {total} parameters from {info['name']} ({info['sha256'][:12]}), "
            f"and {block} more as leading blocks of differently shaped tensors"
            + (f"; {grown} new latent group(s) at the finest scale start {'engaged' if engage else 'silent'}"
               if grown else "")
            + (f"; quality remapped from lambdas {list(theirs_l)} to {list(mine_l)}" if remapped else ""))


MAX_STEP_SECONDS = 300.0     # the most one training step counts (see the loop)

# The entropy model's own parameters (quality gains, exact-scale networks)
# learn faster: they are few, start from scratch when a model is extended,
# and a plain rate term moves them slowly at the backbone's learning rate.
FAST_PARAMS, FAST_LR_MULT = ("log_gain", "log_sigma", "prior_mu", "scale_nets."), 5.0


def param_groups(model) -> list[dict]:
    fast, rest = [], []
    for n, p in model.named_parameters():
        (fast if n.startswith(FAST_PARAMS) else rest).append(p)
    groups = [{"params": rest, "lr_mult": 1.0}]
    if fast:
        groups.append({"params": fast, "lr_mult": FAST_LR_MULT})
    return groups


@dataclass
class Run:
    """What a checkpoint restores: the weights, the optimizer and where the run is."""
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: random.Random             # this process's crop and prefix draws
    step: int = 0
    elapsed: float = 0.0           # seconds of training so far (mean over processes)

    def restore(self, ck: dict):
        """Model, EMA and optimizer from a checkpoint (resume, and spike revert)."""
        self.model.load_state_dict(ck["model"]); self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])

    def resume(self, ck: dict, rank: int, dev) -> float | None:
        """Continue from a checkpoint: weights, step, time and this process's
        RNG states. Returns the spike guard's running loss average."""
        self.restore(ck)
        self.step, self.elapsed = ck["step"], ck["elapsed"]
        rngs = ck.get("rngs") or [{"py": ck["py_rng"], "torch": ck["torch_rng"]}]
        if rank < len(rngs):       # same world size: exact resume
            self.gen.setstate(rngs[rank]["py"]); torch.set_rng_state(rngs[rank]["torch"].cpu())
            if dev.type == "cuda" and rngs[rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rngs[rank]["cuda"].cpu())
        else:
            self.gen.seed(1000 * rank + ck["step"])
        return ck["loss_avg"]

    def update_ema(self, decay: float):
        """The shipped weights: an EMA of the model, with a short memory at first."""
        with torch.no_grad():
            d = min(decay, (1 + self.step) / (10 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1 - d)


class SpikeGuard:
    """The paper reverts to older parameters when the cost jumps. We (1) skip
    an update whose loss is far above what such a batch usually costs, or
    whose gradient norm is far above its running average (as vdvae does: Adam
    rescales gradients, so clipping alone does not stop a wild step), and (2)
    after REVERT_AFTER skips in a row, revert to the last checkpoint, since by
    then the weights themselves have gone bad. It is fed numbers that every
    DDP process shares, so all decide alike (or DDP would wait forever).

    What a batch usually costs is a running average of the per-image loss
    per kind of image, averaged over the batch's images; the kind is the
    quality bin (BINS bins of u; one for a single-rate model) and the length
    of the batch's random prefix. Why: a variable-rate image's loss grows
    about 100x from u = 0 to u = 1 (lambda spans 625x), and its prefix term
    shrinks several-fold from one group to seven, so against one running
    average of the batch loss the guard skipped the batches that drew high
    qualities and short prefixes, the top of the curve where the model is
    weakest: 8.3% of updates at 128 px x 8, 15.1% at 256 px x 4 (matnet-vr16's
    run), because fewer images a batch average out less."""
    LOSS_FACTOR, GRAD_FACTOR, REVERT_AFTER = 3.0, 20.0, 20
    BINS, DECAY = 8, 0.98

    def __init__(self, warmup: int, loss_avg=None):
        self.warmup = warmup
        self.reverted(loss_avg)

    def reverted(self, loss_avg):
        """Start from a checkpoint's averages: a dict of them, or a float from
        before the kinds, or None (then learnt afresh, a kind at a time; a
        kind not yet seen is never a spike). Restored averages have long
        settled, so they go on as EMAs."""
        self.loss_avg = dict(loss_avg) if isinstance(loss_avg, dict) else {}
        self.seen = dict.fromkeys(self.loss_avg, 1 << 30)
        self.gn_avg, self.in_row = None, 0

    def kinds(self, quality, prefix: int = 0, n: int = 1) -> list[tuple]:
        """The kind of each image: (prefix, bin of its quality u in [0, 1])
        (quality None: a single-rate model, its ``n`` images all of one kind)."""
        if quality is None:
            return [(prefix, 0)] * n
        return [(prefix, min(int(float(u) * self.BINS), self.BINS - 1)) for u in quality]

    def _armed(self, step: int) -> bool:
        return step > self.warmup

    def expected(self, kinds: list[tuple]) -> float | None:
        """The mean loss a batch of these kinds usually costs (None until every kind was seen)."""
        avgs = [self.loss_avg.get(k) for k in kinds]
        return None if any(a is None for a in avgs) else sum(avgs) / len(avgs)

    def bad_loss(self, step: int, loss: float, kinds: list[tuple] = ((0, 0),)) -> bool:
        if not math.isfinite(loss):
            return self._armed(step)
        exp = self.expected(list(kinds))
        return self._armed(step) and exp is not None and loss > self.LOSS_FACTOR * exp

    def bad_grad(self, step: int, gn: float) -> bool:
        return (self._armed(step) and self.gn_avg is not None
                and (not math.isfinite(gn) or gn > self.GRAD_FACTOR * self.gn_avg))

    def accepted(self, losses: list[float], kinds: list[tuple], gn: float):
        """An update was made: ``losses`` per image, ``kinds`` theirs."""
        # A kind's first 1/(1 - DECAY) images make a plain mean, then an EMA
        # takes over: an EMA started from its first image leans on that one
        # image for dozens of batches, and one lucky image made the next
        # ordinary ones look like spikes.
        for v, k in zip(losses, kinds):
            n = self.seen.get(k, 0) + 1
            self.seen[k] = n
            w = max(1.0 / n, 1 - self.DECAY)
            self.loss_avg[k] = v if n == 1 else (1 - w) * self.loss_avg[k] + w * v
        self.gn_avg = gn if self.gn_avg is None else 0.99 * self.gn_avg + 0.01 * min(gn, 5 * self.gn_avg)
        self.in_row = 0

    def skipped(self) -> bool:
        """Count a skipped update; True when it is time to revert."""
        self.in_row += 1
        return self.in_row >= self.REVERT_AFTER


class TrainLog:
    """Means over every EVERY iterations, one JSON line each (loss, rate,
    distortion, bits per group, PSNR; skipped and reverted updates counted),
    written by the first process only. The means are over the updates made."""
    EVERY = 50
    TERMS = ("loss", "bpp", "dist", "dist_pre", "mse", "mse_pre")

    def __init__(self, path: str, groups: int, patches_per_it: int, write: bool):
        self.file = open(path, "a") if write else None
        self.groups, self.patches_per_it = groups, patches_per_it
        self._reset()

    def _reset(self):
        self.n, self.t0 = 0, time.time()
        self.sums = dict.fromkeys(self.TERMS, 0.0)
        self.counts = {"skipped": 0, "skipped_grad": 0, "reverted": 0}
        self.group_bpp = torch.zeros(self.groups)

    def count(self, what: str):
        self.counts[what] += 1

    def add(self, loss: float, terms: dict):
        self.group_bpp += terms.pop("gbpp").detach().float().cpu()
        for k, v in (("loss", loss), *terms.items()):
            self.sums[k] += float(v)

    def tick(self, step: int, elapsed: float, lr: float):
        self.n += 1
        if self.n < self.EVERY:
            return
        made = self.n - self.counts["skipped"]
        rec = {"step": step, "minutes": round(elapsed / 60, 2), "lr": lr, **self.counts,
               "patches_per_s": round(self.n * self.patches_per_it / (time.time() - self.t0), 2)}
        if made:
            rec.update({k: v / made for k, v in self.sums.items()})
            rec["bpp_groups"] = [round(v, 4) for v in (self.group_bpp / made).tolist()]
            rec["psnr"] = -10 * math.log10(max(rec["mse"], 1e-12))
            rec["psnr_pre"] = -10 * math.log10(max(rec["mse_pre"], 1e-12))
        if self.file:
            self.file.write(json.dumps(rec) + "\n"); self.file.flush()
            print(json.dumps(rec), flush=True)
        self._reset()


def _per_image_distortion(tc: TrainConfig, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``distortion`` per image (B): a variable-rate batch weighs each image
    with its own lambda."""
    if tc.distortion == "mse":
        return 255 ** 2 * (x_hat - x).pow(2).flatten(1).mean(1)
    return torch.stack([distortion(tc, x_hat[i:i + 1], x[i:i + 1]) for i in range(x.shape[0])])


def rate_weights(tc: TrainConfig, T: int, progress: float) -> list[float]:
    """Each group's weight on its rate term: 1, except groups from
    ``anneal_from`` on, whose weight rises log-linearly from ``anneal_beta``
    to 1 over the first ``anneal_until`` of the run (KL annealing, Bowman et
    al. 2016). Why: a group appended to a trained model is closed by its
    rate term faster than the decoder learns to use it (session 26's
    probe); a cheap rate lets decoder and posterior meet first. The weight
    is 1 for the rest of the run, so what ships is trained on the coder's
    real rate."""
    if not tc.anneal_from or tc.anneal_from >= T:
        return [1.0] * T
    p = min(max(progress, 0.0) / tc.anneal_until, 1.0) if tc.anneal_until > 0 else 1.0
    beta = tc.anneal_beta ** (1.0 - p)
    return [1.0 if g < tc.anneal_from else beta for g in range(T)]


def rd_loss(tc: TrainConfig, net, x: torch.Tensor, prefix: int, T: int, gen: random.Random | None = None,
            progress: float = 1.0):
    """One iteration's objective (module docstring): the rate-distortion
    costs of all T groups and of the first ``prefix``. A variable-rate model
    draws a quality u per image, uniform in [0, 1], and weighs that image
    with its lambda (log-spaced over the model's range; the same lambda for
    the prefix). The prefix's cost is charged ``prefix_weight`` times. Why
    less than 1: at one lambda for both, a prefix's distortion (the finer
    groups regenerated from the prior mean) is several times the whole
    file's (matnet-vr16's log: 23 against 29 dB), so at high qualities the
    prefix term is most of the gradient and the all-groups curve, which
    users get from every file, is trained as its side-term. Returns the
    loss and its terms for the log."""
    cfg = getattr(net, "module", net).cfg
    b = x.shape[0]
    quality = None
    if getattr(cfg, "rate_knots", 0):
        gen = gen or random.Random(0)
        quality = torch.tensor([gen.random() for _ in range(b)], device=x.device)
        lo, hi = cfg.lambdas
        lam = lo * (hi / lo) ** quality
        lam_pre = lam
    else:
        lam = torch.full((b,), lambda_at(tc, T, T), device=x.device)
        lam_pre = torch.full((b,), lambda_at(tc, prefix, T), device=x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
        bits, recon = net(x, prefixes=(prefix,), mixed=tc.mixed, quality=quality)
    pixels = x.shape[2] * x.shape[3]
    gbpp = bits.sum(1) / (b * pixels)                     # per group, mean over images
    weights = rate_weights(tc, T, progress)
    charged = bits if min(weights) == 1.0 else bits * torch.tensor(weights, device=bits.device)[:, None]
    bpp_img, bpp_pre_img = charged.sum(0) / pixels, charged[:prefix].sum(0) / pixels
    x_all, x_pre = recon[T].float(), recon[prefix].float()
    d_all, d_pre = _per_image_distortion(tc, x_all, x), _per_image_distortion(tc, x_pre, x)
    per_image = bpp_img + lam * d_all + tc.prefix_weight * (bpp_pre_img + lam_pre * d_pre)
    loss = per_image.mean()
    if tc.distortion == "mse":          # the distortion is 255^2 * MSE already
        mse, mse_pre = d_all.mean().item() / 255 ** 2, d_pre.mean().item() / 255 ** 2
    else:
        with torch.no_grad():
            mse, mse_pre = F.mse_loss(x_all, x).item(), F.mse_loss(x_pre, x).item()
    terms = {"gbpp": gbpp, "bpp": gbpp.sum().item(), "dist": d_all.mean().item(), "dist_pre": d_pre.mean().item(),
             "mse": mse, "mse_pre": mse_pre,
             # for the spike guard, not the log: each image's loss and quality (None: single-rate)
             "per_image": per_image.detach().float().cpu().tolist(),
             "quality": None if quality is None else quality.cpu().tolist()}
    return loss, terms


def _mean_over_processes(v: float, world: int, dev) -> float:
    """A number every process agrees on: the mean over the DDP processes."""
    if world == 1:
        return v
    t = torch.tensor([v], dtype=torch.float64, device=dev)     # NCCL reduces device tensors only
    dist.all_reduce(t)
    return float(t) / world


def _gather_over_processes(values: list, world: int, dev) -> list:
    """Every process's ``values`` (equal lengths), concatenated in rank order."""
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return torch.cat(out).tolist()


def shared_prefix(gen: random.Random, T: int, world: int, dev) -> int:
    """The random prefix length scored this iteration: the first process's
    draw, so every process builds the same graph (DDP needs that)."""
    prefix = gen.randrange(1, T)
    if world > 1:
        pt = torch.tensor([prefix], device=dev)
        dist.broadcast(pt, 0)
        prefix = int(pt)
    return prefix


def _save(run: Run, loss_avg, tc: TrainConfig, model_cfg: dict, out_dir: str, name: str,
          world: int, main_proc: bool, dev):
    """Checkpoint (atomic) and the EMA weights exported as a loadable model.
    Every process hands over its RNG state (a collective); the first writes."""
    mine = {"py": run.gen.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if dev.type == "cuda" else None}
    rngs = [mine]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, mine)
    if not main_proc:
        return
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    tmp = ckpt_path + ".tmp"
    torch.save({"model": run.model.state_dict(), "ema": run.ema.state_dict(), "opt": run.opt.state_dict(),
                "step": run.step, "elapsed": run.elapsed, "loss_avg": loss_avg, "rngs": rngs,
                "world": world, "model_cfg": model_cfg, "train_cfg": asdict(tc)}, tmp)
    os.replace(tmp, ckpt_path)
    card = {"name": name, "training": {"iterations": run.step, "minutes": round(run.elapsed / 60, 1),
                                       "batch": tc.batch * world, "crop": tc.crop, "lambda": tc.lmbda,
                                       "lambda_first": tc.lmbda_first or tc.lmbda,
                                       "distortion": tc.distortion, "augment": tc.augment,
                                       "prefix_weight": tc.prefix_weight,
                                       "init": tc.init or None, "data": list(tc.data)}}
    save_model(run.ema, os.path.join(out_dir, name), card)
    if tc.snapshots:        # what tools/learning_curve.py sweeps, named by the run's own minutes
        os.makedirs(os.path.join(out_dir, "snapshots"), exist_ok=True)
        snap = os.path.join(out_dir, "snapshots", f"min-{round(run.elapsed / 60):03d}")
        for ext in (".safetensors", ".json"):     # the export just written, not a second serialization
            shutil.copyfile(os.path.join(out_dir, name) + ext, snap + ext + ".tmp")
            os.replace(snap + ext + ".tmp", snap + ext)


def train(model_cfg: dict, tc: TrainConfig, out_dir: str, name: str):
    if not tc.prefix_weight >= 0:
        raise SystemExit(f"--prefix-weight must be 0 or more, not {tc.prefix_weight}")
    rank, world, dev = _setup(tc.device)
    main_proc = rank == 0
    if tc.bf16 and not bf16_native(dev):
        tc = replace(tc, bf16=False)
        if main_proc:
            print(f"bf16 autocast off: this {dev.type} has no native bf16 (emulated it is ~50x slower); training in float32")
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    torch.manual_seed(tc.seed + rank)
    model = build_model(config_from_dict(model_cfg)).to(dev)
    ema = build_model(config_from_dict(model_cfg)).to(dev)
    ema.load_state_dict(model.state_dict())
    run = Run(model, ema, torch.optim.Adam(param_groups(model), lr=tc.lr), random.Random(tc.seed * 1000 + rank))
    loss_avg = None
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False, map_location=dev)  # our own file, written below
        loss_avg = run.resume(ck, rank, dev)
        if main_proc:
            print(f"resumed at step {run.step}, {run.elapsed / 60:.1f} min")
    elif tc.init:
        msg = _init_from(tc.init, model, tc.engage)
        ema.load_state_dict(model.state_dict())
        if main_proc:
            print(msg)
    lifted = unstick_gdn(model)
    if lifted:
        unstick_gdn(ema)
        if main_proc:
            print(f"lifted {lifted} GDN couplings from 0 (they could not train: nets.layers.GAMMA_FLOOR)")
    if tc.compile:
        compile_blocks(model)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    imgs, small = fit_crop(load_images(tc.data), tc.crop)
    if small and main_proc:
        print(f"{small} training image(s) smaller than the {tc.crop}-px crop left out")
    if main_proc:
        print(f"{len(imgs)} training images; model {sum(p.numel() for p in model.parameters())} params; "
              f"{world} process(es) on {dev.type}")
    T = model.num_groups
    guard = SpikeGuard(tc.warmup, loss_avg)
    log = TrainLog(os.path.join(out_dir, "log.jsonl"), T, tc.batch * world, main_proc)
    budget, ckpt_every = tc.minutes * 60, tc.ckpt_minutes * 60
    next_ckpt = (run.elapsed // ckpt_every + 1) * ckpt_every
    save = lambda: _save(run, guard.loss_avg, tc, model_cfg, out_dir, name, world, main_proc, dev)

    while run.elapsed < budget:
        t0 = time.time()
        for g in run.opt.param_groups:
            g["lr"] = lr_at(tc, run.step, run.elapsed / budget) * g.get("lr_mult", 1.0)
        x = random_batch(imgs, tc.batch, tc.crop, run.gen, tc.augment).to(dev, non_blocking=True)
        prefix = shared_prefix(run.gen, T, world, dev)
        loss, terms = rd_loss(tc, net, x, prefix, T, run.gen, run.elapsed / budget)
        losses = _gather_over_processes(terms.pop("per_image"), world, dev)
        quality = terms.pop("quality")
        kinds = guard.kinds(None if quality is None else _gather_over_processes(quality, world, dev),
                            prefix, len(losses))
        lv = sum(losses) / len(losses)
        skip = guard.bad_loss(run.step, lv, kinds)
        if not skip:
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip))
            skip = guard.bad_grad(run.step, gn)
            if skip:
                log.count("skipped_grad")  # of the skips, those for the gradient norm
            else:
                run.opt.step()
                guard.accepted(losses, kinds, gn)
                run.update_ema(tc.ema)
        if skip:
            log.count("skipped")
            if guard.skipped() and os.path.exists(ckpt_path):
                ck = torch.load(ckpt_path, weights_only=False, map_location=dev)
                run.restore(ck)
                guard.reverted(ck["loss_avg"])
                log.count("reverted")
                if main_proc:
                    print(f"reverted to the checkpoint of step {ck['step']} after "
                          f"{guard.REVERT_AFTER} skipped updates", flush=True)
        else:
            log.add(lv, terms)
        run.step += 1
        # A step counts at most MAX_STEP_SECONDS: a process paused for a
        # benchmark (SIGSTOP) must not spend the schedule or inflate the card's
        # training time (the first step's compilation stays well inside it).
        run.elapsed += _mean_over_processes(min(time.time() - t0, MAX_STEP_SECONDS), world, dev)
        log.tick(run.step, run.elapsed, run.opt.param_groups[0]["lr"])
        if run.elapsed >= next_ckpt:
            save()
            next_ckpt += ckpt_every
    save()
    if main_proc:
        print("done", run.step)
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
        elif k == "augment":
            ap.add_argument("--augment", choices=AUGMENTS, default=v)
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
