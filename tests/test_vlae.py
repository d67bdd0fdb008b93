"""The VLAE backbone (issue 18) behind the same group interface: every
prefix round-trips, the flat prior codes exactly, training runs."""
import numpy as np
import pytest
import torch
from PIL import Image

from convcodec import codec, zoo
from convcodec.container import pack, truncate, unpack
from convcodec.nets.vlae import VLAE, VLAEConfig
from convcodec.train import TrainConfig, train

from .conftest import smooth_image

TINY_VLAE = VLAEConfig(latent=4, width=8, levels=3, blocks=1, analysis=(8, 8, 8), synthesis=(8, 8), rate_knots=4)


@pytest.fixture(scope="module")
def tiny_vlae(tmp_path_factory):
    torch.manual_seed(0)
    m = VLAE(TINY_VLAE)
    with torch.no_grad():
        m.log_width.fill_(-3.0)
        m.log_sigma.normal_(-1.0, 0.5)
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d) and not mod.weight.any():
                mod.weight.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("vlae") / "tiny-vlae"
    zoo.save_model(m, path, {"name": "tiny-vlae"})
    return str(path) + ".safetensors"


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (40, 72)])
def test_every_prefix_round_trips(tiny_vlae, hw):
    rgb = smooth_image(*hw, seed=hw[0])
    full = codec.encode(rgb, model=tiny_vlae, quality=70)
    assert full.cdr.header.version == 2 and full.cdr.header.groups_total == 3
    for t in range(4):
        enc, rec = codec.encode(rgb, model=tiny_vlae, quality=70, steps=t, reconstruct=True)
        assert enc.data == pack(truncate(full.cdr, t))
        np.testing.assert_array_equal(codec.decode(enc.data, model=tiny_vlae), rec)
        assert rec.shape == rgb.shape


def test_groups_go_from_deepest_to_shallowest(tiny_vlae):
    """Group 0 is the deepest latent (1/32 of the image), the last the shallowest (1/8)."""
    net, _ = zoo.load_model(tiny_vlae)
    st, _ = net.init_state(1, 64, 96, quality=0.5)
    sizes = []
    for g in range(net.num_groups):
        mu, _ = net.prior(st)
        sizes.append(tuple(mu.shape[-2:]))
        st = net.update(st, mu)
    assert sizes == [(2, 3), (4, 6), (8, 12)]


def test_flat_prior_scales_are_constant_and_exact(tiny_vlae):
    net, _ = zoo.load_model(tiny_vlae)
    st, _ = net.init_state(2, 64, 96, quality=0.3)
    p = net.prior_of(st, True)
    assert p.idx.shape == (2, 4, 2, 3) and (p.idx == p.idx[:, :, :1, :1]).all()


def test_quality_sets_the_rate(tiny_vlae):
    rgb = smooth_image(48, 64)
    sizes = [len(codec.encode(rgb, model=tiny_vlae, quality=q).data) for q in (1, 50, 100)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_training_runs_and_exports(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(48, 64)).save(data / "0.png")
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.02, warmup=1, ckpt_minutes=100)
    train(TINY_VLAE.to_dict(), tc, str(tmp_path / "run"), "v")
    net, _ = zoo.load_model(str(tmp_path / "run" / "v.safetensors"))
    assert net.cfg.backbone == "vlae"
    enc = codec.encode(smooth_image(32, 32), model=str(tmp_path / "run" / "v.safetensors"), quality=50)
    assert unpack(enc.data).header.quality == 50


def test_the_generator_runs_in_fixed_point(tiny_vlae):
    """The VLAE's decoder (v, merge_in, gen, up, g_s) is fixed point when
    coding: the encoder's reconstruction is the decoded picture, bit for bit."""
    from convcodec.nets.fixed import FixedConv2d, FixedConvTranspose2d
    net, _ = zoo.load_model(tiny_vlae)
    twin = net.coder()
    assert isinstance(twin.v[0], FixedConv2d) and isinstance(twin.up[0], FixedConvTranspose2d)
    assert isinstance(twin.gen[0][0].c2, FixedConv2d) and not isinstance(twin.q_heads[0], FixedConv2d)
    rgb = smooth_image(40, 24)
    enc, rec = codec.encode(rgb, model=tiny_vlae, reconstruct=True)
    assert np.array_equal(codec.decode(enc.data, model=tiny_vlae), rec)
