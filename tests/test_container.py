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


def test_little_endian_layout():
    data = C.pack(sample())
    assert data[:4] == b"\x89CDR" and data[4] == 1
    n = data[6]
    assert data[7:7 + n] == b"model-x"
    off = 7 + n + 8
    assert int.from_bytes(data[off:off + 4], "little") == 33
    assert int.from_bytes(data[off + 4:off + 8], "little") == 17


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
