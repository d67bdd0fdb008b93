"""Entropy coding of latent groups; the only module that imports constriction.

Each latent is coded as an integer offset k = round((mu_q - mu_p) / width) from
the prior mean, under a zero-mean distribution of the prior's scale. Two
choices make the stream robust to tiny float differences between the
encoder's and the decoder's networks:
  * the mean is 0, so a slightly different mu_p changes the reconstruction by
    that tiny amount but never the probabilities the coder uses;
  * the scale is snapped to a fixed table of SCALES (log-spaced), so the
    coder's model is an integer index into a table both sides share.

Files of versions 1 and 2 code every offset under the Gaussian of its scale
quantized to unit bins, symbol by symbol. Version 3 (``CodeTables``) gives
each (group, scale index) its own table of probabilities, stored with the
model's weights: the shape the offsets really have (fitted on training
photos by tools/fit_tables.py; heavier tails than the Gaussian), and the
offsets of a group are coded in order of scale index, one fixed model per
run of equal indices, which decodes about 3x faster than a parameterised
Gaussian per symbol. Version 4 adds a checkerboard context (He et al. 2021)
inside the coder: half of a group's positions (the anchors) are coded as in
version 3, then each other position under a table chosen by what its four
anchor neighbours hold (``context_class``), also stored with the weights.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from .nets.exact import dexp, dlog

SCALE_MIN = 0.11           # the scale table's range, in quantization bins
SCALE_MAX = 64.0

NUM_SCALES = 64
SYMBOL_MAX = 1023          # offsets are clamped to [-SYMBOL_MAX, SYMBOL_MAX]

# The table, its log-spacing and the index arithmetic's constants are
# computed with decimal (correctly rounded exp and ln), not the platform's
# libm or numpy's SIMD exp, whose last bit differs between instruction sets:
# the coder's probabilities must be the same bits on every machine.
LOG_SCALE_MIN = dlog(SCALE_MIN)
LOG_STEP = (dlog(SCALE_MAX) - LOG_SCALE_MIN) / (NUM_SCALES - 1)
INV_LOG_STEP = 1.0 / LOG_STEP
SCALES = np.array([dexp(LOG_SCALE_MIN + i * LOG_STEP) for i in range(NUM_SCALES)])

# Version-1 files (the float-prior models) were written with numpy's table;
# they keep it, so that they decode wherever they decoded before.
SCALES_V1 = np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), NUM_SCALES))
_LOG_MIN = math.log(SCALE_MIN)
_LOG_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (NUM_SCALES - 1)


class StreamError(Exception):
    """A chunk cannot be decoded (damaged or cut)."""


def scale_index(scale: np.ndarray) -> np.ndarray:
    """Nearest table entry in the log domain, as uint8 indices."""
    s = np.clip(np.asarray(scale, dtype=np.float64), SCALE_MIN, SCALE_MAX)
    return np.clip(np.rint((np.log(s) - _LOG_MIN) / _LOG_STEP), 0, NUM_SCALES - 1).astype(np.uint8)


def _family():
    import constriction
    return constriction.stream.model.QuantizedGaussian(-SYMBOL_MAX, SYMBOL_MAX)


def encode(symbols: np.ndarray, idx: np.ndarray, table: np.ndarray | CodeTables = SCALES) -> bytes:
    """Range-code int offsets ``symbols`` with scales ``table[idx]`` (a scale
    table: the Gaussian coder of versions 1 and 2), or with a group's
    ``CodeTables`` (version 3)."""
    import constriction
    sym = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
    if isinstance(table, CodeTables):
        return _encode_tables(sym, idx, table)
    std = table[np.asarray(idx).ravel()]
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, _family(), np.zeros_like(std), std)
    return enc.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, idx: np.ndarray, table: np.ndarray | CodeTables = SCALES) -> np.ndarray:
    """Inverse of ``encode``; returns int32 offsets shaped like ``idx``."""
    import constriction
    if len(data) % 4:
        raise StreamError("chunk length is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        if isinstance(table, CodeTables):
            out = _decode_tables(words, idx, table)
        else:
            std = table[np.asarray(idx).ravel()]
            dec = constriction.stream.queue.RangeDecoder(words)
            out = dec.decode(_family(), np.zeros_like(std), std)
    except BaseException as e:  # constriction raises plain exceptions on invalid data
        if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        raise StreamError(f"range decoder failed: {e}") from None
    return np.asarray(out, dtype=np.int32).reshape(np.shape(idx))


# Version 3: per-(group, scale index) tables. Scale j's table covers the
# offsets |k| <= TABLE_HALF[j]: TABLE_SIGMAS of its scale, at least
# TABLE_MIN_HALF (a confident prior still meets the odd large offset), at most
# SYMBOL_MAX. The encoder clamps an offset outside its table's support
# (``CodeTables.clamp``): the file stores what it stores, and its
# reconstruction is made from the clamped offset on both sides. Every
# constant here comes from SCALES (decimal, the same on every machine), and
# the probabilities themselves are the model's stored float32 numbers, which
# constriction turns into integers the same way everywhere.
TABLE_SIGMAS = 10.0
TABLE_MIN_HALF = 32
TABLE_HALF = np.minimum(SYMBOL_MAX, np.maximum(TABLE_MIN_HALF, np.ceil(TABLE_SIGMAS * SCALES))).astype(np.int64)
TABLE_START = np.concatenate([[0], np.cumsum(2 * TABLE_HALF + 1)]).astype(np.int64)
TABLE_LEN = int(TABLE_START[-1])        # one group's row: the 64 tables end to end


def gaussian_tables() -> np.ndarray:
    """One group's row of tables (TABLE_LEN float64): the unit-bin Gaussian of
    each scale over its support, the coder of version 2 restricted to it.
    The starting point of a model's tables and the prior of a fit; the
    stored float32 row, not this computation, is what files depend on."""
    row = np.empty(TABLE_LEN)
    for j, s in enumerate(SCALES):
        edges = np.arange(-TABLE_HALF[j], TABLE_HALF[j] + 2) - 0.5
        cdf = np.array([0.5 * math.erfc(-e / (s * math.sqrt(2.0))) for e in edges])
        p = np.diff(cdf)
        row[TABLE_START[j]:TABLE_START[j + 1]] = p / p.sum()
    return row


# Version 4: the checkerboard context. A position (y, x) of a group is an
# anchor when y + x is even. A non-anchor's class combines the sum n of |k|
# over its four anchor neighbours in its own map (0 outside the group),
# bucketed by CTX_EDGES (5 buckets), with the group's activity there: n
# averaged over the group's maps, below 1/2, below 3/2, or more (3
# buckets). Non-anchors whose scale index has the smallest table
# (|k| <= TABLE_MIN_HALF; the first CTX_SCALES indices) are coded under the
# table of (class, scale index); the others, and all anchors, under the
# version-3 table of their scale. Why there: nearly all of the gain was
# measured on those scales (session 27: 0.6-1.2% of the bits on 6 Kodak
# images with context tables everywhere, the same with them only there), and
# their tables are short (65 entries): 15 x 2,210 probabilities a group
# (0.13 MB in float32), 15% of what full rows per class would take.
CTX_EDGES = np.array([1, 2, 3, 5])
CTX_ACTIVITY = 3
CTX_CLASSES = (len(CTX_EDGES) + 1) * CTX_ACTIVITY
CTX_SCALES = int(np.sum(TABLE_HALF == TABLE_MIN_HALF))
CTX_WIDTH = 2 * TABLE_MIN_HALF + 1
CTX_LEN = CTX_SCALES * CTX_WIDTH                  # one class's tables end to end
assert np.all(TABLE_HALF[:CTX_SCALES] == TABLE_MIN_HALF)


def anchors(shape) -> np.ndarray:
    """The checkerboard's anchors of a group shaped (maps, H, W), as a mask of that shape."""
    h, w = shape[-2:]
    yy, xx = np.ogrid[:h, :w]
    return np.broadcast_to((yy + xx) % 2 == 0, shape)


def context_class(k: np.ndarray) -> np.ndarray:
    """Each position's context class (int64, shaped like ``k``: maps, H, W),
    computed from the anchors' offsets only (so the decoder, which has
    decoded just those, computes the same); meaningful at non-anchors."""
    a = np.where(anchors(k.shape), np.abs(np.asarray(k, dtype=np.int64)), 0)
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    n = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    maps = k.shape[0]
    total = n.sum(0)                                # integers: the same on every machine
    act = (2 * total >= maps).astype(np.int64) + (2 * total >= 3 * maps)
    return np.searchsorted(CTX_EDGES, n, side="right") * CTX_ACTIVITY + act[None]


def table_ids(k: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Which table codes each offset of a group (maps, H, W) in a version-4
    file: its scale index (the version-3 table), or NUM_SCALES + class *
    CTX_SCALES + scale index for a non-anchor at a context scale."""
    idx = np.asarray(idx, dtype=np.int64)
    ctx = ~anchors(idx.shape) & (idx < CTX_SCALES)
    return np.where(ctx, NUM_SCALES + context_class(k) * CTX_SCALES + idx, idx)


def _half(t: np.ndarray) -> np.ndarray:
    """The support |k| <= half of table id(s) ``t``."""
    t = np.asarray(t, dtype=np.int64)
    return np.where(t < NUM_SCALES, TABLE_HALF[np.minimum(t, NUM_SCALES - 1)], TABLE_MIN_HALF)


class CodeTables:
    """One group's 64 tables (a row of a model's ``coder_table``) and, for
    version 4, its context tables (``context``: CTX_CLASSES x CTX_LEN, a
    row of ``coder_context``), as constriction models built on first use."""

    def __init__(self, row: np.ndarray, context: np.ndarray | None = None):
        row = np.asarray(row, dtype=np.float64).ravel()
        ok = row.shape == (TABLE_LEN,) and np.all(np.isfinite(row)) and not np.any(row < 0)
        sums = np.add.reduceat(row, TABLE_START[:-1]) if ok else None
        if not ok or not np.all(sums > 0):
            raise ValueError(f"a row of code tables has {TABLE_LEN} finite probabilities >= 0, "
                             "no table all zero")
        self.row = row
        self.context = None
        # -log2 of each table's normalised probabilities (floored at the
        # coder's 24-bit resolution): the encoder's estimate of the bytes.
        p = row / np.repeat(sums, 2 * TABLE_HALF + 1)
        if context is not None:
            c = np.asarray(context, dtype=np.float64)
            ok = c.shape == (CTX_CLASSES, CTX_LEN) and np.all(np.isfinite(c)) and not np.any(c < 0)
            csums = c.reshape(-1, CTX_WIDTH).sum(1) if ok else None
            if not ok or not np.all(csums > 0):
                raise ValueError(f"context tables are {CTX_CLASSES} x {CTX_LEN} finite probabilities >= 0, "
                                 "no table all zero")
            self.context = c.ravel()
            p = np.concatenate([p, self.context / np.repeat(csums, CTX_WIDTH)])
        self._bits = -np.log2(np.maximum(p, 2.0 ** -24))
        self._models: dict = {}

    def model(self, t: int):
        """The constriction model of table id ``t`` (``table_ids``)."""
        if t not in self._models:
            import constriction
            if t < NUM_SCALES:
                probs = self.row[TABLE_START[t]:TABLE_START[t + 1]]
            else:
                if self.context is None:
                    raise ValueError("these code tables have no context tables")
                at = (t - NUM_SCALES) * CTX_WIDTH
                probs = self.context[at:at + CTX_WIDTH]
            self._models[t] = constriction.stream.model.Categorical(probs, perfect=False)
        return self._models[t]

    @staticmethod
    def clamp(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Offsets clamped to their tables' supports (int32), as the encoder stores them."""
        half = TABLE_HALF[np.asarray(idx, dtype=np.int64)]
        return np.clip(symbols, -half, half).astype(np.int32)

    def bits(self, symbols: np.ndarray, idx: np.ndarray) -> float:
        """What the tables charge for these (clamped) offsets, in bits: the
        model's own estimate of the coded size. With context tables the
        offsets are a group's, shaped (..., maps, H, W)."""
        if self.context is None:
            return float(self._bits[table_positions(symbols, idx)].sum())
        shape = np.shape(idx)[-3:]
        ks = np.asarray(symbols, dtype=np.int64).reshape((-1,) + shape)
        js = np.asarray(idx, dtype=np.int64).reshape((-1,) + shape)
        return float(sum(self._bits[context_positions(k, j)].sum() for k, j in zip(ks, js)))


def group_tables(rows, contexts=None) -> list[CodeTables]:
    """A model's ``CodeTables`` per group from its ``coder_table`` rows and,
    for version 4, its ``coder_context`` rows (numpy arrays)."""
    return [CodeTables(r, c) for r, c in zip(rows, [None] * len(rows) if contexts is None else contexts)]


def table_positions(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Where each (clamped) offset sits in a row of tables (flat int64)."""
    idx = np.asarray(idx, dtype=np.int64).ravel()
    return TABLE_START[idx] + TABLE_HALF[idx] + np.asarray(symbols, dtype=np.int64).ravel()


def context_positions(k: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Where each (clamped) offset of a group (maps, H, W) sits in a version-4
    group's tables: the row of 64 tables, then the context tables (flat int64)."""
    t = table_ids(k, idx).ravel()
    k = np.asarray(k, dtype=np.int64).ravel()
    return np.where(t < NUM_SCALES, table_positions(k, np.minimum(t, NUM_SCALES - 1)),
                    TABLE_LEN + (t - NUM_SCALES) * CTX_WIDTH + TABLE_MIN_HALF + k)


def group_coder(version: int, tables: CodeTables | None = None):
    """What codes a group of a file of this version, encoder and decoder
    alike: the scale table of the Gaussian coder (versions 1 and 2), or the
    group's ``CodeTables`` (version 3; version 4: with context tables)."""
    if version >= 3:
        if tables is None:
            raise ValueError(f"a version-{version} file is coded with its model's tables, and this model has none")
        if (version >= 4) != (tables.context is not None):
            raise ValueError(f"a version-{version} file is coded with"
                             f"{'' if version >= 4 else 'out'} context tables")
        return tables
    return SCALES if version >= 2 else SCALES_V1


def _runs(t: np.ndarray):
    """(order, [(table id, count)]): positions in order of table id (stable,
    so C order within an id), and its runs."""
    flat = np.asarray(t, dtype=np.int64).ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat)
    return order, [(j, int(c)) for j, c in enumerate(counts) if c]


def _encode_runs(enc, sym: np.ndarray, t: np.ndarray, tables: CodeTables):
    """Offsets ``sym`` (flat) under table ids ``t``, one run per id."""
    order, runs = _runs(t)
    s = sym[order].astype(np.int64)
    at = 0
    for j, n in runs:
        half = int(_half(j))
        part = s[at:at + n] + half
        if part.min() < 0 or part.max() > 2 * half:
            raise ValueError(f"offset outside table {j}'s support (clamp first)")
        enc.encode(part.astype(np.int32), tables.model(j))
        at += n


def _decode_runs(dec, t: np.ndarray, tables: CodeTables) -> np.ndarray:
    order, runs = _runs(t)
    s = np.empty(order.size, dtype=np.int32)
    at = 0
    for j, n in runs:
        s[at:at + n] = np.asarray(dec.decode(tables.model(j), n), dtype=np.int32) - int(_half(j))
        at += n
    out = np.empty_like(s)
    out[order] = s
    return out


def _encode_tables(sym: np.ndarray, idx: np.ndarray, tables: CodeTables) -> bytes:
    """Version 3: all offsets by scale index. Version 4: the anchors so,
    then the other positions by table id (their classes read the anchors)."""
    import constriction
    enc = constriction.stream.queue.RangeEncoder()
    if tables.context is None:
        _encode_runs(enc, sym.ravel(), idx, tables)
    else:
        k = sym.reshape(np.shape(idx))
        t, a = table_ids(k, idx), anchors(k.shape)
        for part in (a, ~a):
            _encode_runs(enc, k[part], t[part], tables)
    return enc.get_compressed().astype("<u4").tobytes()


def _decode_tables(words: np.ndarray, idx: np.ndarray, tables: CodeTables) -> np.ndarray:
    import constriction
    dec = constriction.stream.queue.RangeDecoder(words)
    if tables.context is None:
        return _decode_runs(dec, idx, tables)
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 3:
        raise ValueError("context tables code a group shaped (maps, H, W)")
    a = anchors(idx.shape)
    k = np.zeros(idx.shape, dtype=np.int32)
    k[a] = _decode_runs(dec, idx[a], tables)
    k[~a] = _decode_runs(dec, table_ids(k, idx)[~a], tables)
    return k


def symbol_crc(symbols: np.ndarray) -> int:
    """CRC-32 of the symbols as little-endian int32: what the decoder must reproduce."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes()) & 0xFFFFFFFF


class DesyncError(Exception):
    """The decoder's model produced different probabilities than the encoder's."""


def read_group(cdr, g: int, idx: np.ndarray, tables: CodeTables | None = None) -> np.ndarray:
    """Group g's integer offsets from a .cdr file, decoded with scale-table
    indices ``idx`` (and, in a version-3 or 4 file, the group's ``tables``,
    the model's) and checked against the group's symbol CRC."""
    # The container's CRC-32 already vouched for these bytes, so a chunk
    # that does not decode, or decodes to other symbols, means the model
    # here computed other probabilities than the encoder's did (a
    # different machine or build), unless the file was altered and its
    # checksums recomputed. Both are reported as what they are.
    try:
        k = decode(cdr.chunks[g], idx, group_coder(cdr.header.version, tables))
    except StreamError as e:
        raise DesyncError(f"group {g + 1} cannot be decoded although the file's checksum is intact "
                          f"({e}): decoding went out of step with the encoder (this machine "
                          "computes the model's probabilities differently from the one that "
                          "wrote the file), or the file was altered") from None
    if symbol_crc(k) != cdr.symbol_crcs[g]:
        raise DesyncError(f"group {g + 1} decoded out of step with the encoder: the model here "
                          "computes different probabilities than the one that wrote the file, "
                          "or the file was altered")
    return k
