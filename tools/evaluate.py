#!/usr/bin/env python3
"""Kodak rate-distortion of one model at every number of stored groups (a
variable-rate model: at its default quality, and over a quality sweep with
all groups stored).

Bits come from real .cdr files (each prefix is the file `--steps t` writes;
checked byte for byte on the first image), quality from decoding them. Also
checks that every file decodes to the original size and that decoding twice
gives identical pixels, and measures the gap between file bytes and the
model's own rate estimate. Pillow's JPEG (4:2:0, qualities 1..95, averaged
over the same images) gives the JPEG PSNR at the model's bpp.

    python tools/evaluate.py --model convdraw-base --images ../shared/data/kodak --update-card
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

from convcodec import codec, container
from convcodec.image import load_image
from convcodec.metrics import bpp, interp_curve, pillow_roundtrip, psnr
from convcodec.zoo import load_model, resolve

JPEG_QUALITIES = [1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95]
SWEEP = (1, 10, 20, 30, 40, 50, 60, 75, 85, 95, 100)     # qualities of a variable-rate model


def quality_sweep(model, images, qualities, jpeg):
    """Mean bpp and PSNR over the images at each quality, all groups stored."""
    rows = []
    for q in qualities:
        b, p, gaps = [], [], []
        for rgb in images:
            enc = codec.encode(rgb, model=model, quality=q)
            out = codec.decode(enc.data, model=model)
            b.append(bpp(len(enc.data), rgb)); p.append(psnr(rgb, out))
            gaps.append((len(enc.data) - enc.estimated_bytes) / enc.estimated_bytes)
        mb = float(np.mean(b))
        jp = interp_curve([j["bpp"] for j in jpeg], [j["psnr"] for j in jpeg], mb)
        rows.append({"quality": q, "bpp": round(mb, 4), "psnr": round(float(np.mean(p)), 3),
                     "jpeg_psnr": None if jp is None else round(jp, 3),
                     "bytes_vs_estimate_pct": round(100 * float(np.mean(gaps)), 3)})
        print(f"quality {q}: {mb:.4f} bpp, {np.mean(p):.2f} dB", file=sys.stderr)
    return rows


def jpeg_curve(images):
    rows = []
    for q in JPEG_QUALITIES:
        b, p = [], []
        for rgb in images:
            n, dec, _, _ = pillow_roundtrip(rgb, "JPEG", quality=q)
            b.append(bpp(n, rgb)); p.append(psnr(rgb, dec))
        rows.append({"quality": q, "bpp": float(np.mean(b)), "psnr": float(np.mean(p))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--update-card", action="store_true", help="store the table in the model's card")
    ap.add_argument("--qualities", default=",".join(map(str, SWEEP)),
                    help="variable-rate models: the qualities of the sweep (all groups)")
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[: a.limit]
    if not paths:
        sys.exit(f"no PNG images in {a.images}")
    net, info = load_model(a.model)
    T = net.num_groups
    images = [load_image(p) for p in paths]
    per = {t: {"bpp": [], "psnr": [], "bytes": [], "est_bytes": []} for t in range(1, T + 1)}
    enc_s, dec_s = [], []
    for i, (p, rgb) in enumerate(zip(paths, images)):
        t0 = time.perf_counter()
        full = codec.encode(rgb, model=a.model)
        enc_s.append(time.perf_counter() - t0)
        for t in range(1, T + 1):
            cut = container.truncate(full.cdr, t)
            data = container.pack(cut)
            if i == 0:   # a prefix cut is exactly the file `--steps t` writes
                assert data == codec.encode(rgb, model=a.model, steps=t).data, "prefix cut differs"
            t0 = time.perf_counter()
            out = codec.decode(data, model=a.model)
            if t == T:
                dec_s.append(time.perf_counter() - t0)
            assert out.shape == rgb.shape, f"{p}: decoded shape {out.shape}"
            again = codec.decode(data, model=a.model)
            assert np.array_equal(out, again), f"{p}: decoding twice differs at t={t}"
            est = container.overhead_bytes(full.model_name, t) + sum(full.estimated_bits[:t]) / 8
            r = per[t]
            r["bpp"].append(bpp(len(data), rgb)); r["psnr"].append(psnr(rgb, out))
            r["bytes"].append(len(data)); r["est_bytes"].append(est)
        print(f"[{i + 1}/{len(paths)}] {os.path.basename(p)}: "
              f"{per[T]['bpp'][-1]:.3f} bpp {per[T]['psnr'][-1]:.2f} dB (all groups)", file=sys.stderr)
    jpeg = jpeg_curve(images)
    rows = []
    for t in range(1, T + 1):
        r = per[t]
        mb, mp = float(np.mean(r["bpp"])), float(np.mean(r["psnr"]))
        gaps = [(b - e) / e for b, e in zip(r["bytes"], r["est_bytes"])]
        jp = interp_curve([j["bpp"] for j in jpeg], [j["psnr"] for j in jpeg], mb)
        rows.append({"steps": t, "bpp": round(mb, 4), "psnr": round(mp, 3),
                     "jpeg_psnr": None if jp is None else round(jp, 3),
                     "bytes_vs_estimate_pct": round(100 * float(np.mean(gaps)), 3),
                     "bytes_vs_estimate_worst_pct": round(100 * float(max(gaps, key=abs)), 3)})
    sweep = (quality_sweep(a.model, images, [int(q) for q in a.qualities.split(",")], jpeg)
             if codec.is_variable_rate(net) else None)
    res = {"model": info["name"], "sha256": info["sha256"], "images": len(paths),
           **({"quality": codec.DEFAULT_QUALITY, "quality_sweep": sweep} if sweep else {}),
           "rd": rows, "jpeg": jpeg, "jpeg_lowest": jpeg[0],
           "encode_s_median": round(float(np.median(enc_s)), 3),
           "decode_s_median": round(float(np.median(dec_s)), 3),
           "checks": "every prefix decoded to the original size; decoding twice gave identical pixels"}
    print(f"\n{info['name']} on {len(paths)} Kodak images (bits from real .cdr files)")
    print("| steps | bpp | PSNR (dB) | JPEG PSNR at that bpp | file vs estimate (mean / worst) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        lo = jpeg[0]
        jp = (f"none: JPEG's smallest (q{lo['quality']}) is {lo['bpp']:.3f} bpp, {lo['psnr']:.2f} dB"
              if r["jpeg_psnr"] is None else f"{r['jpeg_psnr']:.2f}")
        print(f"| {r['steps']} | {r['bpp']:.4f} | {r['psnr']:.2f} | {jp} | "
              f"{r['bytes_vs_estimate_pct']:+.2f}% / {r['bytes_vs_estimate_worst_pct']:+.2f}% |")
    print(f"median encode {res['encode_s_median']} s, decode {res['decode_s_median']} s (all groups)")
    if sweep:
        print(f"\nquality sweep, all groups stored (the steps table above is at quality {codec.DEFAULT_QUALITY})")
        print("| quality | bpp | PSNR (dB) | JPEG PSNR at that bpp | file vs estimate |")
        print("|---:|---:|---:|---:|---:|")
        for r in sweep:
            jp = "none" if r["jpeg_psnr"] is None else f"{r['jpeg_psnr']:.2f}"
            print(f"| {r['quality']} | {r['bpp']:.4f} | {r['psnr']:.2f} | {jp} | {r['bytes_vs_estimate_pct']:+.2f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.update_card:
        w = resolve(a.model)
        card_path = w.with_suffix(".json")
        card = json.load(open(card_path))
        card["kodak"] = res
        with open(card_path, "w") as f:
            json.dump(card, f, indent=2)
        print(f"updated {card_path}")


if __name__ == "__main__":
    main()
