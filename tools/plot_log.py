#!/usr/bin/env python3
"""Plot training logs (runs/NAME/log.jsonl) against wall-clock minutes:
loss, rate (bpp, training crops), PSNR of the full decode and of the prefix
decode. Several runs in one figure compare backbones at equal compute.

    python tools/plot_log.py runs/matnet-vr5 --out docs/kodak/training_vr5.png

Prints, per run, the mean of the last few records and the records closest to
a few common minute marks.
"""
from __future__ import annotations

import argparse
import json
import os


def read_log(run: str) -> list[dict]:
    """Records of a run; a resumed run logs steps again: keep the last of each."""
    path = run if run.endswith(".jsonl") else os.path.join(run, "log.jsonl")
    rows = [json.loads(line) for line in open(path)]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
    return [r for r in rows if "loss" in r]        # records with every update skipped carry no averages


def smooth(v: list[float], k: int = 5) -> list[float]:
    return [sum(v[max(0, i - k + 1):i + 1]) / len(v[max(0, i - k + 1):i + 1]) for i in range(len(v))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (or log.jsonl files)")
    ap.add_argument("--out", default="training.png")
    ap.add_argument("--marks", default="10,30,60,90", help="minutes at which to print each run")
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    keys = (("loss", "loss"), ("bpp", "bpp (training crops)"), ("psnr", "PSNR, all groups (dB)"),
            ("psnr_pre", "PSNR, random prefix (dB)"))
    print("| run | minutes | step | loss | bpp | PSNR | PSNR prefix | patches/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in a.runs:
        rows = read_log(run)
        name = os.path.basename(os.path.normpath(run.replace("log.jsonl", "")))
        mins = [r["minutes"] for r in rows]
        for ax, (k, label) in zip(axes.flat, keys):
            ax.plot(mins, smooth([r[k] for r in rows]), label=name)
            ax.set_xlabel("training minutes"); ax.set_ylabel(label); ax.grid(alpha=0.3)
        for m in [float(x) for x in a.marks.split(",")] + [mins[-1]]:
            if m > mins[-1]:
                continue
            r = min(rows, key=lambda r: abs(r["minutes"] - m))
            print(f"| {name} | {r['minutes']:.1f} | {r['step']} | {r['loss']:.2f} | {r['bpp']:.3f} | "
                  f"{r['psnr']:.2f} | {r['psnr_pre']:.2f} | {r['patches_per_s']} |")
    axes.flat[0].set_yscale("log")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
