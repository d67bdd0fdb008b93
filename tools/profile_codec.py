#!/usr/bin/env python3
"""Where encode and decode spend their time: torch.profiler's operator table
for one image (after a warm-up), plus the share of the range coder.

    python tools/profile_codec.py --image ../shared/data/kodak/kodim01.png [--model NAME] [--threads 1]
"""
from __future__ import annotations

import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="../shared/data/kodak/kodim01.png")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=12)
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(a.threads)
    from convcodec import codec
    from convcodec.image import load_image
    from convcodec.metrics import EntropyClock
    rgb = load_image(a.image)
    clock = EntropyClock()
    enc = codec.encode(rgb, model=a.model)
    codec.decode(enc.data, model=a.model)                       # warm-up
    for what, fn in (("encode", lambda: codec.encode(rgb, model=a.model)),
                     ("decode", lambda: codec.decode(enc.data, model=a.model))):
        clock.reset()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            fn()
        wall = time.perf_counter() - t0
        print(f"\n{what}: {wall:.3f} s under the profiler, range coder {clock.seconds:.3f} s")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
