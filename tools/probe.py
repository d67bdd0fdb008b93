#!/usr/bin/env python3
"""The VLAE paper's probe (Zhao et al. 2017, Figure 3) for any backbone: what
each latent group carries. The image's latents are inferred and rounded as
the encoder stores them; then one group at a time is redrawn from its prior
at a temperature (the other groups keep their offsets from the prior mean),
and the pictures are decoded. A group that carries global content changes
the layout and colours; one that carries detail changes texture; an empty
one changes nothing. Also prints the bits each group takes.

    python tools/probe.py --models matnet-vr,convdraw-prog,matnet-v2 --image ../shared/data/kodak/kodim23.png \\
        --out docs/kodak/probe.png
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import psnr
from convcodec.nets.layers import gaussian_bits
from convcodec.nets.rollout import quantize, walk
from convcodec.zoo import load_model


class Probe:
    """A walk strategy: the encoder network's rounded offsets for every group,
    except group ``redraw``, drawn from its prior with ``gen``."""

    def __init__(self, net, ctx, enc, redraw: int = -1, temperature: float = 1.0, gen=None):
        self.net, self.ctx, self.enc = net, ctx, enc
        self.redraw, self.temperature, self.gen = redraw, temperature, gen
        self.bits: list[float] = []

    def __call__(self, g, st, prior, w):
        mu_q, self.enc = self.net.posterior(self.ctx, st, self.enc)
        k = quantize((mu_q - prior.mu) / w)
        self.bits.append(float(gaussian_bits(k, prior.scale).sum()))
        if g == self.redraw:
            eps = torch.randn(k.shape, generator=self.gen).to(k.device)
            k = quantize(self.temperature * prior.scale * eps)
        return k


def probe(model: str, rgb: np.ndarray, samples: int, temperature: float, quality: int):
    """(decoded picture, bits per group, {group: [redrawn pictures]})."""
    net, _ = load_model(model)
    q = quality if codec.is_variable_rate(net) else 0
    x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
    x = codec._pad(x, net.cfg.stride)
    h, w = rgb.shape[:2]
    out = {}
    with torch.inference_mode():
        ctx = codec._begin(net, x, q)

        def run(redraw=-1, seed=0):
            st, enc = codec._start(net, 1, *x.shape[-2:], "cpu", q)
            p = Probe(net, ctx, enc, redraw, temperature, torch.Generator().manual_seed(seed))
            rec = walk(net, st, p, net.num_groups, coding=True)
            return codec._to_uint8(rec, h, w), p.bits

        base, bits = run()
        for g in range(net.num_groups):
            out[g] = [run(g, s)[0] for s in range(samples)]
    return base, bits, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="matnet-vr")
    ap.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    ap.add_argument("--crop", type=int, default=256, help="centre crop (pixels a side; 0 = whole image)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--quality", type=int, default=codec.DEFAULT_QUALITY)
    ap.add_argument("--out", default="results/probe.png")
    a = ap.parse_args()
    rgb = load_image(a.image)
    if a.crop:
        y0, x0 = (rgb.shape[0] - a.crop) // 2, (rgb.shape[1] - a.crop) // 2
        rgb = np.ascontiguousarray(rgb[max(0, y0):y0 + a.crop, max(0, x0):x0 + a.crop])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = a.models.split(",")
    results = {m: probe(m, rgb, a.samples, a.temperature, a.quality) for m in models}
    rows = sum(len(r[2]) for r in results.values())
    fig, axes = plt.subplots(rows, a.samples + 2, figsize=(1.3 * (a.samples + 2), 1.3 * rows))
    axes = np.atleast_2d(axes)
    r = 0
    px = rgb.shape[0] * rgb.shape[1]
    for m, (base, bits, redrawn) in results.items():
        print(f"{m}: bits per group (bpp) " + " ".join(f"{b / px:.4f}" for b in bits)
              + f"; all groups {psnr(rgb, base):.2f} dB")
        for g, pics in redrawn.items():
            change = np.mean([np.abs(p.astype(float) - base).mean() for p in pics])
            print(f"  group {g + 1}: redrawn pictures differ from the decode by {change:.2f} levels on average")
            row = [rgb, base] + pics
            for c, img in enumerate(row):
                ax = axes[r, c]
                ax.imshow(img); ax.set_xticks([]); ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{m}\ngroup {g + 1}\n{bits[g] / px:.3f} bpp", fontsize=5)
                if r == 0:
                    ax.set_title(["original", "decoded"][c] if c < 2 else f"redraw {c - 1}", fontsize=6)
            r += 1
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
