#!/usr/bin/env python3
"""Long fuzzing campaign against the decoder.

Builds valid files from a model (the default, or --model), mutates them with
convcodec.fuzz.mutate (CRCs recomputed so mutations reach the decoder) and
decodes each one. A mishandled input is one that raises anything but the
codec's documented errors, returns a picture of the wrong size, or takes
longer than --limit-s. Prints inputs tried, outcomes and mishandled cases;
exits 1 if any.

    python tools/fuzz_decoder.py --seconds 600
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-s", type=float, default=30.0, help="slowest acceptable decode")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from convcodec import codec, container
    from convcodec.fuzz import mutate
    from convcodec.zoo import ModelError
    expected = (container.ContainerError, ModelError, codec.DesyncError)
    rng = np.random.default_rng(a.seed)
    seeds = []
    for (h, w) in [(24, 40), (8, 8), (1, 1), (33, 17)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for t in (1, None):
            seeds.append(codec.encode(img, model=a.model, steps=t).data)
    rnd = random.Random(a.seed)
    tried, outcomes, bad = 0, {"refused": 0, "decoded": 0}, []
    end = time.time() + a.seconds
    while time.time() < end:
        data = mutate(seeds[tried % len(seeds)], rnd)
        tried += 1
        t0 = time.perf_counter()
        try:
            out = codec.decode(data, model=a.model)
            hd = container.unpack(data).header
            if out.shape != (hd.height, hd.width, 3):
                bad.append((data, f"wrong shape {out.shape}"))
            else:
                outcomes["decoded"] += 1
        except expected:
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a bug in the decoder
            bad.append((data, f"{type(e).__name__}: {e}"))
        dt = time.perf_counter() - t0
        if dt > a.limit_s:
            bad.append((data, f"took {dt:.1f} s"))
    print(f"inputs tried {tried}; refused {outcomes['refused']}, decoded {outcomes['decoded']}; "
          f"mishandled {len(bad)}")
    for data, why in bad[:20]:
        print(f"  {why}: {data[:48].hex()}...")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
