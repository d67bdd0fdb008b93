"""The .cdr container: parsing and writing only (no torch, no constriction).

All integers are little-endian. Version 2 layout (version 1 below it):

    offset  size  field
    0       4     magic            b"\\x89CDR" (the high bit catches 7-bit mangling)
    4       1     version          2, 3 or 4 (1: below)
    5       1     flags            0 (reserved; a reader refuses unknown bits)
    6       1     name_len         n, 1..64
    7       n     model name       UTF-8
    7+n     8     model digest     first 8 bytes of SHA-256 of the weights file
    15+n    4     width            pixels, 1..MAX_SIDE
    19+n    4     height           pixels, 1..MAX_SIDE
    23+n    1     groups_total     latent groups of the model, 1..255
    24+n    1     groups_stored    0..groups_total
    25+n    1     quality          1..100 for a variable-rate model, 0 for a single-rate one
    26+n    4     header CRC-32    of bytes [0, 26+n)
    then groups_stored entries of 8 bytes:
            4     chunk length     bytes, a multiple of 4
            4     symbol CRC-32    CRC-32 of the group's decoded symbols (int32 LE):
                                   a decoder whose model drifted from the encoder's
                                   fails this check instead of showing a wrong picture
    then the chunks, in group order (range-coder words, uint32 LE)
    last    4     file CRC-32      of every byte before it

Version 2 means the portable entropy model: every scale index the coder
used was computed in exact fixed-point arithmetic (convcodec.nets.exact), so
the file decodes to the same symbols on every machine; and its picture is
defined by the fixed-point reconstruction (convcodec.nets.fixed), so the
same pixels on every machine. (The bitstream did not change when the
reconstruction became fixed point: files written before decode to the
same symbols, their pixels now the same everywhere.) Version 1 (the
float-prior models of convcodec 0.1) has no quality byte (the header CRC
covers [0, 25+n)); its scales came from float arithmetic, so a machine with
another instruction set may fail to decode it (the symbol CRCs catch that).
Version 3 has version 2's layout and guarantees; only the chunks differ:
a group's offsets are range-coded in order of their scale-table index
(stable: raster order, map by map, within one index), each run of equal
indices under that (group, index)'s table of probabilities, which the model
stores with its weights (convcodec.entropy.CodeTables), instead of symbol
by symbol under the Gaussian of the scale. The symbol CRCs are still over
the offsets in raster order.
Version 4 has version 3's layout; a group's chunk codes the checkerboard's
anchors first (positions with y + x even, in every map), exactly as
version 3 codes a group, then the other positions, each in order of its
table id (convcodec.entropy.table_ids): its scale index, or, where that
index has the smallest table, a context table chosen by the anchors around
it (convcodec.entropy.context_class), also stored with the model.

All four versions are read; a model writes (and reads) the version of its
entropy model.

Groups come in generation order, so cutting a file to its first t groups
(``truncate``) keeps a valid file: drop trailing chunks and table entries,
rewrite groups_stored and both CRCs.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\x89CDR"
VERSION = 2                  # written by models with exact scales (3 with code tables, 4 with context tables)
VERSIONS = (1, 2, 3, 4)      # read
MAX_SIDE = 1 << 16           # largest width or height a file may declare
MAX_PIXELS = 1 << 26         # largest width*height a file may declare (67 MP): bounds a hostile header's cost
MAX_NAME = 64
_FIXED = struct.Struct("<4sBBB")
_DIMS = struct.Struct("<8sIIBB")
_QUALITY = struct.Struct("<B")
_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<II")


class ContainerError(Exception):
    """The bytes are not a valid .cdr file; the message says why."""


@dataclass
class Header:
    model_name: str
    model_digest: bytes          # 8 bytes
    width: int
    height: int
    groups_total: int
    groups_stored: int = 0
    quality: int = 0             # 1..100 (variable-rate model) or 0; version 2 only
    version: int = VERSION


@dataclass
class CdrFile:
    header: Header
    chunks: list[bytes] = field(default_factory=list)
    symbol_crcs: list[int] = field(default_factory=list)

    @property
    def group_bytes(self) -> list[int]:
        return [len(c) for c in self.chunks]


def _crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def pack(f: CdrFile) -> bytes:
    h = f.header
    name = h.model_name.encode("utf-8")
    if not 1 <= len(name) <= MAX_NAME:
        raise ContainerError(f"model name must be 1..{MAX_NAME} bytes")
    if len(h.model_digest) != 8:
        raise ContainerError("model digest must be 8 bytes")
    if len(f.chunks) != len(f.symbol_crcs) or not 0 <= len(f.chunks) <= h.groups_total <= 255:
        raise ContainerError("inconsistent group count")
    _check_dims(h.width, h.height)
    if h.version not in VERSIONS:
        raise ContainerError(f"cannot write .cdr version {h.version}")
    if not 0 <= h.quality <= 100 or (h.version == 1 and h.quality):
        raise ContainerError("quality must be 0..100 (and 0 in a version-1 file)")
    head = (_FIXED.pack(MAGIC, h.version, 0, len(name)) + name
            + _DIMS.pack(h.model_digest, h.width, h.height, h.groups_total, len(f.chunks)))
    if h.version >= 2:
        head += _QUALITY.pack(h.quality)
    out = bytearray(head + _U32.pack(_crc(head)))
    for c, s in zip(f.chunks, f.symbol_crcs):
        if len(c) % 4:
            raise ContainerError("chunk length must be a multiple of 4")
        out += _ENTRY.pack(len(c), s)
    for c in f.chunks:
        out += c
    out += _U32.pack(_crc(bytes(out)))
    return bytes(out)


def header_end(version: int, name_len: int) -> int:
    """Offset of the header CRC: the fixed part, the name, the dimensions and,
    from version 2, the quality byte."""
    return _FIXED.size + name_len + _DIMS.size + (_QUALITY.size if version >= 2 else 0)


def _check_dims(w: int, h: int):
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE and w * h <= MAX_PIXELS):
        raise ContainerError(f"image size {w}x{h} is out of range "
                             f"(at most {MAX_SIDE} per side and {MAX_PIXELS} pixels)")


def unpack(data: bytes) -> CdrFile:
    """Parse and verify a whole file; raises ContainerError with the reason."""
    data = bytes(data)
    if len(data) == 0:
        raise ContainerError("empty file")
    if len(data) < 4 or data[:4] != MAGIC:
        raise ContainerError("not a .cdr file (bad magic)")
    if len(data) < _FIXED.size:
        raise ContainerError("truncated .cdr file (header cut short)")
    _, version, flags, n = _FIXED.unpack_from(data, 0)
    if version not in VERSIONS:
        raise ContainerError(f"unsupported .cdr version {version} (this convcodec reads versions "
                             f"{', '.join(map(str, VERSIONS))}; a newer convcodec wrote it)")
    if flags != 0:
        raise ContainerError(f"unsupported .cdr flags 0x{flags:02x}")
    if not 1 <= n <= MAX_NAME:
        raise ContainerError("corrupted .cdr header (model name length out of range)")
    off = _FIXED.size + n
    head_end = header_end(version, n)
    if len(data) < head_end + 4:
        raise ContainerError("truncated .cdr file (header cut short)")
    (crc,) = _U32.unpack_from(data, head_end)
    if crc != _crc(data[:head_end]):
        raise ContainerError("corrupted .cdr header (checksum mismatch)")
    try:
        name = data[_FIXED.size:off].decode("utf-8")
    except UnicodeDecodeError:
        raise ContainerError("corrupted .cdr header (model name is not UTF-8)") from None
    digest, w, h, total, stored = _DIMS.unpack_from(data, off)
    quality = _QUALITY.unpack_from(data, off + _DIMS.size)[0] if version >= 2 else 0
    if quality > 100:
        raise ContainerError(f"corrupted .cdr header (quality {quality})")
    try:
        _check_dims(w, h)
    except ContainerError as e:
        raise ContainerError(f"corrupted .cdr header ({e})") from None
    if total == 0 or stored > total:
        raise ContainerError(f"corrupted .cdr header ({stored} of {total} groups)")
    pos = head_end + 4
    if len(data) < pos + stored * _ENTRY.size + 4:
        raise ContainerError("truncated .cdr file (group table cut short)")
    entries = [_ENTRY.unpack_from(data, pos + i * _ENTRY.size) for i in range(stored)]
    pos += stored * _ENTRY.size
    need = pos + sum(length for length, _ in entries) + 4
    if len(data) < need:
        raise ContainerError(f"truncated .cdr file ({len(data)} of {need} bytes)")
    if len(data) > need:
        raise ContainerError(f"corrupted .cdr file ({len(data) - need} unexpected trailing bytes)")
    (fcrc,) = _U32.unpack_from(data, need - 4)
    if fcrc != _crc(data[:need - 4]):
        raise ContainerError("corrupted .cdr file (checksum mismatch)")
    chunks = []
    for length, _ in entries:
        if length % 4:
            raise ContainerError("corrupted .cdr file (chunk length not a multiple of 4)")
        chunks.append(data[pos:pos + length])
        pos += length
    return CdrFile(Header(name, digest, w, h, total, stored, quality, version), chunks, [s for _, s in entries])


def truncate(f: CdrFile, groups: int) -> CdrFile:
    """The same file keeping only its first ``groups`` groups (no re-encoding)."""
    g = max(0, min(groups, len(f.chunks)))
    h = Header(**{**f.header.__dict__, "groups_stored": g})
    return CdrFile(h, f.chunks[:g], f.symbol_crcs[:g])


def overhead_bytes(name: str, groups: int, version: int = VERSION) -> int:
    """Container bytes that are not range-coder payload."""
    q = _QUALITY.size if version >= 2 else 0
    return _FIXED.size + len(name.encode("utf-8")) + _DIMS.size + q + 4 + groups * _ENTRY.size + 4
