"""A few checks with the shipped default model (small crops keep them fast)."""
import os

import numpy as np
import pytest

from convcodec import codec, zoo
from convcodec.metrics import psnr

KODAK = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kodak", "kodim23.png")


@pytest.fixture(scope="module")
def crop():
    from convcodec.image import load_image
    if os.path.exists(KODAK):
        return load_image(KODAK)[200:296, 300:428]
    from .conftest import smooth_image
    return smooth_image(96, 128)


def test_default_model_is_installed_and_matches_its_card():
    assert zoo.DEFAULT_MODEL in zoo.list_models()
    net, info = zoo.load_model()
    card = info["card"]
    assert card["sha256"] == info["sha256"]
    assert card["config"]["steps"] == net.num_groups >= 8
    assert card["training"]["iterations"] > 0


def test_default_model_codes_a_photo_crop(crop):
    sizes, quality = [], []
    full = codec.encode(crop)
    for t in range(1, full.cdr.header.groups_total + 1):
        enc, rec = codec.encode(crop, steps=t, reconstruct=True)
        out = codec.decode(enc.data)
        np.testing.assert_array_equal(out, rec)
        sizes.append(len(enc.data)); quality.append(psnr(crop, out))
    assert sizes == sorted(sizes), "each extra group adds bytes"
    assert quality[-1] > quality[0] + 1.0, "more groups, better picture"
    assert quality[-1] > 24.0
    assert sizes[-1] == len(full.data)
