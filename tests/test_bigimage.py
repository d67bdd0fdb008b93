"""Big images run the full-resolution layers in bands; results must match a
single pass over the whole image (no seams) and round-trip exactly."""
import numpy as np
import torch

from convcodec import codec
from convcodec.nets import convdraw as cd
from convcodec.zoo import load_model

from .conftest import smooth_image


def test_bands_match_one_pass(monkeypatch, tiny_model):
    net, _ = load_model(tiny_model)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 200, 40) - 0.5
    with torch.no_grad():
        st, _ = net.init_state(1, 200, 40)
        st.canvas = torch.randn_like(st.canvas) * 0.1
        st.h = torch.randn_like(st.h)
        monkeypatch.setattr(cd, "BAND_ROWS", 32)
        read_b = net._read_image(x, st.canvas)
        write_b = net._write_canvas(st.canvas.clone(), st.h)
        monkeypatch.setattr(cd, "BAND_ROWS", 10 ** 9)
        read_w = net._read_image(x, st.canvas)
        write_w = net._write_canvas(st.canvas.clone(), st.h)
    torch.testing.assert_close(read_b, read_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(write_b, write_w, rtol=1e-5, atol=1e-5)


def test_banded_roundtrip(monkeypatch, tiny_model):
    monkeypatch.setattr(cd, "BAND_ROWS", 32)
    rgb = smooth_image(203, 45)
    enc, rec = codec.encode(rgb, model=tiny_model, reconstruct=True)
    out = codec.decode(enc.data, model=tiny_model)
    np.testing.assert_array_equal(out, rec)
    monkeypatch.setattr(cd, "BAND_ROWS", 10 ** 9)
    whole = codec.decode(enc.data, model=tiny_model)
    assert np.abs(whole.astype(int) - out.astype(int)).max() <= 1   # float rounding only
