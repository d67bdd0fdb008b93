#!/usr/bin/env python3
"""What a spatial context inside a group (checkerboard, He et al. 2021) could
save, measured before building one.

A checkerboard codes half of each latent group first (the anchors) and the
other half with a prior that also sees the anchors' decoded offsets. This
tool fits the simplest such priors on training photos and measures their
bits on Kodak, with the model's real encoder offsets and the coder's own
scales:

    mean    per (group, latent map), a least-squares predictor of a
            non-anchor's offset (bins from the prior mean) from its four
            anchor neighbours' integer offsets; the non-anchor is then
            quantized around the shifted mean
    scale   per (group, number of |anchor neighbours|, capped at 6), the
            multiplier of the coder's scale that minimizes the training bits
    both    the two together

Bits are the Gaussian model's (what the range coder spends within ~0.5%),
over all groups. A learned context network would do better than these
linear fits, but not by an order of magnitude: if they save almost nothing,
the latents left little spatial redundancy inside a group.

    python tools/context_gain.py --model matnet-vr --qualities 25,75 --json docs/kodak/context_gain.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import torch

from convcodec import codec
from convcodec.image import load_image
from convcodec.nets.layers import gaussian_bits
from convcodec.nets.rollout import Coded, quantize, walk
from convcodec.zoo import load_model

MULTS = np.exp(np.linspace(-1.2, 1.2, 25))
NB_CAP = 6


def offsets(net, rgb, quality):
    """Per group: the encoder's unrounded offsets, the stored integers and the
    coder's scale (bins), L x H x W each, for one image."""
    coder = codec.coding_net(net)
    out = []
    with torch.inference_mode():
        x = codec._pad(torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255), net.cfg.stride)
        ctx = codec._begin(net, x, quality)
        state = {}

        def take(g, st, prior, wd):
            mu_q, state["enc"] = coder.posterior(ctx, st, state["enc"])
            off = (mu_q - prior.mu) / wd
            k = quantize(off)
            out.append((off[0].numpy().astype(np.float64), k[0].numpy().astype(np.float64),
                        prior.scale[0].numpy().astype(np.float64)))
            return k.to(torch.int32).numpy()
        st, state["enc"] = codec._start(net, 1, *x.shape[-2:], "cpu", quality)
        walk(coder, st, Coded(take), net.num_groups, coding=True, render=False)
    return out


def neighbours(k):
    """The four anchor neighbours of every position (zero outside), L x H x W x 4,
    and the non-anchor mask ((row + column) odd)."""
    p = np.pad(k, ((0, 0), (1, 1), (1, 1)))
    nb = np.stack([p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]], -1)
    h, w = k.shape[1:]
    return nb, np.add.outer(np.arange(h), np.arange(w)) % 2 == 1


def bits(k, scale):
    return float(gaussian_bits(torch.from_numpy(k), torch.from_numpy(scale)).sum())


def fit(train):
    """Per group: mean predictor coefficients (L x 4) and scale multipliers per neighbour bin."""
    groups = len(train[0])
    coef, mult = [], []
    for g in range(groups):
        xs, ys = [], []
        for res in train:
            off, k, _ = res[g]
            nb, m = neighbours(k)
            xs.append(nb[:, m]); ys.append(off[:, m])
        x, y = np.concatenate(xs, 1), np.concatenate(ys, 1)
        coef.append(np.stack([np.linalg.lstsq(x[l], y[l], rcond=None)[0] for l in range(x.shape[0])]))
        best = []
        for b in range(NB_CAP + 1):
            cost = np.zeros(len(MULTS))
            for res in train:
                _, k, sc = res[g]
                nb, m = neighbours(k)
                sel = m & (np.minimum(np.abs(nb).sum(-1), NB_CAP) == b)
                if sel.any():
                    cost += [bits(k[sel], sc[sel] * c) for c in MULTS]
            best.append(float(MULTS[int(np.argmin(cost))]) if cost.any() else 1.0)
        mult.append(np.array(best))
    return coef, mult


def evaluate(tests, coef, mult):
    tot = {"plain": 0.0, "mean": 0.0, "scale": 0.0, "both": 0.0}
    for res in tests:
        for g, (off, k, sc) in enumerate(res):
            nb, m = neighbours(k)
            pred = np.einsum("lhwf,lf->lhw", nb, coef[g])
            k_mean = np.where(m, np.round(off - pred), k)
            sc_ctx = sc * np.where(m, mult[g][np.minimum(np.abs(nb).sum(-1), NB_CAP).astype(int)], 1.0)
            tot["plain"] += bits(k, sc)
            tot["mean"] += bits(k_mean, sc)
            tot["scale"] += bits(k, sc_ctx)
            tot["both"] += bits(k_mean, sc_ctx)
    return tot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="matnet-vr")
    ap.add_argument("--qualities", default="25,75")
    ap.add_argument("--train", default="../shared/data/train/bsds200", help="photos the predictors are fit on")
    ap.add_argument("--train-count", type=int, default=12)
    ap.add_argument("--crop", type=int, default=256, help="training photos: top-left crop")
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    net, info = load_model(a.model)
    train_imgs = [load_image(p)[:a.crop, :a.crop] for p in sorted(glob.glob(os.path.join(a.train, "*.png")))[:a.train_count]]
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    test_imgs = [load_image(p) for p in paths]
    pixels = sum(im.shape[0] * im.shape[1] for im in test_imgs)
    rows = []
    print(f"{info['name']}: fit on {len(train_imgs)} training crops, measured on {len(test_imgs)} Kodak images")
    print("| quality | bpp | mean context | scale context | both |")
    print("|---:|---:|---:|---:|---:|")
    for q in (int(v) for v in a.qualities.split(",")):
        coef, mult = fit([offsets(net, im, q) for im in train_imgs])
        tot = evaluate([offsets(net, im, q) for im in test_imgs], coef, mult)
        row = {"quality": q, "bpp": tot["plain"] / pixels,
               **{f"saving_{k}_pct": 100 * (1 - tot[k] / tot["plain"]) for k in ("mean", "scale", "both")}}
        rows.append(row)
        print(f"| {q} | {row['bpp']:.4f} | {row['saving_mean_pct']:.2f}% | {row['saving_scale_pct']:.2f}% "
              f"| {row['saving_both_pct']:.2f}% |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": info["name"], "sha256": info["sha256"], "train": a.train,
                       "train_count": len(train_imgs), "images": [os.path.basename(p) for p in paths],
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
