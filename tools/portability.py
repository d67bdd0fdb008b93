#!/usr/bin/env python3
"""Do .cdr files decode the same on other machines? Encode here, decode in
fresh processes that compute like other machines, compare.

Each image is encoded once with all groups (a file cut to t groups is byte
for byte that file's prefix, so the prefixes need no encoding of their own),
then decoded at every number of groups t by a fresh process on each
simulated machine:

    native   this machine, default threads
    avx2     ONEDNN_MAX_CPU_ISA=AVX2 (the instruction set of most laptops)
    sse41    ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default (no vector kernels)
    1thread  OMP_NUM_THREADS=1 (other summation orders)

A decode that goes out of step with the encoder fails the file's symbol
CRCs (DesyncError), so "decoded" means every symbol identical. Pixels are
compared to the native decode: identical (the fixed-point reconstruction of
convcodec.nets.fixed), or how many values differ and by how much.

    python tools/portability.py --model matnet-vr --images ../shared/data/kodak --json results/portability.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

MACHINES = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    "1thread": {"OMP_NUM_THREADS": "1"},
}


def worker(files: list[str], out: str, device: str, model: str | None, engine: str):
    """Decode every file at every number of groups; save the pixels (npz)."""
    import numpy as np
    from convcodec.container import unpack
    if engine == "numpy":
        from convcodec import npdecode
        dec = lambda cdr, t: npdecode.decode(cdr, model=model, steps=t)
    else:
        import torch
        from convcodec import codec
        if os.environ.get("OMP_NUM_THREADS") == "1":
            torch.set_num_threads(1)
        dec = lambda cdr, t: codec.decode(cdr, model=model, steps=t, device=device)
    pics, errors = {}, {}
    for f in files:
        with open(f, "rb") as fh:
            cdr = unpack(fh.read())
        for t in range(1, len(cdr.chunks) + 1):
            key = f"{os.path.basename(f)}|{t}"
            try:
                pics[key] = dec(cdr, t)
            except Exception as e:         # recorded, compared by the parent
                errors[key] = f"{type(e).__name__}: {e}"
    np.savez(out, **{k: v for k, v in pics.items()})
    with open(out + ".errors.json", "w") as fh:
        json.dump(errors, fh)


def run_machine(name: str, files: list[str], tmp: str, model: str | None, engine: str = "torch",
                device: str = "cpu"):
    env = {**os.environ, **MACHINES[name]}
    out = os.path.join(tmp, f"{name}.{engine}.npz")
    t0 = time.time()
    cmd = [sys.executable, __file__, "--worker", out, "--device", device, "--engine", engine, *files]
    if model:
        cmd[2:2] = ["--model", model]
    subprocess.run(cmd, env=env, check=True)
    import numpy as np
    with np.load(out) as z:
        pics = {k: z[k] for k in z.files}
    with open(out + ".errors.json") as fh:
        errors = json.load(fh)
    return pics, errors, time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--quality", type=int, default=None, help="variable-rate models: the quality (default: the codec's)")
    ap.add_argument("--machines", default="avx2,sse41,1thread")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engines", default="torch,numpy", help="decoders to run on each simulated machine "
                    "(torch, numpy; with numpy it also runs natively; a file the numpy decoder "
                    "cannot take, such as VLAE's, gets torch alone)")
    ap.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.files, a.worker, a.device, a.model, a.engine)

    import numpy as np
    from convcodec import codec
    from convcodec.image import load_image
    from convcodec.zoo import load_model
    imgs = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if f.lower().endswith(".png"))
    imgs = imgs[:a.limit] if a.limit else imgs
    net, info = load_model(a.model)
    tmp = tempfile.mkdtemp(prefix="portability-")
    files = []
    for p in imgs:
        enc = codec.encode(load_image(p), model=a.model, device="cpu",
                           quality=a.quality if codec.is_variable_rate(net) else None)
        f = os.path.join(tmp, os.path.splitext(os.path.basename(p))[0] + ".cdr")
        with open(f, "wb") as fh:
            fh.write(enc.data)
        files.append(f)
    version = enc.cdr.header.version
    ref, ref_err, ref_s = run_machine("native", files, tmp, a.model)
    rows = []
    print(f"model {info['name']} (container version {version}), {len(files)} images, "
          f"{len(ref) + len(ref_err)} decodes per machine; native decode failed on {len(ref_err)}")
    print("native = this machine, torch decoder; every row is compared with it")
    print(f"{'machine':8} {'engine':6} {'decoded':>8} {'failed':>7} {'pixels identical':>17} "
          f"{'values differing':>17} {'max diff':>9}")
    from convcodec import npdecode
    from convcodec.container import unpack
    engines = a.engines.split(",")
    with open(files[0], "rb") as fh:
        if "numpy" in engines and not npdecode.can_decode(unpack(fh.read()), a.model, device="cpu"):
            engines.remove("numpy")
            print("(the numpy decoder takes only portable MatNet files: torch alone)")
    runs = [(m, e) for m in a.machines.split(",") for e in engines]
    if "numpy" in engines:
        runs.insert(0, ("native", "numpy"))
    for m, engine in runs:
        pics, errors, secs = run_machine(m, files, tmp, a.model, engine)
        same = differ = 0
        ndiff, maxdiff = 0, 0
        for k, v in pics.items():
            if k not in ref:
                continue
            d = np.abs(v.astype(np.int16) - ref[k].astype(np.int16))
            if d.any():
                differ += 1
                ndiff += int((d > 0).sum())
                maxdiff = max(maxdiff, int(d.max()))
            else:
                same += 1
        row = {"machine": m, "engine": engine, "env": MACHINES[m], "decoded": len(pics), "failed": len(errors),
               "pixels_identical": same, "pixels_differ": differ, "values_differing": ndiff,
               "max_abs_diff": maxdiff, "seconds": round(secs, 1), "errors": errors}
        rows.append(row)
        print(f"{m:8} {engine:6} {len(pics):8d} {len(errors):7d} {same:11d} of {len(pics):<4d} {ndiff:17d} "
              f"{maxdiff:9d}")
    res = {"model": info["name"], "sha256": info["sha256"], "version": version, "images": len(files),
           "native_failed": len(ref_err), "machines": rows,
           "digest": hashlib.sha256(b"".join(open(f, "rb").read() for f in files)).hexdigest()}
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
