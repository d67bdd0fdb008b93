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
    # The card's config is the one it shipped with; options added since take
    # their defaults (which leave the network as it was) on both sides.
    assert zoo.config_from_dict(card["config"]).to_dict() == net.cfg.to_dict() and net.num_groups >= 8
    assert card["config"].items() <= net.cfg.to_dict().items()
    assert card["training"]["iterations"] > 0
    assert codec.is_portable(net) and codec.is_variable_rate(net)


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


@pytest.mark.parametrize("chain", [(zoo.DEFAULT_MODEL,), ("matnet-vr16c", "matnet-vr16t")])
def test_tables_code_their_networks_pictures_in_fewer_bytes(chain):
    """The default (matnet-vr24c) and matnet-vr16c are their networks'
    source (version 2) with fitted code tables and context tables (version
    4); matnet-vr16t has matnet-vr16's code tables only (version 3). Each
    writes the same offsets and pictures as its source, in fewer bytes (on
    a 256x384 crop: about 1% a step, where a small crop's few hundred bytes
    would be within the coder's word padding)."""
    from convcodec.image import load_image
    if not os.path.exists(KODAK):
        pytest.skip("Kodak is not beside the checkout")
    rgb = load_image(KODAK)[:256, :384]
    net, info = zoo.load_model(chain[0])
    assert codec.file_version(net.cfg) == 4 and info["card"]["code_tables"]["context_offsets_counted"] > 0
    src = info["card"]["code_tables"]["source"].split()[0]
    models = [*chain, src]
    for q in (20, 80):
        encs = [codec.encode(rgb, model=m, quality=q, reconstruct=True) for m in models]
        assert [e.cdr.header.version for e, _ in encs] == [4, 3][:len(chain)] + [2]
        assert all(e.cdr.symbol_crcs == encs[0][0].cdr.symbol_crcs for e, _ in encs)
        assert all(np.array_equal(pic, encs[0][1]) for _, pic in encs)
        sizes = [len(e.data) for e, _ in encs]
        assert all(a < b for a, b in zip(sizes, sizes[1:]))


def test_legacy_models_only_decode(crop):
    """The version-1 models are kept to decode their files; they write none."""
    legacy = [n for n, c in zoo.installed_cards().items() if c.get("decode_only")]
    assert "convdraw-v2" in legacy and "matnet-mid" in legacy and zoo.DEFAULT_MODEL not in legacy
    with pytest.raises(zoo.ModelError, match="kept only to decode"):
        codec.encode(crop, model="matnet-mid")
    # a file it wrote before still decodes, with its version-1 table
    _, info = zoo.load_model("matnet-mid")
    info["card"]["decode_only"] = False
    try:
        enc, rec = codec.encode(crop, model="matnet-mid", reconstruct=True)
    finally:
        info["card"]["decode_only"] = True
    assert enc.cdr.header.version == 1
    np.testing.assert_array_equal(codec.decode(enc.data), rec)


@pytest.mark.parametrize("family", ["matnet"])
def test_every_shipped_family_round_trips_every_prefix(crop, family):
    """`--model matnet` / `--model convdraw` pick the family's default model;
    every number of stored groups decodes to what the encoder predicted."""
    net, info = zoo.load_model(family)
    assert info["name"] == zoo.FAMILY_DEFAULTS[family] and net.cfg.backbone == family
    full = codec.encode(crop, model=family)
    for t in range(net.num_groups + 1):
        enc, rec = codec.encode(crop, model=family, steps=t, reconstruct=True)
        np.testing.assert_array_equal(codec.decode(enc.data), rec)
        np.testing.assert_array_equal(codec.decode(full.data, steps=t), rec)


def test_kodim15_fits_in_6000_bytes_and_decodes():
    """Issue 7's check: the best file of at most 6000 bytes (any current model)."""
    path = os.path.join(os.path.dirname(KODAK), "kodim15.png")
    if not os.path.exists(path):
        pytest.skip("Kodak not available here")
    import convcodec
    data = convcodec.compress(path, max_bytes=6000)
    img = convcodec.decompress(data)
    assert len(data) <= 6000 and img.size == (768, 512)
