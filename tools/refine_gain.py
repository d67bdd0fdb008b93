#!/usr/bin/env python3
"""What encoder-side refinement (``--refine N``) buys on real images.

For each model, image and quality: the plain encode and the refined one,
both with bits from the real .cdr file and PSNR (and MS-SSIM) from decoding
it, and the encode times. A variable-rate model is swept over
``--qualities`` (all groups stored); the sweep gives BD-rates of the refined
curve against the plain one and, with ``--anchors`` (tools/compare.py's
results.json for the same images), against its classical codecs. Prints a
table and, with --json, writes every row.

The sweep is slow (each refined encode is ``--iters`` passes of the whole
loop and back), so it splits: ``--shard k/n`` measures every n-th image
from the k-th, and ``--merge`` sums the shards' JSON files into one report.

    python tools/refine_gain.py --models matnet-vr5 --iters 40 --every 4
    python tools/refine_gain.py --models matnet-vr9 --iters 40 --qualities 1,10,20,30,40,50,60,75,85,95,100 \\
        --shard 0/2 --threads 1 --json runs/rg0.json        # and --shard 1/2 beside it, then
    python tools/refine_gain.py --merge runs/rg0.json runs/rg1.json --anchors results/kodak/results.json \\
        --json docs/kodak/refine_sweep_vr9.json
"""
from __future__ import annotations

import argparse
import functools
import glob
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import bd_rate
from convcodec.zoo import load_model


@functools.cache
def _compare():
    """tools/compare.py (loaded once), for its row format, means and BD-rate tables."""
    spec = importlib.util.spec_from_file_location("compare", os.path.join(os.path.dirname(__file__), "compare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(models, paths, qualities, iters, steps):
    """compare.py rows: "convcodec M" and "convcodec M --refine N" for every
    image and setting (quality qQ for a variable-rate model, else "all")."""
    compare, rows = _compare(), []
    for m in models:
        net, info = load_model(m)
        qs = (qualities or [codec.DEFAULT_QUALITY]) if codec.is_variable_rate(net) else [None]
        for p in paths:
            rgb, img = load_image(p), os.path.basename(p)
            for q in qs:
                line = []
                for name, it in ((f"convcodec {info['name']}", 0), (f"convcodec {info['name']} --refine {iters}", iters)):
                    t0 = time.perf_counter()
                    data = codec.encode(rgb, model=m, steps=steps, refine=it, quality=q).data
                    te = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    dec = codec.decode(data, model=m)
                    rows.append(compare.row(name, "all" if q is None else f"q{q}", img, rgb, len(data), dec, te,
                                            time.perf_counter() - t0, model=info["name"], quality=q, iters=it))
                    line.append(f"{rows[-1]['bpp']:.4f} bpp {rows[-1]['psnr']:.2f} dB {te:.1f} s")
                print(f"{info['name']} {img} q{q}: plain {line[0]}, refined {line[1]}", flush=True)
    return rows


def summarize(rows, anchor_rows=()):
    """Per model: the per-image pairs, the mean of each setting plain and
    refined, the mean changes, and BD-rates (refined vs plain; both against
    the anchors when their rows are given)."""
    compare = _compare()
    agg = compare.aggregate(list(rows) + list(anchor_rows))
    out = {}
    for plain in sorted({r["codec"] for r in rows if not r["iters"]}):
        refined = next(c for c in {r["codec"] for r in rows if r["iters"]} if c.startswith(plain + " --refine"))
        by = {(r["image"], r["setting"]): r for r in rows if r["codec"] == plain}
        pairs = [{"image": r["image"], "setting": r["setting"],
                  "plain": {k: by[(r["image"], r["setting"])][k] for k in ("bpp", "psnr", "ms_ssim", "encode_s")},
                  "refined": {k: r[k] for k in ("bpp", "psnr", "ms_ssim", "encode_s")}}
                 for r in rows if r["codec"] == refined and (r["image"], r["setting"]) in by]
        mean = {k: {v: float(np.mean([p[k][v] for p in pairs])) for v in ("bpp", "psnr")} for k in ("plain", "refined")}
        res = {"plain": agg[plain], "refined": agg[refined], "images": pairs, "mean": mean,
               "bytes_change_pct": float(np.mean([p["refined"]["bpp"] / p["plain"]["bpp"] - 1 for p in pairs])) * 100,
               "psnr_change_db": mean["refined"]["psnr"] - mean["plain"]["psnr"],
               "median_encode_s": {k: float(np.median([p[k]["encode_s"] for p in pairs])) for k in ("plain", "refined")}}
        if len(agg[plain]) > 1:
            res["bd_rate_vs_plain"] = bd_rate([(p["bpp"], p["psnr"]) for p in agg[plain]],
                                              [(p["bpp"], p["psnr"]) for p in agg[refined]])
        out[plain.removeprefix("convcodec ")] = res
    bd = compare.bd_table(agg) if anchor_rows else None
    return out, bd


def plot(path, models, anchor_rows, n_images):
    """PSNR against bpp: each model plain and refined, and the anchors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 6))
    for name, pts in _compare().aggregate(list(anchor_rows)).items():
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], "-s", ms=3, lw=1.2, label=name)
    for m, r in models.items():
        for key, style in (("plain", "-o"), ("refined", "-^")):
            ax.plot([p["bpp"] for p in r[key]], [p["psnr"] for p in r[key]], style, ms=4, lw=2,
                    label=f"{m}" if key == "plain" else f"{m} --refine")
    ax.set_xlim(0, 1.8); ax.set_xlabel("bits per pixel"); ax.set_ylabel("PSNR RGB (dB)")
    ax.grid(alpha=0.3); ax.legend(fontsize=7)
    ax.set_title(f"Encoder refinement, {n_images} images: PSNR vs rate")
    fig.tight_layout(); fig.savefig(path, dpi=130); plt.close(fig)


def anchors_of(path, images):
    """The classical codecs' rows of a tools/compare.py run on the same images."""
    res = json.load(open(path))
    if sorted(res["images"]) != sorted(images):
        sys.exit(f"{path} was measured on other images than these ({len(res['images'])} vs {len(images)})")
    return [r for r in res["rows"] if r["codec"] in _compare().ANCHOR_CODECS]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[None])
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=1, help="use every k-th image (sorted by name)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None, help="groups stored [default: all]")
    ap.add_argument("--qualities", default=None,
                    help="variable-rate models: comma-separated qualities to sweep [default: the default quality]")
    ap.add_argument("--shard", default="0/1", help="k/n: measure every n-th image from the k-th")
    ap.add_argument("--merge", nargs="+", default=None, help="JSON files of shards to merge instead of measuring")
    ap.add_argument("--anchors", default=None, help="tools/compare.py's results.json for the same images")
    ap.add_argument("--travel", type=float, default=None,
                    help="the offsets' total travel in bins at every rate (convcodec.refine.TRAVEL), for tuning")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="write a PSNR-vs-bpp plot (PNG) here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.travel:
        import convcodec.refine
        convcodec.refine.TRAVEL = (a.travel, a.travel)
    if a.merge:
        parts = [json.load(open(f)) for f in a.merge]
        if len({(p["iters"], p.get("travel")) for p in parts}) > 1:
            sys.exit("these shards were refined with different --iters or --travel")
        rows = [r for p in parts for r in p["rows"]]
        iters, threads, a.travel = parts[0]["iters"], parts[0]["threads"], parts[0].get("travel")
    else:
        k, n = map(int, a.shard.split("/"))
        paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[:: a.every][k::n]
        if not paths:
            sys.exit(f"no PNG images in {a.images}")
        qualities = [int(q) for q in a.qualities.split(",")] if a.qualities else None
        rows = measure(a.models, paths, qualities, a.iters, a.steps)
        iters, threads = a.iters, torch.get_num_threads()
    images = sorted({r["image"] for r in rows})
    anchor_rows = anchors_of(a.anchors, images) if a.anchors else []
    models, bd = summarize(rows, anchor_rows)
    out = {"iters": iters, "steps": a.steps, "threads": threads, "travel": a.travel, "images": images, "models": models,
           "bd_rate": bd, "rows": rows}
    print(f"\n{len(images)} images, {iters} refinement steps, {threads} thread(s)\n")
    print("| model | setting | plain bpp | plain PSNR | refined bpp | refined PSNR | encode s (plain → refined) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for m, r in models.items():
        for p, q in zip(r["plain"], sorted(r["refined"], key=lambda q: [p["setting"] for p in r["plain"]].index(q["setting"]))):
            print(f"| {m} | {p['setting']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {q['bpp']:.4f} | {q['psnr']:.2f} | "
                  f"{p['encode_s']:.2f} → {q['encode_s']:.1f} |")
        print(f"\n{m}: bytes {r['bytes_change_pct']:+.1f}%, PSNR {r['psnr_change_db']:+.2f} dB (means over images"
              f" and settings)" + (f"; BD-rate refined vs plain {r['bd_rate_vs_plain']:+.2f}%"
                                    if r.get("bd_rate_vs_plain") is not None else ""))
    if bd:
        print("\nBD-rate (PSNR) against the anchors of " + a.anchors)
        for vs, vals in bd["psnr"].items():
            print(f"  {vs}: " + ", ".join(f"{c.removeprefix('convcodec ')} {v:+.1f}%"
                                          for c, v in vals.items() if c.startswith("convcodec") and v is not None))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if a.plot:
        plot(a.plot, models, anchor_rows, len(images))


if __name__ == "__main__":
    main()
