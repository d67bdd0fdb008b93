"""The training loop runs, exports a loadable model and resumes exactly where it stopped."""
import numpy as np
import torch
from PIL import Image

from convcodec import codec, zoo
from convcodec.train import TrainConfig, train

from .conftest import TINY, smooth_image


def test_train_export_and_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(48, 64, seed=i)).save(data / f"{i}.png")
    out = tmp_path / "run"
    tc = TrainConfig(data=(str(data),), crop=32, batch=2, minutes=0.05, warmup=2, ckpt_minutes=100)
    train(TINY.to_dict(), tc, str(out), "t")
    ck = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck["step"] > 0
    net, info = zoo.load_model(str(out / "t.safetensors"))
    assert info["card"]["training"]["iterations"] == ck["step"]
    rgb = smooth_image(20, 24)
    assert codec.decode(codec.encode(rgb, model=str(out / "t.safetensors")).data,
                        model=str(out / "t.safetensors")).shape == rgb.shape
    # resume: a larger budget continues from the saved step and RNG state
    train(TINY.to_dict(), TrainConfig(**{**tc.__dict__, "minutes": 0.1}), str(out), "t")
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] > ck["step"]


def test_refuses_kodak(tmp_path):
    import pytest
    from convcodec.train import load_images
    d = tmp_path / "kodak"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "kodim01.png")
    with pytest.raises(SystemExit, match="Kodak"):
        load_images([str(d)])
