#!/usr/bin/env python3
"""What portability costs: the exact entropy model and the fixed-point
reconstruction against the float path they replace, in bytes, PSNR and
decode time.

Each image and quality is coded three ways with the same model:

    float      float32 scale indices (the scale networks' float twin) and
               the float decoder layers: the non-portable path
    scales     exact scale indices, float decoder layers: the same symbols
               on every machine, pixels within a level (last session's codec)
    portable   exact scale indices and the fixed-point decoder
               (convcodec.nets.fixed): the same pixels on every machine,
               what convcodec writes

Each file is decoded with its own arithmetic on this machine. BD-rate (PSNR
against real bytes, over the qualities) of scales and portable against float,
and median decode times (in process, after a warm-up).

    python tools/exact_cost.py --images ../shared/data/kodak --limit 24 --json docs/kodak/exact_cost.json
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
from convcodec.metrics import bd_rate, psnr
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
    ap.add_argument("--qualities", default="1,25,50,75,100")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    net, info = load_model(a.model)
    if not codec.is_portable(net):
        raise SystemExit(f"{info['name']} has no exact scales")
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[: a.limit]
    scales = net.exact()
    exact_index, fixed_net = scales.index, codec.coding_net
    kinds = {"float": (float_index(net, scales), lambda n: n),
             "scales": (exact_index, lambda n: n),
             "portable": (exact_index, fixed_net)}
    qualities = [int(v) for v in a.qualities.split(",")]
    rows = []
    for q in qualities:
        for p in paths:
            rgb = load_image(p)
            r = {"image": os.path.basename(p), "quality": q, "pixels": rgb.shape[0] * rgb.shape[1]}
            for kind, (index, walker) in kinds.items():
                scales.index, codec.coding_net = index, walker
                try:
                    enc = codec.encode(rgb, model=a.model, quality=q)
                    codec.decode(enc.data, model=a.model)                     # warm-up
                    t0 = time.perf_counter()
                    out = codec.decode(enc.data, model=a.model)
                    r[f"{kind}_decode_s"] = time.perf_counter() - t0
                finally:
                    scales.index, codec.coding_net = exact_index, fixed_net
                r[f"{kind}_bytes"] = len(enc.data)
                r[f"{kind}_psnr"] = psnr(rgb, out)
            rows.append(r)
            print(f"q{q} {r['image']}: " + "; ".join(
                f"{k} {r[k + '_bytes']} B {r[k + '_psnr']:.3f} dB {r[k + '_decode_s']:.3f} s" for k in kinds),
                flush=True)

    def curve(kind):
        pts = []
        for q in qualities:
            sel = [r for r in rows if r["quality"] == q]
            pix = sum(r["pixels"] for r in sel)
            pts.append((8 * sum(r[f"{kind}_bytes"] for r in sel) / pix,
                        float(np.mean([r[f"{kind}_psnr"] for r in sel]))))
        return sorted(pts)

    res = {"model": info["name"], "sha256": info["sha256"], "images": len(paths), "qualities": qualities,
           "threads": torch.get_num_threads(), "rows": rows,
           "curves": {k: curve(k) for k in kinds}}
    for k in ("scales", "portable"):
        res[f"bd_rate_{k}_vs_float_pct"] = bd_rate(res["curves"]["float"], res["curves"][k])
        res[f"bytes_{k}_vs_float_pct"] = round(100 * (sum(r[f"{k}_bytes"] for r in rows)
                                                       / sum(r["float_bytes"] for r in rows) - 1), 3)
    for k in kinds:
        res[f"{k}_decode_s_median"] = float(np.median([r[f"{k}_decode_s"] for r in rows]))
    f = res["float_decode_s_median"]
    print(f"\n{info['name']}, {len(paths)} images x qualities {a.qualities}, {res['threads']} threads:")
    for k in ("scales", "portable"):
        bd = res[f"bd_rate_{k}_vs_float_pct"]
        bd = "n/a" if bd is None else f"{bd:+.3f}%"
        print(f"  {k:9} BD-rate vs float {bd}, bytes {res[f'bytes_{k}_vs_float_pct']:+.3f}%, decode "
              f"{res[f'{k}_decode_s_median']:.3f} s vs {f:.3f} s ({100 * (res[f'{k}_decode_s_median'] / f - 1):+.0f}%)")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
