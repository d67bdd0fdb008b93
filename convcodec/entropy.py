"""Entropy coding of latent groups; the only module that imports constriction.

Each latent is coded as an integer offset k = round((mu_q - mu_p) / width) from
the prior mean, under a zero-mean Gaussian of the prior's scale quantized to
unit bins. Two choices make the stream robust to tiny float differences between
the encoder's and the decoder's networks:
  * the mean is 0, so a slightly different mu_p changes the reconstruction by
    that tiny amount but never the probabilities the coder uses;
  * the scale is snapped to a fixed table of SCALES (log-spaced), so the
    coder's model is an integer index into a table both sides share.
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


def encode(symbols: np.ndarray, idx: np.ndarray, table: np.ndarray = SCALES) -> bytes:
    """Range-code int offsets ``symbols`` with scales ``table[idx]``."""
    import constriction
    sym = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
    std = table[np.asarray(idx).ravel()]
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, _family(), np.zeros_like(std), std)
    return enc.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, idx: np.ndarray, table: np.ndarray = SCALES) -> np.ndarray:
    """Inverse of ``encode``; returns int32 offsets shaped like ``idx``."""
    import constriction
    if len(data) % 4:
        raise StreamError("chunk length is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    std = table[np.asarray(idx).ravel()]
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        out = dec.decode(_family(), np.zeros_like(std), std)
    except BaseException as e:  # constriction raises plain exceptions on invalid data
        if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        raise StreamError(f"range decoder failed: {e}") from None
    return np.asarray(out, dtype=np.int32).reshape(np.shape(idx))


def symbol_crc(symbols: np.ndarray) -> int:
    """CRC-32 of the symbols as little-endian int32: what the decoder must reproduce."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes()) & 0xFFFFFFFF


class DesyncError(Exception):
    """The decoder's model produced different probabilities than the encoder's."""


def read_group(cdr, g: int, idx: np.ndarray) -> np.ndarray:
    """Group g's integer offsets from a .cdr file, decoded with scale-table
    indices ``idx`` and checked against the group's symbol CRC."""
    # The container's CRC-32 already vouched for these bytes, so a chunk
    # that does not decode, or decodes to other symbols, means the model
    # here computed other probabilities than the encoder's did (a
    # different machine or build), unless the file was altered and its
    # checksums recomputed. Both are reported as what they are.
    table = SCALES if cdr.header.version >= 2 else SCALES_V1
    try:
        k = decode(cdr.chunks[g], idx, table)
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
