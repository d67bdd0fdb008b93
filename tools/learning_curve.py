#!/usr/bin/env python3
"""The flagship's learning curve: Kodak PSNR at fixed rates against training
time, from the snapshots a run exported (one per checkpoint).

Each snapshot is swept over qualities (all groups stored; bits from real
files) on every ``--every``-th Kodak image; its PSNR at 0.25, 0.5 and 1 bpp
is interpolated on that curve (blank outside it). CPU-hours are the run's
wall minutes times the threads it trained with (``--train-threads 2,76:1``:
two, then one from minute 76), whatever threads this sweep itself runs on.

    python tools/learning_curve.py runs/matnet-vr/snapshots --train-threads 2 \\
        --json docs/kodak/learning_curve.json --plot docs/kodak/learning_curve.png
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re

import numpy as np

from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import interp_curve, psnr
from convcodec.zoo import file_digest

RATES = (0.25, 0.5, 1.0)


def sweep(model: str, images, qualities):
    pts = []
    for q in qualities:
        b, p = [], []
        for rgb in images:
            data = codec.encode(rgb, model=model, quality=q).data
            b.append(8 * len(data) / (rgb.shape[0] * rgb.shape[1]))
            p.append(psnr(rgb, codec.decode(data, model=model)))
        pts.append((float(np.mean(b)), float(np.mean(p))))
    return pts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshots", help="folder of min-<minutes>.safetensors (+ .json) exports")
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=4, help="every N-th Kodak image")
    ap.add_argument("--qualities", default="1,25,50,75,100")
    # Named for what it is: the sweep's own threads do not enter the CPU-hours
    # (--threads, its old name, read as those and was misused once; kept as an alias).
    ap.add_argument("--train-threads", "--threads", dest="threads", default="2",
                    help="threads the run trained with; a run that changed says so as "
                    "THREADS[,FROM_MINUTE:THREADS...], e.g. 2,76:1")
    ap.add_argument("--stride", type=int, default=1, help="every N-th snapshot")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--reuse", default=None, help="an earlier --json of this tool: its rows for the same "
                    "weights (SHA-256), images and qualities are taken instead of measured again")
    a = ap.parse_args()
    snaps = sorted(glob.glob(os.path.join(a.snapshots, "min-*.safetensors")),
                   key=lambda p: float(re.search(r"min-([\d.]+)\.safetensors", p).group(1)))
    snaps = snaps[::a.stride] + ([snaps[-1]] if snaps and (len(snaps) - 1) % a.stride else [])
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    images = [load_image(p) for p in paths]
    qs = [int(q) for q in a.qualities.split(",")]
    first, *changes = a.threads.split(",")
    steps = [(0.0, float(first))] + [(float(m), float(t)) for m, t in (c.split(":") for c in changes)]

    def cpu_hours(minutes: float) -> float:
        """Minutes times the threads the run had at each point."""
        total = 0.0
        for (m0, th), (m1, _) in zip(steps, steps[1:] + [(float("inf"), 0.0)]):
            total += max(0.0, min(minutes, m1) - m0) * th
        return total / 60
    known = {}
    if a.reuse and os.path.exists(a.reuse):
        old = json.load(open(a.reuse))
        if old.get("images") == [os.path.basename(p) for p in paths] and old.get("qualities") == qs:
            known = {r["sha256"]: r for r in old["rows"] if "sha256" in r}
    rows = []
    print(f"{len(images)} Kodak images (every {a.every}th), qualities {a.qualities}, all groups")
    print("| minutes | CPU-hours | " + " | ".join(f"PSNR at {r} bpp" for r in RATES) + " | bpp range |")
    print("|---:|---:|" + "---:|" * len(RATES) + "---|")
    for s in snaps:
        minutes = float(re.search(r"min-([\d.]+)\.safetensors", s).group(1))
        sha = file_digest(s)
        pts = known[sha]["points"] if sha in known else sweep(s, images, qs)
        at = {r: interp_curve([b for b, _ in pts], [p for _, p in pts], r) for r in RATES}
        row = {"snapshot": os.path.basename(s), "sha256": sha, "minutes": minutes,
               "cpu_hours": round(cpu_hours(minutes), 2), "points": pts, **{f"psnr_at_{r}": at[r] for r in RATES}}
        rows.append(row)
        cells = " | ".join("–" if at[r] is None else f"{at[r]:.2f}" for r in RATES)
        print(f"| {minutes:.1f} | {row['cpu_hours']:.2f} | {cells} | {pts[0][0]:.3f}–{pts[-1][0]:.3f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"images": [os.path.basename(p) for p in paths], "qualities": qs,
                       "threads": a.threads, "rows": rows}, f, indent=1)
    if a.plot and rows:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in RATES:
            xs = [row["cpu_hours"] for row in rows if row[f"psnr_at_{r}"] is not None]
            ys = [row[f"psnr_at_{r}"] for row in rows if row[f"psnr_at_{r}"] is not None]
            ax.plot(xs, ys, "-o", ms=3, label=f"{r} bpp")
        ax.set_xlabel("CPU-hours of this run (thread-hours on a 2-core CPU)"); ax.set_ylabel("Kodak PSNR (dB)")
        name = json.load(open(snaps[-1][:-len(".safetensors")] + ".json")).get("name", "model")
        ax.set_title(f"{name} learning curve ({len(images)} Kodak images)")
        ax.grid(alpha=0.3); ax.legend(); fig.tight_layout(); fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()
