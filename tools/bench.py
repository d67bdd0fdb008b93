#!/usr/bin/env python3
"""Speed benchmark: median seconds per image to encode and decode with the
default model at 1, 4, 8 and all steps, with 1 and 2 CPU threads, split into
network time and entropy-coding time; peak memory; images per second with
batched decoding (codec.decode_many), and the same figures on CUDA when a
GPU is present; Pillow's JPEG2000 and AVIF timed in the same run as the
yardstick. Prints a table, writes JSON.

    python tools/bench.py --images ../shared/data/kodak --limit 6 --json results/bench.json

Each thread count runs in its own process so that thread pools and peak
memory are measured cleanly. The whole-process rows time what a user waits
for: the installed `convcodec decompress` of one Kodak file (interpreter
start, imports, model load, decode, PNG write), `--help` and `info`, beside
Pillow decoding a JPEG2000 file to PNG in a fresh process, and `import torch`
alone (the floor of any command that runs a network).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

CHILD = r"""
import io, json, resource, sys, time
import numpy as np, torch
threads, dev, model, paths = int(sys.argv[1]), sys.argv[2], (sys.argv[3] or None), sys.argv[4:]
torch.set_num_threads(threads)
from PIL import Image
from convcodec import codec
from convcodec.image import load_image
from convcodec.metrics import EntropyClock
clock = EntropyClock()
net, info = codec.load_model(model)
T = net.num_groups
steps = sorted({s for s in (1, 4, 8, T) if s <= T})
imgs = [load_image(p) for p in paths]
codec.decode(codec.encode(imgs[0][:64, :64], model=model, device=dev).data, model=model, device=dev)   # warm-up
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
res = {"threads": threads, "device": dev, "model": info["name"], "steps": {}}
for s in steps:
    enc_t, enc_e, dec_t, dec_e = [], [], [], []
    for rgb in imgs:
        clock.reset(); t0 = time.perf_counter()
        e = codec.encode(rgb, model=model, steps=s, device=dev); sync()
        enc_t.append(time.perf_counter() - t0); enc_e.append(clock.seconds)
        clock.reset(); t0 = time.perf_counter()
        codec.decode(e.data, model=model, device=dev); sync()
        dec_t.append(time.perf_counter() - t0); dec_e.append(clock.seconds)
    med = lambda v: round(float(np.median(v)), 4)
    res["steps"][s] = {"encode_s": med(enc_t), "encode_entropy_s": med(enc_e),
                       "encode_network_s": med(np.subtract(enc_t, enc_e)),
                       "decode_s": med(dec_t), "decode_entropy_s": med(dec_e),
                       "decode_network_s": med(np.subtract(dec_t, dec_e))}
res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)   # one image at a time
# Throughput with batching (codec.decode_many): files of one size share a
# network pass. On CUDA this is what fills the GPU; the files are repeated to
# make enough work.
files = [codec.encode(rgb, model=model, device=dev).data for rgb in imgs]
files = files * (max(1, 64 // len(files)) if dev == "cuda" else 1)
res["decode_many"] = {}
for bs in ((1, 8, 32) if dev == "cuda" else (1, 8)):
    codec.decode_many(files[:bs], model=model, batch=bs, device=dev); sync()
    t0 = time.perf_counter(); codec.decode_many(files, model=model, batch=bs, device=dev); sync()
    res["decode_many"][bs] = round(len(files) / (time.perf_counter() - t0), 2)
yard = {}
for name, fmt, params in (("JPEG2000 0.5 bpp", "JPEG2000", {"quality_mode": "rates", "quality_layers": [48], "irreversible": True}),
                          ("AVIF q50", "AVIF", {"quality": 50})):
    et, dt = [], []
    for rgb in imgs:
        buf = io.BytesIO(); t0 = time.perf_counter()
        Image.fromarray(rgb).save(buf, format=fmt, **params); et.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); Image.open(io.BytesIO(buf.getvalue())).load(); dt.append(time.perf_counter() - t0)
    yard[name] = {"encode_s": round(float(np.median(et)), 4), "decode_s": round(float(np.median(dt)), 4)}
res["yardsticks"] = yard
res["peak_rss_batched_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(res))
"""


def whole_process(paths, model: str, repeat: int = 5) -> dict:
    """Median wall seconds of fresh processes, as a user runs them."""
    import shutil
    import statistics
    import tempfile
    import time
    from PIL import Image
    exe = shutil.which("convcodec", path=os.path.dirname(sys.executable)) or "convcodec"
    tmp = tempfile.mkdtemp(prefix="bench-")
    src, cdr, j2k = paths[0], os.path.join(tmp, "a.cdr"), os.path.join(tmp, "a.jp2")
    margs = ["--model", model] if model else []
    subprocess.run([exe, "compress", src, "-o", cdr, "-q", *margs], check=True)
    Image.open(src).save(j2k, quality_mode="rates", quality_layers=[48], irreversible=True, mct=1)
    cmds = {
        "convcodec decompress (one Kodak file to PNG)": [exe, "decompress", cdr, "-o", os.path.join(tmp, "o.png"),
                                                         "-q", *margs],
        "convcodec --help": [exe, "--help"],
        "convcodec info": [exe, "info", cdr],
        "python -c 'import torch' (the floor of any network command)": [sys.executable, "-c", "import torch"],
        "Pillow: JPEG2000 file to PNG, fresh process": [
            sys.executable, "-c", f"from PIL import Image; Image.open({j2k!r}).save({os.path.join(tmp, 'p.png')!r})"],
    }
    out = {}
    for name, cmd in cmds.items():
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ts.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(ts), 3)
    shutil.rmtree(tmp)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=6, help="images per measurement (median over them)")
    ap.add_argument("--model", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--whole-process-only", action="store_true", help="only the fresh-process timings")
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.images, "*.png")))[: a.limit]
    if not paths:
        sys.exit(f"no PNG images in {a.images}")
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    whole = whole_process(paths, a.model)
    print("whole process, median wall seconds of 5 fresh processes:")
    for k, v in whole.items():
        print(f"  {v:6.3f}  {k}")
    if a.whole_process_only:
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"whole_process_s": whole}, f, indent=2)
        return
    runs = []
    for th, dev in [(th, "cpu") for th in a.threads.split(",")] + ([("2", "cuda")] if cuda else []):
        r = subprocess.run([sys.executable, "-c", CHILD, th, dev, a.model, *paths], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"model {runs[0]['model']}, {len(paths)} Kodak images (768x512), median seconds per image"
          + ("" if cuda else "; no CUDA device here"))
    print("| device | threads | steps | encode s (network + entropy) | decode s (network + entropy) |")
    print("|---|---:|---:|---|---|")
    for r in runs:
        for s, v in r["steps"].items():
            print(f"| {r['device']} | {r['threads']} | {s} | {v['encode_s']:.3f} ({v['encode_network_s']:.3f} + "
                  f"{v['encode_entropy_s']:.3f}) | {v['decode_s']:.3f} ({v['decode_network_s']:.3f} + "
                  f"{v['decode_entropy_s']:.3f}) |")
    print("\nbatched decoding (codec.decode_many, all groups), images per second:")
    for r in runs:
        print(f"  {r['device']} {r['threads']} thread(s): " + ", ".join(
            f"batch {b}: {v}" for b, v in r["decode_many"].items()))
    print("\nyardsticks (Pillow, same run):")
    for r in runs:
        for name, v in r["yardsticks"].items():
            print(f"  {r['threads']} thread(s) {name}: encode {v['encode_s']:.3f} s, decode {v['decode_s']:.3f} s")
    print("peak RSS: " + ", ".join(f"{r['device']} {r['threads']} thread(s) {r['peak_rss_mib']} MiB "
                                   f"(with batched decoding {r['peak_rss_batched_mib']} MiB)" for r in runs))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"images": [os.path.basename(p) for p in paths], "runs": runs, "cuda": cuda,
                       "whole_process_s": whole}, f, indent=2)


if __name__ == "__main__":
    main()
