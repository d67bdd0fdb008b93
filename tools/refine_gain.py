#!/usr/bin/env python3
"""What encoder-side refinement (``--refine N``) buys on real images.

For each model and image: the plain encode and the refined one, both with
bits from the real .cdr file and PSNR from decoding it, and the encode times.
Prints a table and, with --json, writes the per-image numbers.

    python tools/refine_gain.py --models matnet-vr5 --iters 40 --every 4
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

from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import bpp, psnr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[None])
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=1, help="use every k-th image (sorted by name)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None, help="groups stored [default: all]")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[:: a.every]
    if not paths:
        sys.exit(f"no PNG images in {a.images}")
    out = {"iters": a.iters, "steps": a.steps, "threads": torch.get_num_threads(), "models": {}}
    for m in a.models:
        rows = []
        for p in paths:
            rgb = load_image(p)
            row = {"image": os.path.basename(p)}
            for key, it in (("plain", 0), ("refined", a.iters)):
                t0 = time.perf_counter()
                data = codec.encode(rgb, model=m, steps=a.steps, refine=it).data
                row[key] = {"bpp": bpp(len(data), rgb), "psnr": psnr(rgb, codec.decode(data, model=m)),
                            "encode_s": time.perf_counter() - t0}
            rows.append(row)
            print(f"{m} {row['image']}: " + ", ".join(
                f"{k} {row[k]['bpp']:.4f} bpp {row[k]['psnr']:.2f} dB {row[k]['encode_s']:.1f} s"
                for k in ("plain", "refined")), flush=True)
        mean = {k: {q: float(np.mean([r[k][q] for r in rows])) for q in ("bpp", "psnr")} for k in ("plain", "refined")}
        d_bytes = float(np.mean([r["refined"]["bpp"] / r["plain"]["bpp"] - 1 for r in rows])) * 100
        d_db = mean["refined"]["psnr"] - mean["plain"]["psnr"]
        enc = {k: float(np.median([r[k]["encode_s"] for r in rows])) for k in ("plain", "refined")}
        out["models"][m or "default"] = {"images": rows, "mean": mean, "bytes_change_pct": d_bytes,
                                         "psnr_change_db": d_db, "median_encode_s": enc}
    print(f"\n{len(paths)} images, {a.iters} refinement steps, {out['threads']} thread(s)\n")
    print("| model | plain bpp | plain PSNR | refined bpp | refined PSNR | bytes | PSNR | encode s (plain → refined) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for m, r in out["models"].items():
        print(f"| {m} | {r['mean']['plain']['bpp']:.4f} | {r['mean']['plain']['psnr']:.2f} | "
              f"{r['mean']['refined']['bpp']:.4f} | {r['mean']['refined']['psnr']:.2f} | "
              f"{r['bytes_change_pct']:+.1f}% | {r['psnr_change_db']:+.2f} dB | "
              f"{r['median_encode_s']['plain']:.2f} → {r['median_encode_s']['refined']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
