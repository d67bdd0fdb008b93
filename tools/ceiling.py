#!/usr/bin/env python3
"""What bounds the curve at high rates: the quantizer or the autoencoder.

For each image and quality the model's float decoder is fed the encoder's
offsets twice: rounded, as a file stores them, and unrounded (the posterior
means themselves, no quantization at all). The unrounded picture is the
autoencoder's ceiling: no number of bits can do better with these
transforms. Where the rounded PSNR at the top quality is already close to
it, more bits cannot buy quality and only the transforms (capacity,
training) can; where it is far below, the quantization grid is the limit.
(Without ``encoder_quality`` the encoder's means do not depend on the
quality, only the grid does, so the ceiling is one number per image.)

``--encoder-u U`` also codes real files whose encoder is fed the quality
u = U instead of the file's own (an ``encoder_quality`` model; the decoder
still uses the file's): what the encoder's quality input is worth.

    python tools/ceiling.py --model matnet-vr4 --every 4 --qualities 1,50,100 --encoder-u 0.5 --json docs/kodak/ceiling_vr4.json
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
from convcodec.nets.matnet import MatNet
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
    h, w = rgb.shape[:2]
    x = codec._pad(torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255), net.cfg.stride)
    out = {}
    with torch.inference_mode():
        for rounded in (True, False):
            ctx = codec._begin(net, x, quality)
            st, enc = codec._start(net, 1, *x.shape[-2:], "cpu", quality)
            rec = walk(net, st, Posterior(net, ctx, enc, rounded), net.num_groups)
            pic = codec._to_uint8(rec, h, w)
            out["rounded" if rounded else "unrounded"] = psnr(rgb, pic)
    return out


def file_with_encoder_u(model: str, rgb: np.ndarray, quality: int, encoder_u: float | None) -> dict:
    """bpp and PSNR of a real file at ``quality`` whose encoder saw the
    quality u = ``encoder_u`` (None: the file's own, as the codec does)."""
    orig = MatNet._quality_map
    # When coding, only the encoder calls _quality_map (g_a, the merges); the
    # decoder's scales come from the exact path and never see it. Patched on
    # the class, not on the model: the codec runs a cached deep copy of it
    # (nets.fixed.coder_twin, whose merges are the ones that see the map), so
    # an override on the instance load_model returns would miss them. This
    # tool is single-threaded and the finally puts the method back.
    if encoder_u is not None:
        MatNet._quality_map = lambda self, u, like: orig(self, encoder_u, like)
    try:
        data = codec.encode(rgb, model=model, quality=quality).data
    finally:
        MatNet._quality_map = orig
    return {"bpp": 8 * len(data) / (rgb.shape[0] * rgb.shape[1]), "psnr": psnr(rgb, codec.decode(data, model=model))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=4, help="every N-th image")
    ap.add_argument("--qualities", default="50,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder-u", type=float, default=None,
                    help="also code files whose encoder sees this u instead of the file's (encoder_quality models)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    quals = [int(v) for v in a.qualities.split(",")]
    rows = []
    for p in paths:
        rgb = load_image(p)
        for q in quals:
            row = {"image": os.path.basename(p), "quality": q, **ceiling(a.model, rgb, q)}
            if a.encoder_u is not None:
                own, other = (file_with_encoder_u(a.model, rgb, q, v) for v in (None, a.encoder_u))
                row.update({"file_bpp": own["bpp"], "file_psnr": own["psnr"],
                            "other_u_bpp": other["bpp"], "other_u_psnr": other["psnr"]})
            rows.append(row)
    print(f"{'quality':>7}  {'rounded (file) dB':>17}  {'unrounded (ceiling) dB':>22}  images: {len(paths)}")
    summary = []
    for q in quals:
        r = [v for v in rows if v["quality"] == q]
        s = {"quality": q, "rounded": float(np.mean([v["rounded"] for v in r])),
             "unrounded": float(np.mean([v["unrounded"] for v in r]))}
        line = f"{q:>7}  {s['rounded']:>17.3f}  {s['unrounded']:>22.3f}"
        if a.encoder_u is not None:
            for k in ("file_bpp", "file_psnr", "other_u_bpp", "other_u_psnr"):
                s[k] = float(np.mean([v[k] for v in r]))
            line += (f"   file: {s['file_bpp']:.4f} bpp {s['file_psnr']:.3f} dB; encoder fed u={a.encoder_u}: "
                     f"{s['other_u_bpp']:.4f} bpp {s['other_u_psnr']:.3f} dB")
        summary.append(s)
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": load_model(a.model)[1]["name"], "images": [os.path.basename(p) for p in paths],
                       "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
