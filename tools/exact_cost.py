#!/usr/bin/env python3
"""What the exact (portable) scale arithmetic costs, against the same scale
networks evaluated in float32: bytes and decode time.

For each image and quality the file is written twice with the same symbols
(the offsets do not depend on the scales): once with the exact fixed-point
scale indices (what convcodec writes), once with indices snapped from the
float32 twin of the same networks (what a float entropy model would code;
not portable). The PSNR is the same by construction, so the BD-rate cost is
the change in bytes. Decode time: each file decoded with its own indices
(the float twin's decodes on the machine that wrote it), the whole decode
and the part spent on scale indices: exact (float64 fixed point, numpy)
against float32 (torch).

    python tools/exact_cost.py --images ../shared/data/kodak --limit 6 --json results/exact_cost.json

What it does not measure: the cost of taking the scales from decoded
symbols instead of from the decoder's float state (the architecture of the
portable prior); that needs a float twin of the model trained as long.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch

from convcodec import codec
from convcodec.image import load_image
from convcodec.nets.exact import ExactScales
from convcodec.zoo import load_model


def float_index(net, scales: ExactScales):
    """ExactScales.index, but through the float32 twin (nets.matnet.ScaleNet)."""
    from convcodec.entropy import INV_LOG_STEP, NUM_SCALES

    def index(g, hist, u, shape):
        b, hs, ws = shape
        offset = scales.constants(u)[1][g].reshape(1, -1, 1, 1)
        if g == 0:
            ls = net.log_sigma0.detach().double().numpy().reshape(1, -1, 1, 1)
            ls = np.broadcast_to(ls, (b, scales.latent, hs, ws))
        else:
            ctx = torch.from_numpy(scales.context(g, hist, u, shape)).float()
            with torch.no_grad():
                ls = net.scale_nets[g - 1](ctx).double().numpy()
        return np.clip(np.round((ls - offset) * INV_LOG_STEP), 0, NUM_SCALES - 1).astype(np.uint8)
    return index


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--qualities", default="10,50,90")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    net, info = load_model(a.model)
    if not codec.is_portable(net):
        raise SystemExit(f"{info['name']} has no exact scales")
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[: a.limit]
    scales = net.exact()
    exact_index = scales.index
    timer = {"s": 0.0}

    def timed(fn):
        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            timer["s"] += time.perf_counter() - t0
            return out
        return run

    rows = []
    for q in [int(v) for v in a.qualities.split(",")]:
        for p in paths:
            rgb = load_image(p)
            r = {"image": os.path.basename(p), "quality": q}
            # Each kind encodes and decodes with its own indices: the float
            # twin's file decodes here, on the machine that wrote it.
            for kind, fn in (("exact", exact_index), ("float", float_index(net, scales))):
                scales.index = timed(fn)
                enc = codec.encode(rgb, model=a.model, quality=q)
                timer["s"] = 0.0
                t0 = time.perf_counter()
                codec.decode(enc.data, model=a.model)
                r[f"{kind}_decode_s"] = time.perf_counter() - t0
                r[f"{kind}_index_s"] = timer["s"]
                r[f"{kind}_bytes"] = len(enc.data)
            scales.index = exact_index
            rows.append(r)
            print(f"q{q} {r['image']}: exact {r['exact_bytes']} B, float {r['float_bytes']} B "
                  f"({100 * (r['exact_bytes'] / r['float_bytes'] - 1):+.2f}%); decode exact "
                  f"{r['exact_decode_s']:.3f} s (indices {r['exact_index_s']:.3f}), float "
                  f"{r['float_decode_s']:.3f} s (indices {r['float_index_s']:.3f})")
    eb, fb = sum(r["exact_bytes"] for r in rows), sum(r["float_bytes"] for r in rows)
    res = {"model": info["name"], "images": len(paths), "rows": rows,
           "bytes_exact_vs_float_pct": round(100 * (eb / fb - 1), 3),
           **{f"{k}_median": float(np.median([r[k] for r in rows]))
              for k in ("exact_index_s", "float_index_s", "exact_decode_s", "float_decode_s")}}
    print(f"\n{info['name']}, {len(paths)} images x qualities {a.qualities}: exact files are "
          f"{res['bytes_exact_vs_float_pct']:+.3f}% bytes against the float twin's; a decode takes "
          f"{res['exact_decode_s_median']:.3f} s exact ({res['exact_index_s_median']:.3f} s of it the scale "
          f"indices) vs {res['float_decode_s_median']:.3f} s float ({res['float_index_s_median']:.3f} s; medians)")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
