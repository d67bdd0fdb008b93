#!/usr/bin/env python3
"""What a narrower fixed point would cost in `g_s`, measured before building it.

The portable decoder (convcodec.nets.fixed) runs g_s with 24-bit
activations and 16-bit weights, summed exactly in float64: on a 2-core CPU
float64 products run at about half the speed of float32 ones, and g_s is
most of a decode. With fewer bits the same exactness holds in float32 (every
partial sum an integer below 2^24) or in int8/int32 products. This tool
measures, without retraining (post-training quantization):

* the PSNR change when g_s's convolution inputs are rounded to A-bit
  integers (one scale per layer: the largest |input| seen on these images)
  and its weights to W-bit integers (one scale per output channel), on the
  top-down states of real decodes;
* for each layer, the worst partial sum in integer units (sum of |w| per
  output times the largest input), against 2^24: below it, float32 sums are
  exact in any order.

    python tools/quant_cost.py --model matnet-vr --json docs/kodak/quant_cost.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import psnr
from convcodec.zoo import load_model


def top_down_states(model: str, images, qualities):
    """The state g_s renders at the end of each file's decode."""
    net, _ = load_model(model)
    twin = codec.coding_net(net)
    caught = []
    render = twin.render
    twin.render = lambda st: (caught.append(st.h.clone()), render(st))[1]
    try:
        out = []
        for rgb in images:
            for q in qualities:
                codec.decode(codec.encode(rgb, model=model, quality=q).data, model=model)
                out.append((rgb, q, caught[-1]))
    finally:
        del twin.render
    return net, out


def run_g_s(g_s, h, act_bits=None, weight_bits=None, act_max=None, seen=None):
    """g_s in float, or with its convolutions' inputs and weights rounded."""
    x = h
    for i, layer in enumerate(g_s):
        if isinstance(layer, nn.Conv2d):
            if seen is not None:
                seen[i] = max(seen.get(i, 0.0), float(x.abs().max()))
            if act_bits:
                top = 2 ** (act_bits - 1) - 1
                sa = act_max[i] / top
                x = (x / sa).round().clamp(-top, top) * sa
                w = layer.weight
                sw = w.abs().amax((1, 2, 3), keepdim=True) / (2 ** (weight_bits - 1) - 1)
                x = F.conv2d(x, (w / sw).round() * sw, layer.bias, padding=layer.padding)
                continue
        x = layer(x)
    return x + 0.5


def to_uint8(x, rgb):
    h, w = rgb.shape[:2]
    return (x[0, :, :h, :w].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def worst_sums(g_s, act_bits, weight_bits):
    """Per convolution: max over outputs of sum |w_int| times the largest
    input integer, in units of the product grid (float32 exact below 2^24)."""
    out = {}
    for i, layer in enumerate(g_s):
        if isinstance(layer, nn.Conv2d):
            w = layer.weight.detach()
            sw = w.abs().amax((1, 2, 3), keepdim=True) / (2 ** (weight_bits - 1) - 1)
            wi = (w / sw).round().abs().sum((1, 2, 3))
            out[i] = float(wi.max()) * (2 ** (act_bits - 1) - 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="matnet-vr")
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=6)
    ap.add_argument("--qualities", default="25,75")
    ap.add_argument("--bits", default="8:8,9:8,10:8,12:8", help="activation:weight bit pairs")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    images = [load_image(p) for p in paths]
    net, states = top_down_states(a.model, images, [int(q) for q in a.qualities.split(",")])
    rows = []
    with torch.no_grad():
        seen: dict = {}
        ref = [psnr(rgb, to_uint8(run_g_s(net.g_s, h, seen=seen), rgb)) for rgb, _, h in states]
        print(f"{a.model}: {len(images)} Kodak images x qualities {a.qualities}; g_s inputs up to "
              + ", ".join(f"{v:.2f}" for v in seen.values()))
        print("| activation bits | weight bits | PSNR change (mean / worst) | worst sum / 2^24 per layer |")
        print("|---:|---:|---|---|")
        for pair in a.bits.split(","):
            ab, wb = (int(v) for v in pair.split(":"))
            d = [psnr(rgb, to_uint8(run_g_s(net.g_s, h, ab, wb, seen), rgb)) - r
                 for (rgb, _, h), r in zip(states, ref)]
            sums = worst_sums(net.g_s, ab, wb)
            row = {"act_bits": ab, "weight_bits": wb, "psnr_change_mean": float(np.mean(d)),
                   "psnr_change_worst": float(np.min(d)),
                   "worst_sum_over_2_24": {str(i): v / 2 ** 24 for i, v in sums.items()}}
            rows.append(row)
            print(f"| {ab} | {wb} | {row['psnr_change_mean']:+.3f} / {row['psnr_change_worst']:+.3f} dB | "
                  + ", ".join(f"{v / 2 ** 24:.2f}" for v in sums.values()) + " |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "images": [os.path.basename(p) for p in paths],
                       "qualities": a.qualities, "input_max": {str(i): v for i, v in seen.items()},
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
