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
Gaussian per symbol.
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


class CodeTables:
    """One group's 64 tables (a row of a model's ``coder_table``) as
    constriction models, built on first use of each scale index."""

    def __init__(self, row: np.ndarray):
        row = np.asarray(row, dtype=np.float64).ravel()
        ok = row.shape == (TABLE_LEN,) and np.all(np.isfinite(row)) and not np.any(row < 0)
        sums = np.add.reduceat(row, TABLE_START[:-1]) if ok else None
        if not ok or not np.all(sums > 0):
            raise ValueError(f"a row of code tables has {TABLE_LEN} finite probabilities >= 0, "
                             "no table all zero")
        self.row = row
        self._models: dict = {}
        # -log2 of each table's normalised probabilities (floored at the
        # coder's 24-bit resolution): the encoder's estimate of the bytes.
        p = row / np.repeat(sums, 2 * TABLE_HALF + 1)
        self._bits = -np.log2(np.maximum(p, 2.0 ** -24))

    def model(self, j: int):
        if j not in self._models:
            import constriction
            self._models[j] = constriction.stream.model.Categorical(
                self.row[TABLE_START[j]:TABLE_START[j + 1]], perfect=False)
        return self._models[j]

    @staticmethod
    def clamp(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Offsets clamped to their tables' supports (int32), as the encoder stores them."""
        half = TABLE_HALF[np.asarray(idx, dtype=np.int64)]
        return np.clip(symbols, -half, half).astype(np.int32)

    def bits(self, symbols: np.ndarray, idx: np.ndarray) -> float:
        """What the tables charge for these (clamped) offsets, in bits: the
        model's own estimate of the coded size."""
        return float(self._bits[table_positions(symbols, idx)].sum())


def table_positions(symbols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Where each (clamped) offset sits in a row of tables (flat int64)."""
    idx = np.asarray(idx, dtype=np.int64).ravel()
    return TABLE_START[idx] + TABLE_HALF[idx] + np.asarray(symbols, dtype=np.int64).ravel()


def group_coder(version: int, tables: CodeTables | None = None):
    """What codes a group of a file of this version, encoder and decoder
    alike: the scale table of the Gaussian coder (versions 1 and 2), or the
    group's ``CodeTables`` (version 3)."""
    if version >= 3:
        if tables is None:
            raise ValueError("a version-3 file is coded with its model's tables, and this model has none")
        return tables
    return SCALES if version >= 2 else SCALES_V1


def _runs(idx: np.ndarray):
    """(order, [(scale index, count)]): the positions of a group in order of
    scale index (stable, so C order within an index), and its runs."""
    flat = np.asarray(idx, dtype=np.uint8).ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=NUM_SCALES)
    return order, [(j, int(c)) for j, c in enumerate(counts) if c]


def _encode_tables(sym: np.ndarray, idx: np.ndarray, tables: CodeTables) -> bytes:
    import constriction
    order, runs = _runs(idx)
    s = sym[order].astype(np.int64)
    enc = constriction.stream.queue.RangeEncoder()
    at = 0
    for j, n in runs:
        part = s[at:at + n] + TABLE_HALF[j]
        if part.min() < 0 or part.max() > 2 * TABLE_HALF[j]:
            raise ValueError(f"offset outside scale {j}'s table (clamp first)")
        enc.encode(part.astype(np.int32), tables.model(j))
        at += n
    return enc.get_compressed().astype("<u4").tobytes()


def _decode_tables(words: np.ndarray, idx: np.ndarray, tables: CodeTables) -> np.ndarray:
    import constriction
    order, runs = _runs(idx)
    dec = constriction.stream.queue.RangeDecoder(words)
    s = np.empty(order.size, dtype=np.int32)
    at = 0
    for j, n in runs:
        s[at:at + n] = np.asarray(dec.decode(tables.model(j), n), dtype=np.int32) - TABLE_HALF[j]
        at += n
    out = np.empty_like(s)
    out[order] = s
    return out


def symbol_crc(symbols: np.ndarray) -> int:
    """CRC-32 of the symbols as little-endian int32: what the decoder must reproduce."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes()) & 0xFFFFFFFF


class DesyncError(Exception):
    """The decoder's model produced different probabilities than the encoder's."""


def read_group(cdr, g: int, idx: np.ndarray, tables: CodeTables | None = None) -> np.ndarray:
    """Group g's integer offsets from a .cdr file, decoded with scale-table
    indices ``idx`` (and, in a version-3 file, the group's ``tables``, the
    model's) and checked against the group's symbol CRC."""
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
