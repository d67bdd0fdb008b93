"""Hostile-file generation shared by the fuzz test and tools/fuzz_decoder.py.

Mutations are applied to a valid file and the CRCs are then recomputed, so
that they reach the parser's range checks, the range decoder and the model
instead of stopping at the checksum.
"""
from __future__ import annotations

import random
import struct
import zlib

from .container import _ENTRY, _FIXED, header_end


def refresh_crcs(data: bytes) -> bytes:
    """Recompute header and file CRCs where the layout allows it."""
    d = bytearray(data)
    if len(d) < _FIXED.size:
        return bytes(d)
    he = header_end(d[4], d[6])
    if len(d) >= he + 8:
        d[he:he + 4] = struct.pack("<I", zlib.crc32(bytes(d[:he])) & 0xFFFFFFFF)
        d[-4:] = struct.pack("<I", zlib.crc32(bytes(d[:-4])) & 0xFFFFFFFF)
    return bytes(d)


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """One hostile variant of a valid file."""
    d = bytearray(data)
    n = d[6]
    dims = _FIXED.size + n + 8                 # width, after the 8-byte digest
    table = header_end(d[4], n) + 4            # first group entry, after the header CRC
    kind = rnd.randrange(10)
    if kind == 0:                       # flip random bits anywhere
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(d))
            d[i] ^= 1 << rnd.randrange(8)
        return bytes(d) if rnd.random() < 0.5 else refresh_crcs(bytes(d))
    if kind == 1:                       # truncate
        return bytes(d[:rnd.randrange(len(d))])
    if kind == 2:                       # width / height out of range or different
        v = rnd.choice([0, 1, 7, 2 ** 16, 2 ** 16 + 1, 2 ** 32 - 1, rnd.randrange(1, 300)])
        off = dims + 4 * rnd.randrange(2)
        d[off:off + 4] = struct.pack("<I", v)
        return refresh_crcs(bytes(d))
    if kind == 3:                       # group counts
        d[dims + 8 + rnd.randrange(2)] = rnd.choice([0, 1, 3, 4, 5, 200, 255])
        return refresh_crcs(bytes(d))
    if kind == 4 and len(d) > table + 8:  # chunk lengths
        i = table + _ENTRY.size * rnd.randrange(max(1, d[dims + 9]))
        if i + 4 <= len(d):
            d[i:i + 4] = struct.pack("<I", rnd.choice([0, 4, 8, 1, 3, 2 ** 31, 2 ** 32 - 4,
                                                       rnd.randrange(0, 4096)]))
        return refresh_crcs(bytes(d))
    if kind == 5:                       # payload bytes with valid CRCs: reaches the range decoder
        start = min(len(d) - 4, table + 8 * d[dims + 9])
        for _ in range(rnd.randint(1, 16)):
            if start < len(d) - 4:
                d[rnd.randrange(start, len(d) - 4)] = rnd.randrange(256)
        return refresh_crcs(bytes(d))
    if kind == 6:                       # version, flags, magic, name
        i = rnd.choice([0, 3, 4, 5, 6, 7])
        d[i] = rnd.randrange(256)
        return refresh_crcs(bytes(d))
    if kind == 9 and d[4] >= 2:         # the quality byte (version 2)
        d[dims + 10] = rnd.choice([0, 1, 50, 100, 101, 255])
        return refresh_crcs(bytes(d))
    if kind == 7:                       # random bytes, sometimes with the magic
        b = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 200)))
        return (d[:4] + b) if rnd.random() < 0.5 else b
    # insert or delete bytes in the middle
    i = rnd.randrange(len(d))
    if rnd.random() < 0.5:
        d[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 12)))
    else:
        del d[i:i + rnd.randint(1, 12)]
    return refresh_crcs(bytes(d))
