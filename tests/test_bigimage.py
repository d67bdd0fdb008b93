"""Big images run g_a, g_s and the per-group networks tile by tile; results
must match a single pass over the whole image (no seams) and round-trip exactly."""
import numpy as np
import torch

from convcodec import codec
from convcodec.nets import layers as cd
from convcodec.zoo import load_model

from .conftest import smooth_image


def test_tiles_match_one_pass(monkeypatch, tiny_model):
    net, _ = load_model(tiny_model)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 200, 168)     # 4 x 3 tiles of 64 pixels, ragged at the ends
    with torch.no_grad():
        st, _ = net.init_state(1, 200, 168)
        st.canvas = torch.randn_like(st.canvas)
        monkeypatch.setattr(cd, "TILE_PIXELS", 64)
        y_b, r_b = net.begin(x), net.render(st)
        monkeypatch.setattr(cd, "TILE_PIXELS", 10 ** 9)
        y_w, r_w = net.begin(x), net.render(st)
    torch.testing.assert_close(y_b, y_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_b, r_w, rtol=1e-5, atol=1e-5)


def test_tiled_roundtrip(monkeypatch, tiny_model):
    monkeypatch.setattr(cd, "TILE_PIXELS", 64)
    rgb = smooth_image(203, 181)
    enc, rec = codec.encode(rgb, model=tiny_model, reconstruct=True)
    out = codec.decode(enc.data, model=tiny_model)
    np.testing.assert_array_equal(out, rec)
    monkeypatch.setattr(cd, "TILE_PIXELS", 10 ** 9)
    whole = codec.decode(enc.data, model=tiny_model)
    assert np.abs(whole.astype(int) - out.astype(int)).max() <= 1   # float rounding only


def test_per_group_networks_in_tiles_match_whole_maps(monkeypatch, tiny_model, tiny_matnet, tiny_vr):
    """prior / posterior / update run in tiles on big latent maps: the
    files and pictures are those of one pass over the whole map (exactly,
    also for the fixed-point decoder of the portable model)."""
    rgb = smooth_image(200, 72)
    for m in (tiny_model, tiny_matnet, tiny_vr):
        monkeypatch.setattr(cd, "TILE_POSITIONS", 10 ** 9)
        enc_w, rec_w = codec.encode(rgb, model=m, reconstruct=True)
        monkeypatch.setattr(cd, "TILE_POSITIONS", 4)      # tiles of 4x4 latent positions
        enc_b, rec_b = codec.encode(rgb, model=m, reconstruct=True)
        assert enc_b.data == enc_w.data
        np.testing.assert_array_equal(rec_b, rec_w)
        np.testing.assert_array_equal(codec.decode(enc_w.data, model=m), rec_w)


def test_tile_spans_cover_evenly_and_stay_on_the_grid():
    for n in list(range(1, 300)) + [4000, 6456, 9224, 65536]:
        for tile, align in ((256, 8), (96, 1), (64, 8), (32, 32)):
            n_al = n if align == 1 else align * -(-n // align)     # callers pad to the stride
            spans = cd._spans(n_al, tile, align)
            assert spans[0][0] == 0 and spans[-1][1] == n_al
            assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))       # contiguous
            assert all(a % align == 0 and 0 < b - a <= tile for a, b in spans)
            lengths = [b - a for a, b in spans]
            assert len(spans) == -(-n_al // tile) and max(lengths) - min(lengths) <= align


def test_fixed_point_decoder_in_tiles_is_bit_identical(monkeypatch, tiny_vr):
    """The portable model's decoder is exact: g_s in tiles of 64 pixels gives
    the very pixels of one pass (a float g_s may differ by a level there)."""
    rgb = smooth_image(203, 181)
    monkeypatch.setattr(cd, "TILE_PIXELS", 64)
    monkeypatch.setattr(cd, "TILE_POSITIONS", 4)
    enc, rec = codec.encode(rgb, model=tiny_vr, reconstruct=True)
    monkeypatch.setattr(cd, "TILE_PIXELS", 10 ** 9)
    monkeypatch.setattr(cd, "TILE_POSITIONS", 10 ** 9)
    np.testing.assert_array_equal(codec.decode(enc.data, model=tiny_vr), rec)
