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
