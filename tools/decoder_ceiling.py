#!/usr/bin/env python3
"""What bounds the curve at high rates, part two: the decoder itself.

tools/ceiling.py showed that at the top quality a file decodes within a few
hundredths of a dB of its unrounded latents: the quantizer is not the limit.
This tool asks how far the *decoder* could go with these weights if the
encoder were perfect and bits were free. For each crop it reports the PSNR of

  encoder    the float decoder fed the encoder's unrounded posterior means
             (tools/ceiling.py's "unrounded": the autoencoder as trained);
  latents    every group's latents optimised (Adam on the MSE, from the
             encoder's means, no rate): the decoder's ceiling, whatever an
             encoder sends;
  g_s        the finest decoder state h (the only input of g_s: ``width``
             maps per 8x8 block) optimised directly: the ceiling of g_s alone,
             whatever the top-down ladder computes.

If "latents" is close to "encoder", the encoder (amortisation) is not what
limits; if "g_s" is close to "latents", the ladder is not either, and the
synthesis transform (its width, and the width of the state it reads) is the
bound that no training of the encoder or the prior can lift.

    python tools/decoder_ceiling.py --model matnet-vr6 --every 4 --crop 256 --json docs/kodak/decoder_ceiling_vr6.json
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
from convcodec.zoo import load_model


def _psnr(rec: torch.Tensor, rgb: np.ndarray) -> float:
    """PSNR of the uint8 picture, as the codec would write it."""
    return psnr(rgb, codec._to_uint8(rec, *rgb.shape[:2]))


def encoder_latents(net, x: torch.Tensor, quality: int):
    """The encoder's unrounded latents of every group, and the final state."""
    ctx = codec._begin(net, x, quality)
    st, enc = codec._start(net, 1, *x.shape[-2:], "cpu", quality)
    zs = []
    for _ in range(net.num_groups):
        mu_q, enc = net.posterior(ctx, st, enc)
        zs.append(mu_q.detach())
        st = net.update(st, mu_q)
    return zs, st


def decode_latents(net, zs, quality: int, shape):
    st, _ = codec._start(net, 1, *shape, "cpu", quality)
    for z in zs:
        st = net.update(st, z)
    return st


def optimise(params, loss_fn, iters: int, lr: float) -> float:
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def crop_of(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return rgb[y:y + size, x:x + size]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--every", type=int, default=4, help="every N-th image")
    ap.add_argument("--crop", type=int, default=256, help="centre crop (a multiple of the model's stride)")
    ap.add_argument("--quality", type=int, default=100)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net, card = load_model(a.model)
    net.float().eval().requires_grad_(False)
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[::a.every]
    rows = []
    for p in paths:
        rgb = crop_of(load_image(p), a.crop)
        x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
        shape = x.shape[-2:]
        with torch.no_grad():
            zs, st = encoder_latents(net, x, a.quality)
            row = {"image": os.path.basename(p), "encoder": _psnr(net.render(st), rgb)}
        # the decoder's ceiling: every group's latents free
        zp = [z.clone().requires_grad_(True) for z in zs]
        optimise(zp, lambda: (net.render(decode_latents(net, zp, a.quality, shape)) - x).pow(2).mean(),
                 a.iters, a.lr)
        with torch.no_grad():
            row["latents"] = _psnr(net.render(decode_latents(net, zp, a.quality, shape)), rgb)
        # g_s's ceiling: the state it reads free
        hp = st.h.detach().clone().requires_grad_(True)
        optimise([hp], lambda: (net.render(type(st)(hp, st.g, st.u, st.hist)) - x).pow(2).mean(),
                 a.iters, a.lr)
        with torch.no_grad():
            row["g_s"] = _psnr(net.render(type(st)(hp, st.g, st.u, st.hist)), rgb)
        rows.append(row)
        print(f"{row['image']}: encoder {row['encoder']:.2f} dB, latents free {row['latents']:.2f} dB, "
              f"g_s input free {row['g_s']:.2f} dB", flush=True)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("encoder", "latents", "g_s")}
    print(f"mean over {len(rows)} crops of {a.crop} px at quality {a.quality}: encoder {summary['encoder']:.2f}, "
          f"latents free {summary['latents']:.2f}, g_s input free {summary['g_s']:.2f} dB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": card["name"], "quality": a.quality, "crop": a.crop, "iters": a.iters, "lr": a.lr,
                       "summary": summary, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
