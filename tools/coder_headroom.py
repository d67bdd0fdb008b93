#!/usr/bin/env python3
"""What is left for the range coder: three more contexts, measured on a
version-4 model before building any of them.

Each saving is in bits from the model's own tables (what its files spend,
within 0.03-0.65%), on Kodak, with the offsets and scale indices its encoder
really stores; the networks and the pictures never change. A context is
fitted on training photos (never Kodak) unless it is chosen per image:

    per-q     tables per quality: the model's tables are pooled over every
              quality; here each (group, scale index) table, context tables
              too, is counted separately at the fitted qualities (plus
              ``--prior-weight`` pseudo-counts of the model's own table) and
              interpolated linearly between them for a file's quality
    shift     per image and group, the encoder picks the shift of every
              scale index (-4..4) that codes the group smallest and stores
              it in 4 bits (charged here)
    causal    the first group (1/32 of the image, coded under a constant
              scale per map: no context but the checkerboard's) scanned in
              raster order, each offset under a Laplace whose mean is a
              least-squares predictor from its causal neighbours (W, N, NW,
              NE, WW, NN) and whose scale is linear in their mean |k|,
              fitted per (latent map, quality); charged against what the
              model's tables spend on that group

    python tools/coder_headroom.py --model matnet-vr16c --every 6 --kodak-every 4 --json docs/kodak/coder_headroom.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from fit_tables import QUALITIES, context_tables_from, count, count_context, recording, tables_from  # noqa: E402

from convcodec import codec  # noqa: E402
from convcodec.entropy import CTX_CLASSES, CTX_LEN, NUM_SCALES, TABLE_HALF, TABLE_LEN, CodeTables  # noqa: E402
from convcodec.image import load_image  # noqa: E402
from convcodec.zoo import load_model  # noqa: E402

SHIFTS = range(-4, 5)
SHIFT_BITS = 4
NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))   # causal: W, N, NW, NE, WW, NN


def coded(model: str, rgb: np.ndarray, q: int) -> list:
    """(offsets, scale indices) of every group the encoder stores, each (maps, H, W)."""
    with recording() as seen:
        codec.encode(rgb, model=model, quality=q, device="cpu")
    return seen


def quality_tables(fitted: dict, q: int) -> tuple:
    """Tables for quality ``q``: the fitted qualities' linearly interpolated."""
    qs = sorted(fitted)
    if q <= qs[0] or q >= qs[-1]:
        return fitted[qs[0] if q <= qs[0] else qs[-1]]
    a = max(x for x in qs if x <= q)
    b = min(x for x in qs if x >= q)
    if a == b:
        return fitted[a]
    u = (q - a) / (b - a)
    return tuple((1 - u) * x + u * y for x, y in zip(fitted[a], fitted[b]))


def shift_bits(tables: CodeTables, k: np.ndarray, idx: np.ndarray) -> float:
    """The group's bits under its best shift of every scale index, plus the shift's own bits."""
    best = np.inf
    for s in SHIFTS:
        j = np.clip(idx + s, 0, NUM_SCALES - 1)
        if not np.any(np.abs(k) > TABLE_HALF[j]):      # a shift that would clamp an offset changes the picture
            best = min(best, tables.bits(k, j))
    return best + SHIFT_BITS


def causal_features(k: np.ndarray) -> np.ndarray:
    """(maps, H*W, 6): each offset's causal neighbours in its own map (0 beyond the edge)."""
    m, h, w = k.shape
    p = np.pad(k.astype(np.float64), ((0, 0), (2, 0), (2, 2)))
    return np.stack([p[:, 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] for dy, dx in NEIGHBOURS], -1).reshape(m, h * w, -1)


def spread_features(x: np.ndarray) -> np.ndarray:
    """(n, 2): the mean |k| of each offset's four nearest causal neighbours,
    and 1 (the Laplace scale is linear in these)."""
    return np.stack([np.abs(x[:, :4]).mean(1), np.ones(len(x))], 1)


def fit_causal(offsets: list) -> list:
    """Per latent map: (predictor weights, scale coefficients) from training offsets (maps, H, W)."""
    fits = []
    for m in range(offsets[0].shape[0]):
        x = np.concatenate([causal_features(k)[m] for k in offsets])
        y = np.concatenate([k[m].ravel() for k in offsets]).astype(np.float64)
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        fits.append((w, np.linalg.lstsq(spread_features(x), np.abs(y - x @ w), rcond=None)[0]))
    return fits


def causal_bits(fits: list, k: np.ndarray) -> float:
    """Bits of a first group's offsets (maps, H, W) under the raster-order Laplace."""
    x = causal_features(k)
    total = 0.0
    for m, (w, c) in enumerate(fits):
        y = k[m].ravel().astype(np.float64)
        mu = x[m] @ w
        s = np.maximum(spread_features(x[m]) @ c, 0.05)
        cdf = lambda v: np.where(v < mu, 0.5 * np.exp((v - mu) / s), 1 - 0.5 * np.exp(-(v - mu) / s))  # noqa: E731
        total += -np.log2(np.maximum(cdf(y + 0.5) - cdf(y - 0.5), 2.0 ** -24)).sum()
    return float(total)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="matnet-vr16c", help="a version-4 model")
    ap.add_argument("--data", default="../shared/data/train", help="training photos (never Kodak)")
    ap.add_argument("--every", type=int, default=6, help="use every N-th training photo")
    ap.add_argument("--kodak", default="../shared/data/kodak")
    ap.add_argument("--kodak-every", type=int, default=4, help="use every N-th Kodak image")
    ap.add_argument("--qualities", default="1,10,20,30,40,50,60,75,85,95,100", help="Kodak qualities")
    ap.add_argument("--prior-weight", type=float, default=100.0,
                    help="pseudo-counts of the model's own table in each per-quality table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from convcodec.train import load_images
    net, info = load_model(a.model)
    if not net.cfg.coder_context:
        sys.exit("coder_headroom measures a version-4 model (code and context tables)")
    base = codec.code_tables(net)
    groups = net.num_groups
    rows = np.stack([t.row for t in base])
    contexts = np.stack([t.context.reshape(CTX_CLASSES, CTX_LEN) for t in base])
    t0 = time.perf_counter()

    photos = load_images([a.data])[::a.every]
    counts = {q: np.zeros((groups, TABLE_LEN), np.int64) for q in QUALITIES}
    ctx_counts = {q: np.zeros((groups, CTX_CLASSES, CTX_LEN), np.int64) for q in QUALITIES}
    first = {q: [] for q in QUALITIES}
    for i, im in enumerate(photos):
        rgb = np.ascontiguousarray(im.permute(1, 2, 0).numpy())
        for q in QUALITIES:
            seen = coded(a.model, rgb, q)
            for g, (k, idx) in enumerate(seen):
                count(counts[q][g], k, idx)
                count_context(ctx_counts[q][g], k, idx)
            first[q].append(seen[0][0])
        print(f"[{i + 1}/{len(photos)}] training photos, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    fitted = {q: (tables_from(counts[q], a.prior_weight, rows),
                  context_tables_from(ctx_counts[q], contexts, a.prior_weight)) for q in QUALITIES}
    causal = {q: fit_causal(first[q]) for q in QUALITIES}

    paths = sorted(glob.glob(os.path.join(a.kodak, "*.png")))[::a.kodak_every]
    qualities = [int(q) for q in a.qualities.split(",")]
    sums = {q: dict(model=0.0, per_quality=0.0, shift=0.0, causal=0.0, first_group=0.0) for q in qualities}
    for p in paths:
        rgb = load_image(p)
        for q in qualities:
            seen = coded(a.model, rgb, q)
            rq, cq = quality_tables(fitted, q)
            s = sums[q]
            for g, (k, idx) in enumerate(seen):
                own = base[g].bits(k, idx)
                s["model"] += own
                s["per_quality"] += CodeTables(rq[g], cq[g]).bits(k, idx)
                s["shift"] += shift_bits(base[g], k, idx)
                s["causal"] += own if g else causal_bits(causal[min(QUALITIES, key=lambda x: abs(x - q))], k)
                s["first_group"] += own if g == 0 else 0.0
        print(f"{os.path.basename(p)}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    print(f"{a.model}: saving in % of the model's bits on {len(paths)} Kodak images "
          f"(negative = fewer bits); first group's share of the bits")
    print(f"{'quality':>7} {'per-q':>7} {'shift':>7} {'causal':>7} {'causal/first':>12} {'first':>6}")
    report = []
    for q in qualities:
        s = sums[q]
        r = {"quality": q, "model_bytes_per_image": s["model"] / 8 / len(paths),
             **{v: 100 * (s[v] / s["model"] - 1) for v in ("per_quality", "shift", "causal")},
             "causal_of_first_group": 100 * (s["causal"] - s["model"]) / s["first_group"],
             "first_group_share": 100 * s["first_group"] / s["model"]}
        report.append(r)
        print(f"{q:>7} {r['per_quality']:>+7.2f} {r['shift']:>+7.2f} {r['causal']:>+7.2f} "
              f"{r['causal_of_first_group']:>+12.1f} {r['first_group_share']:>6.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": info["name"], "groups": groups, "training_photos": len(photos), "every": a.every,
                       "fitted_qualities": list(QUALITIES), "prior_weight": a.prior_weight,
                       "kodak_images": [os.path.basename(p) for p in paths], "shifts": list(SHIFTS),
                       "shift_bits": SHIFT_BITS, "threads": a.threads,
                       "minutes": round((time.perf_counter() - t0) / 60, 1), "rows": report}, f, indent=1)


if __name__ == "__main__":
    main()
