"""MatNet goes through the same codec path as Conv DRAW: bit-exact latents,
every prefix decodes to what the encoder predicted, one file format."""
import numpy as np
import pytest
import torch
from PIL import Image

from convcodec import codec, entropy, zoo
from convcodec.nets.matnet import MatNet
from convcodec.train import TrainConfig, train

from .conftest import TINY, TINY_MATNET, make_tiny, smooth_image


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (33, 65), (64, 48)])
def test_matnet_latents_survive_the_coder(tiny_matnet, hw):
    rgb = smooth_image(*hw, seed=hw[0] + hw[1])
    sent, got = [], []
    enc_orig, dec_orig = entropy.encode, entropy.decode

    def spy_enc(sym, idx, *table):
        sent.append(np.array(sym))
        return enc_orig(sym, idx, *table)

    def spy_dec(data, idx, *table):
        got.append(dec_orig(data, idx, *table))
        return got[-1]
    entropy.encode, entropy.decode = spy_enc, spy_dec
    try:
        enc = codec.encode(rgb, model=tiny_matnet)
        out = codec.decode(enc.data, model=tiny_matnet)
    finally:
        entropy.encode, entropy.decode = enc_orig, dec_orig
    assert out.shape == rgb.shape
    assert len(sent) == len(got) == 5
    # groups (1, 2, 2) live at three scales, coarsest first; an octave has 4x the symbols
    sizes = [s.size for s in sent]
    assert sizes == [sizes[0], 4 * sizes[0], 4 * sizes[0], 16 * sizes[0], 16 * sizes[0]]
    assert any(np.any(s != 0) for s in sent)
    for s, g in zip(sent, got):
        np.testing.assert_array_equal(s, g)


def test_matnet_every_prefix(tiny_matnet):
    rgb = smooth_image(40, 72)
    full = codec.encode(rgb, model=tiny_matnet)
    outs = []
    for t in range(6):
        enc, rec = codec.encode(rgb, model=tiny_matnet, steps=t, reconstruct=True)
        out = codec.decode(enc.data, model=tiny_matnet)
        np.testing.assert_array_equal(out, rec)
        np.testing.assert_array_equal(codec.decode(full.data, model=tiny_matnet, steps=t), out)
        outs.append(out)
    assert len({o.tobytes() for o in outs}) > 1


def test_matnet_rebuilt_from_its_file_alone(tiny_matnet):
    net, info = zoo.load_model(tiny_matnet)
    assert isinstance(net, MatNet) and net.cfg == TINY_MATNET
    assert net.num_groups == sum(TINY_MATNET.groups)


def test_model_of_another_backbone_is_refused(tiny_matnet, tiny_model):
    data = codec.encode(smooth_image(16, 16), model=tiny_model).data
    with pytest.raises(zoo.ModelError, match="different model"):
        codec.decode(data, model=tiny_matnet)


def test_training_pass_matches_the_coded_rate_shape(tiny_matnet):
    net, _ = zoo.load_model(tiny_matnet)
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        bits, recon = net(x, prefixes=(2,))
    assert bits.shape == (5, 2) and set(recon) == {2, 5}
    assert recon[5].shape == x.shape and bool((bits > 0).all())


def test_train_matnet_from_convdraw_transforms(tmp_path):
    """--init across backbones copies g_a / g_s where names and shapes match."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(48, 64, seed=i)).save(data / f"{i}.png")
    cd = make_tiny(tmp_path / "cd", **{"analysis": (8, 8, 8), "canvas": 8})
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.02, warmup=1,
                     ckpt_minutes=100, init=cd, lmbda=0.02, lmbda_first=0.002)
    train(TINY_MATNET.to_dict(), tc, str(tmp_path / "run"), "m")
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert ck["step"] > 0
    # trained weights have moved away from the init, but started from it:
    # the EMA of a short run is still close to the convdraw transform
    src, _ = zoo.load_model(cd)
    got, _ = zoo.load_model(str(tmp_path / "run" / "m.safetensors"))
    w0, w1 = src.state_dict()["g_a.0.weight"], got.state_dict()["g_a.0.weight"]
    assert (w1 - w0).abs().max() < 0.05 < w0.abs().max()
    assert TINY.backbone == "convdraw" and got.cfg.backbone == "matnet"


def test_family_name_picks_the_default_model(monkeypatch, tmp_path):
    from .conftest import make_tiny_matnet
    default = zoo.FAMILY_DEFAULTS["matnet"]
    make_tiny_matnet(tmp_path / default, name=default)
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    assert zoo.resolve("matnet").name == f"{default}.safetensors"
    with pytest.raises(zoo.ModelError, match="unknown model"):
        zoo.resolve("matnet-nope")


@pytest.mark.parametrize("which", ["tiny_model", "tiny_matnet"])
def test_mixed_training_pass_shows_the_decoder_what_a_file_gives(which, request):
    """With mixed quantization the training reconstruction (all groups, and a
    prefix with the rest from the prior mean) is the codec's own decode."""
    path = request.getfixturevalue(which)
    net, _ = zoo.load_model(path)
    rgb = smooth_image(64, 96)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    T = net.num_groups
    with torch.no_grad():
        _, recon = net(x, prefixes=(2,), mixed=True)
    for t in (2, T):
        enc, rec = codec.encode(rgb, model=path, steps=t, reconstruct=True)
        got = recon[t][0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(got.astype(int) - rec.astype(int)).max() <= 1


def test_encoder_quality_sees_the_rate_and_starts_as_its_source(tmp_path):
    """encoder_quality: g_a and the merge modules take the quality as one more
    input map. Started from a plain variable-rate model (--init), the new
    inputs are disconnected, so the files are byte for byte the source's; once
    its weights move, the posterior depends on the quality, and the numpy
    decoder (which never runs the encoder) still matches the torch one."""
    from convcodec import codec, npdecode
    from convcodec.container import unpack
    from convcodec.train import _init_from
    from .conftest import TINY_VR, make_tiny_vr, smooth_image
    src_path = make_tiny_vr(tmp_path / "src")
    from convcodec.nets.matnet import MatNetConfig
    m = MatNet(MatNetConfig.from_dict({**TINY_VR.to_dict(), "encoder_quality": True}))
    _init_from(src_path, m)
    assert m.g_a[0].weight.shape[1] == 4 and not m.g_a[0].weight[:, 3].any()
    assert all(not mm.c1.weight[:, -1].any() for mm in m.merge)
    zoo.save_model(m, tmp_path / "eq", {"name": "eq"})
    eq_path = str(tmp_path / "eq.safetensors")
    rgb = smooth_image(40, 56, seed=2)
    for q in (1, 70):
        a, b = (unpack(codec.encode(rgb, model=p, quality=q).data) for p in (eq_path, src_path))
        assert a.chunks == b.chunks and a.symbol_crcs == b.symbol_crcs
    with torch.no_grad():
        m.g_a[0].weight[:, 3].normal_(0, 0.3)
        for mm in m.merge:
            mm.c1.weight[:, -1].normal_(0, 0.3)
    zoo.save_model(m, tmp_path / "eq", {"name": "eq"})
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        a, b = m.begin(x, 0.0), m.begin(x, 1.0)
        assert not torch.equal(a[-1], b[-1])
    with pytest.raises(ValueError, match="needs the quality"):
        m.begin(torch.rand(1, 3, 32, 32))
    for q in (1, 100):
        cdr = unpack(codec.encode(rgb, model=eq_path, quality=q).data)
        assert np.array_equal(npdecode.decode(cdr, model=eq_path), codec.decode(cdr, model=eq_path))
    with pytest.raises(ValueError, match="variable-rate"):
        MatNet(MatNetConfig.from_dict({**TINY_VR.to_dict(), "encoder_quality": True, "rate_knots": 0}))
