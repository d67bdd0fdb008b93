import zlib

import pytest

from convcodec import container as C


def sample(groups=3, stored=3):
    chunks = [bytes([i]) * (4 * (i + 1)) for i in range(stored)]
    h = C.Header("model-x", bytes(range(8)), 33, 17, groups, stored)
    return C.CdrFile(h, chunks, [1000 + i for i in range(stored)])


def test_roundtrip():
    f = sample()
    data = C.pack(f)
    g = C.unpack(data)
    assert g.header == f.header and g.chunks == f.chunks and g.symbol_crcs == f.symbol_crcs
    assert len(data) == C.overhead_bytes("model-x", 3) + sum(len(c) for c in f.chunks)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_little_endian_layout(version):
    """Version 3 has version 2's layout (only its chunks are coded otherwise)."""
    f = sample()
    f.header.version, f.header.quality = version, (37 if version >= 2 else 0)
    data = C.pack(f)
    assert data[:4] == b"\x89CDR" and data[4] == version
    n = data[6]
    assert data[7:7 + n] == b"model-x"
    off = 7 + n + 8
    assert int.from_bytes(data[off:off + 4], "little") == 33
    assert int.from_bytes(data[off + 4:off + 8], "little") == 17
    assert data[off + 8] == 3 and data[off + 9] == 3               # groups total, stored
    head = off + 10 + (1 if version >= 2 else 0)
    if version >= 2:
        assert data[off + 10] == 37                                # quality
    assert int.from_bytes(data[head:head + 4], "little") == zlib.crc32(data[:head])
    g = C.unpack(data)
    assert (g.header.version, g.header.quality) == (version, f.header.quality)
    assert len(data) == C.overhead_bytes("model-x", 3, version) + sum(len(c) for c in f.chunks)


def test_unknown_version_is_refused_by_number():
    data = bytearray(C.pack(sample()))
    data[4] = 9
    with pytest.raises(C.ContainerError, match="version 9"):
        C.unpack(bytes(data))


def test_quality_is_range_checked():
    f = sample()
    f.header.quality = 101
    with pytest.raises(C.ContainerError):
        C.pack(f)
    f.header.version, f.header.quality = 1, 5          # version 1 has no quality byte
    with pytest.raises(C.ContainerError):
        C.pack(f)


def test_truncate_keeps_a_valid_prefix():
    f = sample()
    for t in range(4):
        g = C.unpack(C.pack(C.truncate(f, t)))
        assert g.header.groups_stored == t and g.chunks == f.chunks[:t]


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 10, 30, -5, -1])
def test_every_kind_of_truncation_is_refused(cut):
    data = C.pack(sample())
    with pytest.raises(C.ContainerError):
        C.unpack(data[:cut] if cut else b"")


def test_every_truncation_and_bit_flip_is_refused():
    data = C.pack(sample())
    for n in range(len(data)):
        with pytest.raises(C.ContainerError):
            C.unpack(data[:n])
    for i in range(len(data)):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(C.ContainerError):
                C.unpack(bytes(bad))


def test_specific_messages():
    data = bytearray(C.pack(sample()))
    with pytest.raises(C.ContainerError, match="empty"):
        C.unpack(b"")
    with pytest.raises(C.ContainerError, match="not a .cdr"):
        C.unpack(b"\x89PNG\r\n\x1a\n" + bytes(40))
    v = bytearray(data)
    v[4] = 9
    with pytest.raises(C.ContainerError, match="version 9"):
        C.unpack(bytes(v))
    with pytest.raises(C.ContainerError, match="trailing"):
        C.unpack(bytes(data) + b"\x00")


def test_sizes_out_of_range_are_refused():
    f = sample()
    f.header.width = C.MAX_SIDE + 1
    with pytest.raises(C.ContainerError, match="out of range"):
        C.pack(f)
