import json

import pytest
import torch

from convcodec import zoo
from convcodec.nets.convdraw import ConvDraw

from .conftest import make_tiny


def test_model_is_rebuilt_from_its_file_alone(tmp_path):
    path = make_tiny(tmp_path / "m", seed=3, latent=5)
    from safetensors.torch import load_file, safe_open
    with safe_open(path, "pt") as f:
        cfg = zoo.config_from_dict(json.loads(f.metadata()["config"]))
    assert cfg.latent == 5
    rebuilt = ConvDraw(cfg)
    rebuilt.load_state_dict(load_file(path))
    net, info = zoo.load_model(path)
    assert info["name"] == "tiny"
    for (ka, a), (kb, b) in zip(sorted(net.state_dict().items()), sorted(rebuilt.state_dict().items())):
        assert ka == kb and torch.equal(a, b)


def test_weights_that_do_not_match_their_card_are_refused(tmp_path):
    path = make_tiny(tmp_path / "m")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(zoo.ModelError, match="do not match their card"):
        zoo.load_model(path)


def test_missing_card_is_refused(tmp_path):
    path = make_tiny(tmp_path / "m")
    (tmp_path / "m.json").unlink()
    with pytest.raises(zoo.ModelError, match="card missing"):
        zoo.load_model(path)


def test_unknown_name_lists_the_available_models():
    with pytest.raises(zoo.ModelError, match="unknown model 'nope'.*available"):
        zoo.resolve("nope")
