import numpy as np
import pytest

from convcodec import entropy


def test_roundtrip_random_symbols(rng):
    idx = rng.integers(0, entropy.NUM_SCALES, size=(4, 9, 11)).astype(np.uint8)
    sym = np.rint(rng.normal(0, entropy.SCALES[idx])).astype(np.int32)
    sym[0, 0, 0] = entropy.SYMBOL_MAX          # extremes of the alphabet survive too
    sym[0, 0, 1] = -entropy.SYMBOL_MAX
    data = entropy.encode(sym, idx)
    assert len(data) % 4 == 0
    out = entropy.decode(data, idx)
    np.testing.assert_array_equal(out, sym)
    assert entropy.symbol_crc(out) == entropy.symbol_crc(sym)


def test_empty_group():
    idx = np.zeros((0,), dtype=np.uint8)
    assert entropy.decode(entropy.encode(np.zeros(0, np.int32), idx), idx).size == 0


def test_scale_index_is_nearest_in_log_domain():
    np.testing.assert_array_equal(entropy.scale_index(entropy.SCALES), np.arange(entropy.NUM_SCALES))
    assert entropy.scale_index(np.array([1e-6]))[0] == 0
    assert entropy.scale_index(np.array([1e6]))[0] == entropy.NUM_SCALES - 1
    mid = np.sqrt(entropy.SCALES[10] * entropy.SCALES[11])
    assert entropy.scale_index(np.array([mid * 0.999]))[0] == 10
    assert entropy.scale_index(np.array([mid * 1.001]))[0] == 11


def test_coded_size_matches_information_content(rng):
    """Bytes from the range coder are within 1% of -log2 p of the symbols."""
    import torch
    from convcodec.nets.layers import gaussian_bits
    idx = rng.integers(5, 50, size=200_000).astype(np.uint8)
    sym = np.rint(rng.normal(0, entropy.SCALES[idx])).astype(np.int32)
    bits = float(gaussian_bits(torch.from_numpy(sym).float(), torch.from_numpy(entropy.SCALES[idx])).sum())
    coded = 8 * len(entropy.encode(sym, idx))
    assert coded == pytest.approx(bits, rel=0.01)


def test_wrong_length_is_a_stream_error():
    with pytest.raises(entropy.StreamError):
        entropy.decode(b"\x00\x01\x02", np.zeros(3, np.uint8))


def _tables(rng):
    """A row of code tables unlike the Gaussian's: random positive weights."""
    return entropy.CodeTables(rng.random(entropy.TABLE_LEN).astype(np.float32) + 1e-3)


def test_code_tables_round_trip_in_scale_order(rng):
    """Version 3: any offsets within the tables' supports, at any scale
    indices, come back in raster order; the extremes of each support too."""
    tables = _tables(rng)
    idx = rng.integers(0, entropy.NUM_SCALES, size=(4, 9, 11)).astype(np.uint8)
    half = entropy.TABLE_HALF[idx]
    sym = rng.integers(-half, half + 1).astype(np.int32)
    sym[0, 0, :2] = half[0, 0, :2] * np.array([1, -1])
    data = entropy.encode(sym, idx, tables)
    out = entropy.decode(data, idx, tables)
    np.testing.assert_array_equal(out, sym)
    # the same bytes under another row of tables are other symbols (or an error)
    try:
        other = entropy.decode(data, idx, _tables(np.random.default_rng(7)))
    except entropy.StreamError:
        other = None
    assert other is None or not np.array_equal(other, sym)
    assert entropy.decode(entropy.encode(np.zeros(0, np.int32), np.zeros(0, np.uint8), tables),
                          np.zeros(0, np.uint8), tables).size == 0


def test_code_tables_clamp_to_their_support_and_refuse_beyond_it(rng):
    tables = _tables(rng)
    idx = np.array([0, 0, 63, 63], np.uint8)
    sym = np.array([1000, -33, entropy.SYMBOL_MAX, -5], np.int32)
    clamped = tables.clamp(sym, idx)
    np.testing.assert_array_equal(clamped, [entropy.TABLE_MIN_HALF, -entropy.TABLE_MIN_HALF,
                                            entropy.TABLE_HALF[63], -5])
    with pytest.raises(ValueError, match="clamp first"):
        entropy.encode(sym, idx, tables)
    np.testing.assert_array_equal(entropy.decode(entropy.encode(clamped, idx, tables), idx, tables), clamped)


def test_code_tables_cost_what_they_say(rng):
    """Coded bytes are within 1% of the tables' own -log2 p (the estimate
    the encoder reports), and the Gaussian's tables cost what the version-2
    coder costs."""
    idx = rng.integers(5, 50, size=200_000).astype(np.uint8)
    sym = np.rint(rng.normal(0, entropy.SCALES[idx])).astype(np.int32)
    gauss = entropy.CodeTables(entropy.gaussian_tables().astype(np.float32))
    sym = gauss.clamp(sym, idx)
    coded = 8 * len(entropy.encode(sym, idx, gauss))
    assert coded == pytest.approx(gauss.bits(sym, idx), rel=0.01)
    assert coded == pytest.approx(8 * len(entropy.encode(sym, idx)), rel=0.005)


def test_code_tables_refuse_a_malformed_row():
    empty = np.ones(entropy.TABLE_LEN)
    empty[entropy.TABLE_START[5]:entropy.TABLE_START[6]] = 0          # scale 5's table all zero
    for row in (np.ones(entropy.TABLE_LEN - 1), np.full(entropy.TABLE_LEN, np.nan), -np.ones(entropy.TABLE_LEN), empty):
        with pytest.raises(ValueError):
            entropy.CodeTables(row)


def _ctx_tables(rng):
    """A row of code tables and context tables, random positive weights."""
    ctx = rng.random((entropy.CTX_CLASSES, entropy.CTX_LEN)).astype(np.float32) + 1e-3
    return entropy.CodeTables(rng.random(entropy.TABLE_LEN).astype(np.float32) + 1e-3, ctx)


def test_context_classes_read_only_the_anchors():
    """A non-anchor's class comes from its four anchor neighbours in its
    map and their activity over the group; changing any non-anchor leaves
    every class as it was (the decoder knows only the anchors when it
    computes them); borders count as zeros."""
    k = np.zeros((2, 4, 5), np.int32)
    k[0, 0, 1] = 3                 # (0, 1): y + x odd, a non-anchor: ignored
    np.testing.assert_array_equal(entropy.context_class(k), entropy.context_class(np.zeros_like(k)))
    k[0, 1, 1] = 2                 # an anchor; its neighbours (0,1), (2,1), (1,0), (1,2) see n = 2
    k[1, 1, 1] = -6
    c = entropy.context_class(k)
    # map 0: n = 2 -> bucket 2; the activity there: (2 + 6) / 2 maps = 4 >= 3/2 -> 2
    assert c[0, 0, 1] == 2 * entropy.CTX_ACTIVITY + 2 and c[0, 2, 1] == c[0, 1, 0] == c[0, 1, 2] == c[0, 0, 1]
    assert c[1, 0, 1] == 4 * entropy.CTX_ACTIVITY + 2           # n = 6 >= 5: the last bucket
    assert c[0, 3, 4] == 0                                      # nothing around it
    assert entropy.CTX_CLASSES == int(c.max()) + 1 == (len(entropy.CTX_EDGES) + 1) * entropy.CTX_ACTIVITY


def test_context_tables_round_trip_and_cost_what_they_say(rng):
    """Version 4: any offsets within the supports, any scale indices, come
    back in raster order, and the bytes are near the tables' own estimate;
    a change to a context table changes the bytes (they are used), while
    at large scales only the version-3 tables are used."""
    tables = _ctx_tables(rng)
    idx = rng.integers(0, entropy.NUM_SCALES, size=(6, 13, 17)).astype(np.uint8)
    half = entropy.TABLE_HALF[idx]
    sym = np.clip(np.rint(rng.normal(0, entropy.SCALES[idx])), -half, half).astype(np.int32)
    data = entropy.encode(sym, idx, tables)
    np.testing.assert_array_equal(entropy.decode(data, idx, tables), sym)
    assert 8 * len(data) == pytest.approx(tables.bits(sym, idx), rel=0.02, abs=64)
    assert tables.bits(sym[None], idx[None]) == tables.bits(sym, idx)        # a batch of one
    other = entropy.CodeTables(tables.row, tables.context.reshape(entropy.CTX_CLASSES, -1)[::-1])
    assert entropy.encode(sym, idx, other) != data
    plain = entropy.CodeTables(tables.row)
    only_large = np.where(idx < entropy.CTX_SCALES, entropy.CTX_SCALES, idx).astype(np.uint8)
    assert tables.bits(sym, only_large) == plain.bits(sym, only_large)
    np.testing.assert_array_equal(entropy.decode(entropy.encode(sym, only_large, tables), only_large, tables), sym)


def test_group_coder_matches_tables_to_the_version(rng):
    with pytest.raises(ValueError, match="with context tables"):
        entropy.group_coder(4, _tables(rng))
    with pytest.raises(ValueError, match="without context tables"):
        entropy.group_coder(3, _ctx_tables(rng))
    with pytest.raises(ValueError):
        entropy.CodeTables(np.ones(entropy.TABLE_LEN), np.ones((entropy.CTX_CLASSES, entropy.CTX_LEN - 1)))
