import numpy as np
from PIL import Image
import pytest
import torch

from convcodec import zoo
from convcodec.nets.convdraw import ConvDraw, ConvDrawConfig
from convcodec.nets.matnet import MatNet, MatNetConfig

# Tiny models run fastest on one thread, and a second thread only fights any
# other job on a 2-core machine (a training run, CI's neighbours).
torch.set_num_threads(1)

TINY = ConvDrawConfig(steps=4, latent=4, hidden=16, enc_hidden=8, read=8, canvas=16,
                      analysis=(8, 8, 16), synthesis=(8, 8))


def make_tiny(path, seed=0, name="tiny", card=None, **over):
    torch.manual_seed(seed)
    cfg = ConvDrawConfig.from_dict({**TINY.to_dict(), **over})
    m = ConvDraw(cfg)
    # Random init codes near-zero offsets; a fine quantization grid makes the
    # tests exercise real symbols in the coder, not only zeros.
    with torch.no_grad():
        m.log_width.fill_(-4.0)
    zoo.save_model(m, path, {"name": name, **(card or {})})
    return str(path) + ".safetensors"


def _perturb_zero_convs(m):
    """Residual branches (and the scale networks' last layers) start at zero;
    perturb them so the tests exercise every module, not only the skip paths."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d) and not mod.weight.any():
            mod.weight.normal_(0, 0.1)


TINY_MATNET = MatNetConfig(latent=4, width=8, groups=(1, 2, 2), analysis=(8, 8, 8), synthesis=(8, 8))


def make_tiny_matnet(path, seed=0, name="tiny-matnet"):
    torch.manual_seed(seed)
    m = MatNet(TINY_MATNET)
    with torch.no_grad():
        m.log_width.fill_(-4.0)
        _perturb_zero_convs(m)
    zoo.save_model(m, path, {"name": name})
    return str(path) + ".safetensors"


TINY_VR = MatNetConfig(latent=4, width=8, groups=(1, 2, 2), analysis=(8, 8, 8), synthesis=(8, 8),
                       rate_knots=4, exact_scales=True, scale_hidden=8)


def make_tiny_vr(path, seed=0, name="tiny-vr"):
    """A tiny variable-rate MatNet with exact (portable) scales, perturbed so
    that the scale networks see real context and give varied scales."""
    torch.manual_seed(seed)
    m = MatNet(TINY_VR)
    with torch.no_grad():
        m.log_width.fill_(-3.0)
        _perturb_zero_convs(m)
        for net in m.scale_nets:
            net.c3.weight.normal_(0, 0.5)
            net.c3.bias.fill_(-2.0)
        m.log_sigma0.fill_(-2.0)
    zoo.save_model(m, path, {"name": name})
    return str(path) + ".safetensors"


def _with_random_tables(src, path, name, buffer, seed, **cfg):
    """The model at ``src`` with config options ``cfg`` added, whose new
    ``buffer`` of tables (left at its Gaussian start) is scaled by random
    factors in [0.5, 1.5): tables nothing like the Gaussian's."""
    net, _ = zoo.load_model(src)
    m = MatNet(MatNetConfig.from_dict({**net.cfg.to_dict(), **cfg}))
    missing, _ = m.load_state_dict(net.state_dict(), strict=False)
    assert missing == [buffer]
    with torch.no_grad():
        t = getattr(m, buffer)
        t.mul_(torch.rand(t.shape, generator=torch.Generator().manual_seed(seed)) + 0.5)
    zoo.save_model(m, path, {"name": name})
    return str(path) + ".safetensors"


def make_tiny_tables(path, seed=0, name="tiny-tables"):
    """make_tiny_vr's networks (same seed: the same weights) with random code
    tables (version-3 files)."""
    return _with_random_tables(make_tiny_vr(str(path) + "-networks", seed=seed), path, name,
                               "coder_table", seed, coder_tables=True)


def make_tiny_ctx(path, seed=0, name="tiny-ctx"):
    """make_tiny_tables' networks and tables (same seed) with random context
    tables (version-4 files)."""
    return _with_random_tables(make_tiny_tables(str(path) + "-tables", seed=seed), path, name,
                               "coder_context", seed + 1, coder_context=True)


@pytest.fixture(scope="session")
def tiny_ctx(tmp_path_factory):
    return make_tiny_ctx(tmp_path_factory.mktemp("ctx") / "tiny-ctx")


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory):
    return make_tiny_tables(tmp_path_factory.mktemp("tables") / "tiny-tables")


@pytest.fixture(scope="session")
def tiny_vr(tmp_path_factory):
    return make_tiny_vr(tmp_path_factory.mktemp("vr") / "tiny-vr")


@pytest.fixture(scope="session")
def tiny_matnet(tmp_path_factory):
    return make_tiny_matnet(tmp_path_factory.mktemp("matnet") / "tiny-matnet")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def other_model(tmp_path_factory):
    """Same architecture and name, different weights: a file from 'another model'."""
    return make_tiny(tmp_path_factory.mktemp("models2") / "tiny", seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def smooth_image(h, w, seed=0):
    """A photo-like test image: smooth gradients plus texture."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 9.0 + c) * np.cos(yy / 7.0 - c) for c in range(3)], -1)
    img += r.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def photo_folder(folder, n, h=48, w=64, name="{i}.png"):
    """A folder of ``n`` smooth_image PNGs (seeds 0..n-1), named by ``name``."""
    folder.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(h, w, seed=i)).save(folder / name.format(i=i, n=i + 1))
    return folder
