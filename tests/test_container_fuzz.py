"""Property-based fuzzing of the container parser (hypothesis): any bytes at
all either parse into a consistent file or raise ContainerError."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcodec import container as C
from convcodec.fuzz import refresh_crcs

VALID = C.pack(C.CdrFile(C.Header("m", bytes(range(8)), 40, 30, 4, 2), [b"\x01" * 8, b"\x02" * 12], [7, 9]))


def _check(data: bytes):
    try:
        f = C.unpack(data)
    except C.ContainerError as e:
        assert str(e)
        return
    h = f.header
    assert 1 <= h.width <= C.MAX_SIDE and 1 <= h.height <= C.MAX_SIDE
    assert h.width * h.height <= C.MAX_PIXELS
    assert len(f.chunks) == h.groups_stored <= h.groups_total
    assert C.pack(f) == data            # what parses, re-packs to the same bytes


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    _check(data)
    _check(C.MAGIC + data)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.booleans())
def test_edits_of_a_valid_file(edits, fix_crcs):
    d = bytearray(VALID)
    for i, v in edits:
        d[i] = v
    data = refresh_crcs(bytes(d)) if fix_crcs else bytes(d)
    _check(data)
