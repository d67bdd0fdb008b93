#!/usr/bin/env python3
"""Peak memory and time of compress + decompress at 1, 4 and 12 megapixels.

Each size runs in a fresh process (peak RSS is per process): the image is a
Kodak photo tiled and mirrored up to the size, encoded with all groups and
decoded again. Prints a table and optionally writes JSON.

    python tools/bigimage.py --sizes 1,4,12 --json results/bigimage.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import psnr
mp, src = float(sys.argv[1]), sys.argv[2]
w = int(round((mp * 1e6 * 4 / 3) ** 0.5)); h = int(round(mp * 1e6 / w))
tile = load_image(src)
tile = np.concatenate([tile, tile[:, ::-1]], 1); tile = np.concatenate([tile, tile[::-1]], 0)
reps = (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1)
rgb = np.ascontiguousarray(np.tile(tile, reps)[:h, :w])
codec.load_model(sys.argv[4] if len(sys.argv) > 4 else None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); enc = codec.encode(rgb, model=sys.argv[4] if len(sys.argv) > 4 else None); te = time.perf_counter() - t0
t0 = time.perf_counter(); out = codec.decode(enc.data); td = time.perf_counter() - t0
assert out.shape == rgb.shape
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"megapixels": round(w * h / 1e6, 2), "size": f"{w}x{h}", "encode_s": round(te, 2),
                  "decode_s": round(td, 2), "peak_rss_mib": round(peak / 1024), "bpp": round(8 * len(enc.data) / (w * h), 4),
                  "psnr": round(psnr(rgb, out), 2)}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,12")
    ap.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for mp in a.sizes.split(","):
        cmd = [sys.executable, "-c", CHILD, mp, a.image, str(a.threads)] + ([a.model] if a.model else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{mp} MP failed: {r.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    print("| megapixels | size | encode s | decode s | s per MP (enc+dec) | peak RSS MiB | bpp | PSNR |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per = (r["encode_s"] + r["decode_s"]) / r["megapixels"]
        print(f"| {r['megapixels']} | {r['size']} | {r['encode_s']} | {r['decode_s']} | {per:.2f} | "
              f"{r['peak_rss_mib']} | {r['bpp']} | {r['psnr']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
