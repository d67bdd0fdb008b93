#!/usr/bin/env python3
"""What bounds the curve at high rates: the quantizer or the autoencoder.

For each image and quality the model's float decoder is fed the encoder's
offsets twice: rounded, as a file stores them, and unrounded (the posterior
means themselves, no quantization at all). The unrounded picture is the
autoencoder's ceiling: no number of bits can do better with these
transforms. Where the rounded PSNR at the top quality is already close to
it, more bits cannot buy quality and only the transforms (capacity,
training) can; where it is far below, the quantization grid is the limit.
(The encoder's means do not depend on the quality, only the grid does, so
the ceiling is one number per image.)

    python tools/ceiling.py --model matnet-vr4 --every 4 --qualities 50,100 --json docs/kodak/ceiling.json
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
from convcodec.metrics import psnr
from convcodec.nets.rollout import quantize, walk
from convcodec.zoo import load_model


class Posterior:
    """A walk strategy: the encoder network's offsets, rounded or not."""

    def __init__(self, net, ctx, enc, rounded: bool):
        self.net, self.ctx, self.enc, self.rounded = net, ctx, enc, rounded

    def __call__(self, g, st, prior, w):
        mu_q, self.enc = self.net.posterior(self.ctx, st, self.enc)
        offset = (mu_q - prior.mu) / w
        return quantize(offset) if self.rounded else offset


def ceiling(model: str, rgb: np.ndarray, quality: int) -> dict:
    """PSNR of the float decode from rounded and from unrounded offsets (all groups)."""
    net, _ = load_model(model)
    q = quality if codec.is_variable_rate(net) else 0
    h, w = rgb.shape[:2]
    x = codec._pad(torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255), net.cfg.stride)
    out = {}
    with torch.inference_mode():
        for rounded in (True, False):
            ctx = codec._begin(net, x, q)
            st, enc = codec._start(net, 1, *x.shape[-2:], "cpu", q)
            # training's view of the quality: one u per image, as a tensor
            if codec.is_variable_rate(net):
                st.u = torch.tensor([codec.quality_u(q)])
            rec = walk(net, st, Posterior(net, ctx, enc, rounded), net.num_groups)
            pic = codec._to_uint8(rec, h, w)
            out["rounded" if rounded else "unrounded"] = psnr(rgb, pic)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=4, help="every N-th image")
    ap.add_argument("--qualities", default="50,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    quals = [int(v) for v in a.qualities.split(",")]
    rows = []
    for p in paths:
        rgb = load_image(p)
        for q in quals:
            rows.append({"image": os.path.basename(p), "quality": q, **ceiling(a.model, rgb, q)})
    print(f"{'quality':>7}  {'rounded (file) dB':>17}  {'unrounded (ceiling) dB':>22}  images: {len(paths)}")
    summary = []
    for q in quals:
        r = [v for v in rows if v["quality"] == q]
        s = {"quality": q, "rounded": float(np.mean([v["rounded"] for v in r])),
             "unrounded": float(np.mean([v["unrounded"] for v in r]))}
        summary.append(s)
        print(f"{q:>7}  {s['rounded']:>17.3f}  {s['unrounded']:>22.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": load_model(a.model)[1]["name"], "images": [os.path.basename(p) for p in paths],
                       "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
