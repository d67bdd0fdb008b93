#!/usr/bin/env python3
"""Fit a model's code tables on training photos: a new model that writes
version-3 files (convcodec.entropy.CodeTables).

The source model encodes training photos (never Kodak) at a spread of
qualities; every stored offset is counted per (group, scale index). Each
table is the symmetrised counts plus ``--prior-weight`` pseudo-counts of the
quantized Gaussian of its scale (the version-2 coder, which the fit falls
back to where it saw few offsets), normalised. The networks are the
source's, unchanged, so the new model stores the same offsets (except the
rare one beyond its table's support, which is clamped) and draws the same
pictures; only the bytes change.

With ``--context`` the new model writes version-4 files: the same tables,
plus context tables for the checkerboard's non-anchors at small scales
(convcodec.entropy.context_class), counted in the same pass per (group,
class, scale index), symmetrised, with ``--prior-weight`` pseudo-counts of
the group's fitted table of that scale (where a class saw few offsets it
codes as version 3 would), normalised.

    python tools/fit_tables.py --model matnet-vr16 --name matnet-vr16t --every 6 --threads 1
    python tools/fit_tables.py --model matnet-vr16 --name matnet-vr16c --every 6 --context
    python tools/evaluate.py --model matnet-vr16t --update-card     # then its Kodak numbers
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch

from convcodec import codec, entropy
from convcodec.entropy import (CTX_CLASSES, CTX_LEN, CTX_SCALES, CTX_WIDTH, NUM_SCALES, TABLE_LEN, TABLE_START,
                               CodeTables, context_positions, table_positions)
from convcodec.zoo import MODELS_DIR, build_model, config_from_dict, load_model, save_model

QUALITIES = (1, 15, 30, 45, 60, 75, 90, 100)


@contextlib.contextmanager
def recording():
    """Every (offsets, scale indices) the codec range-codes, in group order,
    each shaped (maps, H, W)."""
    seen: list = []
    orig = entropy.encode

    def spy(symbols, idx, table=entropy.SCALES):
        seen.append((np.array(symbols, dtype=np.int64), np.array(idx, dtype=np.int64)))
        return orig(symbols, idx, table)

    entropy.encode = spy
    try:
        yield seen
    finally:
        entropy.encode = orig


def count(counts: np.ndarray, sym: np.ndarray, idx: np.ndarray):
    """Add one group's offsets to its row of counts (TABLE_LEN), each offset
    clamped to its table's support, as the encoder of the new model would."""
    counts += np.bincount(table_positions(CodeTables.clamp(sym, idx), idx), minlength=TABLE_LEN)


def count_context(counts: np.ndarray, sym: np.ndarray, idx: np.ndarray):
    """Add one group's non-anchors at context scales to its context counts
    (CTX_CLASSES x CTX_LEN), by the table id a version-4 encoder gives them."""
    at = context_positions(CodeTables.clamp(sym, idx), idx)
    at = at[at >= TABLE_LEN] - TABLE_LEN                   # past the row of 64 tables: the context tables
    counts += np.bincount(at, minlength=CTX_CLASSES * CTX_LEN).reshape(CTX_CLASSES, CTX_LEN)


def tables_from(counts: np.ndarray, prior_weight: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Rows of probabilities from rows of counts (..., TABLE_LEN): symmetrised,
    with ``prior_weight`` pseudo-counts of ``prior`` (rows of tables; default
    the quantized Gaussian's), normalised per scale."""
    prior = np.broadcast_to(entropy.gaussian_tables() if prior is None else prior, counts.shape)
    out = np.empty(counts.shape, dtype=np.float64)
    for j in range(NUM_SCALES):
        a, b = TABLE_START[j], TABLE_START[j + 1]
        c = counts[..., a:b].astype(np.float64)
        c = 0.5 * (c + c[..., ::-1]) + prior_weight * prior[..., a:b]
        out[..., a:b] = c / c.sum(-1, keepdims=True)
    return out


def context_tables_from(counts: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """Context tables (groups x CTX_CLASSES x CTX_LEN) from their counts:
    symmetrised, with ``prior_weight`` pseudo-counts of ``prior`` (context
    tables, or anything that broadcasts to them: the fitted tables' first
    CTX_LEN entries, those of the context scales), normalised per table."""
    shape = counts.shape[:-1] + (CTX_SCALES, CTX_WIDTH)
    c = counts.astype(np.float64).reshape(shape)
    p = np.broadcast_to(prior, counts.shape).reshape(shape)
    c = 0.5 * (c + c[..., ::-1]) + prior_weight * p
    return (c / c.sum(-1, keepdims=True)).reshape(counts.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the source model (name or .safetensors)")
    ap.add_argument("--name", required=True, help="the new model's name (written to models/)")
    ap.add_argument("--data", default="../shared/data/train", help="training photos (never Kodak)")
    ap.add_argument("--every", type=int, default=4, help="use every N-th training photo")
    ap.add_argument("--qualities", default=",".join(map(str, QUALITIES)))
    ap.add_argument("--prior-weight", type=float, default=20.0,
                    help="pseudo-counts of the Gaussian in each (group, scale) table")
    ap.add_argument("--context", action="store_true", help="also fit context tables (version-4 files)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--notes", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from convcodec.train import load_images
    src, info = load_model(a.model)
    if not codec.is_variable_rate(src) or not codec.is_portable(src):
        sys.exit("code tables need a variable-rate model with exact scales")
    photos = load_images([a.data])[::a.every]
    qualities = [int(q) for q in a.qualities.split(",")]
    G = src.num_groups
    counts = np.zeros((G, TABLE_LEN), dtype=np.int64)
    ctx_counts = np.zeros((G, CTX_CLASSES, CTX_LEN), dtype=np.int64)
    t0 = time.perf_counter()
    for i, im in enumerate(photos):
        rgb = np.ascontiguousarray(im.permute(1, 2, 0).numpy())
        for q in qualities:
            with recording() as seen:
                codec.encode(rgb, model=a.model, quality=q, device="cpu")
            for g, (sym, idx) in enumerate(seen):
                count(counts[g], sym, idx)
                if a.context:
                    count_context(ctx_counts[g], sym, idx)
        print(f"[{i + 1}/{len(photos)}] {rgb.shape[1]}x{rgb.shape[0]}, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    cfg = config_from_dict({**src.cfg.to_dict(), "coder_tables": True, "coder_context": a.context})
    model = build_model(cfg)
    theirs = {k: v for k, v in src.state_dict().items() if k not in ("coder_table", "coder_context")}
    missing, unexpected = model.load_state_dict(theirs, strict=False)
    assert set(missing) == {"coder_table"} | ({"coder_context"} if a.context else set()) and not unexpected, \
        (missing, unexpected)
    tables = tables_from(counts, a.prior_weight)
    with torch.no_grad():
        model.coder_table.copy_(torch.from_numpy(tables))
        if a.context:
            model.coder_context.copy_(torch.from_numpy(
                context_tables_from(ctx_counts, tables[:, None, :CTX_LEN], a.prior_weight)))
    card = {k: v for k, v in info["card"].items()
            if k not in ("kodak", "kodak_anchors", "config", "sha256", "parameters", "superseded_by")}
    card.update(name=a.name, description=a.notes or card.get("description", ""))
    card["code_tables"] = {
        "source": f"{info['name']} (sha256 {info['sha256'][:12]})",
        "photos": f"every {a.every}th of {a.data} ({len(photos)} photos, large ones downscaled as in training)",
        "qualities": qualities, "prior_weight": a.prior_weight,
        "offsets_counted": int(counts.sum()), "offsets_per_group": counts.sum(1).tolist(),
        **({"context_offsets_counted": int(ctx_counts.sum())} if a.context else {}),
        "minutes": round((time.perf_counter() - t0) / 60, 1), "threads": a.threads,
    }
    save_model(model, MODELS_DIR / a.name, card)
    print(f"wrote {MODELS_DIR / a.name}.safetensors ({int(counts.sum())} offsets counted)")


if __name__ == "__main__":
    main()
