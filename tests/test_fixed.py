"""The fixed-point reconstruction (convcodec.nets.fixed): close to the float
layers it replaces, exact (the same bits whatever the summation order), the
same as its numpy twin, and what the codec's walk runs."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convcodec import codec, zoo
from convcodec.nets import exact
from convcodec.nets.fixed import FixedConv2d, FixedConvTranspose2d, FixedGDN
from convcodec.nets.layers import GDN

from .conftest import smooth_image


def _layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    up = nn.ConvTranspose2d(6, 6, 4, stride=2, padding=1)
    gdn = GDN(6, inverse=True)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand(6, 6))
    return conv, up, gdn


def test_fixed_layers_follow_the_float_ones_and_match_numpy():
    conv, up, gdn = _layers()
    x = torch.randn(2, 6, 9, 11)
    pairs = [
        (conv, FixedConv2d.of(conv), lambda a: exact.fixed_conv(
            exact.ExactConv(conv.weight.detach().numpy(), conv.bias.detach().numpy()), a)),
        (up, FixedConvTranspose2d.of(up), exact.FixedConvTranspose(up.weight.detach().numpy(),
                                                                    up.bias.detach().numpy())),
        (gdn, FixedGDN.of(gdn), exact.FixedGDN(gdn.beta.detach().numpy(), gdn.gamma.detach().numpy())),
    ]
    for float_layer, fixed_layer, numpy_layer in pairs:
        with torch.no_grad():
            want, got = float_layer(x), fixed_layer(x)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).abs().max() < 1e-3                   # the grid's error, not a different layer
        assert torch.equal(got * 4096, (got * 4096).round())     # on the activation grid
        for n in range(x.shape[0]):                              # numpy: the same bits
            np.testing.assert_array_equal(numpy_layer(x[n].numpy()), got[n].numpy())


def test_fixed_conv_is_exact_whatever_the_order_of_summation():
    conv, _, _ = _layers()
    fixed = FixedConv2d.of(conv)
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        got = fixed(x)
        # the same sums, one position and one tap at a time, backwards, in Python floats
        xi = exact.fixed_input(x[0].numpy())
        w = exact.to_grid(conv.weight.detach().double().numpy(), exact.WEIGHT_BITS)
        b = exact.to_grid(conv.bias.detach().double().numpy(), exact.ACT_BITS + exact.WEIGHT_BITS)
        xp = np.pad(xi, ((0, 0), (1, 1), (1, 1)))
        for o, r, c in [(0, 0, 0), (3, 4, 5), (9, 7, 7)]:
            terms = [w[o, ch, i, j] * xp[ch, r + i, c + j] for ch in range(6) for i in range(3) for j in range(3)]
            s = b[o]
            for t in reversed(terms):
                s += t
            assert got[0, o, r, c].item() == exact.fixed_output(np.array(s))


def test_bands_do_not_change_the_bits(monkeypatch):
    """Layers work band by band of rows (BAND_BYTES, for the cache): one row
    per band gives the same bits as one band, in torch and in numpy."""
    from convcodec.nets import fixed
    conv, _, gdn = _layers()
    x = torch.randn(1, 6, 9, 11) * 3
    layers = [FixedConv2d.of(conv), FixedGDN.of(gdn)]
    np_conv = exact.ExactConv(conv.weight.detach().numpy(), conv.bias.detach().numpy())
    np_gdn = exact.FixedGDN(gdn.beta.detach().numpy(), gdn.gamma.detach().numpy())

    def run():
        with torch.no_grad():
            return [f(x)[0].numpy() for f in layers] + [exact.fixed_conv(np_conv, x[0].numpy()), np_gdn(x[0].numpy())]
    whole = run()
    monkeypatch.setattr(exact, "BAND_BYTES", 1)        # both decoders size their bands from it
    assert fixed._band_rows(8 * 16 * 13) == 1 and exact._band_rows(8 * 16 * 13) == 1
    for a, b in zip(whole, run()):
        np.testing.assert_array_equal(a, b)


def test_weights_beyond_the_exact_range_are_refused():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1e4)
    with pytest.raises(ValueError, match="exact fixed point"):
        FixedConv2d.of(conv)


def test_the_codec_walks_the_fixed_decoder(tiny_vr):
    net, _ = zoo.load_model(tiny_vr)
    twin = net.coder()
    assert twin is net.coder()                                   # cached
    assert isinstance(twin.g_s[0], FixedConv2d) and isinstance(twin.up_t[0], FixedConvTranspose2d)
    assert isinstance(twin.merge[0].c1, nn.Conv2d) and not isinstance(twin.merge[0].c1, FixedConv2d)
    assert not isinstance(net.g_s[0], FixedConv2d)               # the model itself stays float
    rgb = smooth_image(24, 40)
    enc, rec = codec.encode(rgb, model=tiny_vr, reconstruct=True)
    assert np.array_equal(rec, codec.decode(enc.data, model=tiny_vr))   # the encoder knows the picture


def test_the_encoders_residual_read_renders_with_the_float_g_s():
    """The residual read (encoder only) runs g_s in the coder twin too; it
    only chooses symbols, so the twin keeps the model's float g_s for it
    (as trained, and faster), without a second copy of its weights, while
    the decoder's own render stays fixed point."""
    from convcodec.nets.matnet import RESIDUAL_GAIN, MatNet, TopDownState
    from .conftest import TINY_VR
    torch.manual_seed(3)
    net = MatNet(type(TINY_VR).from_dict({**TINY_VR.to_dict(), "residual_read": True})).eval()
    twin = net.coder()
    assert twin.float_modules["g_s"] is net.g_s and isinstance(twin.g_s[0], FixedConv2d)
    assert twin.state_dict().keys() == net.state_dict().keys()
    st = TopDownState(torch.randn(1, net.g_s[0].in_channels, 3, 5), 3)
    image = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        read = twin.residual(image, st)
        assert read.shape == (1, 192, 3, 5)
        assert torch.equal(read, net.residual(image, st))
        fixed = F.pixel_unshuffle(RESIDUAL_GAIN * (image - twin.render(st).clamp(0, 1)), 8)
        assert 0 < (read - fixed).abs().max() < 1e-2        # the fixed render is close, not the same
