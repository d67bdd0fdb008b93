import io

import numpy as np
import pytest
from PIL import Image

import convcodec
from convcodec import container
from convcodec.api import RateError

from .conftest import smooth_image


@pytest.fixture
def img():
    return smooth_image(26, 37, seed=7)


def test_compress_accepts_paths_arrays_pil_and_bytes(tmp_path, img, tiny_model):
    p = tmp_path / "a.png"
    Image.fromarray(img).save(p)
    outs = {convcodec.compress(x, model=tiny_model, steps=2)
            for x in (str(p), p, p.read_bytes(), Image.fromarray(img), img, img.astype(np.float32) / 255)}
    assert len(outs) == 1
    back = convcodec.decompress(outs.pop(), model=tiny_model)
    assert isinstance(back, Image.Image) and back.mode == "RGB" and back.size == (37, 26)


def test_decompress_from_a_path(tmp_path, img, tiny_model):
    p = tmp_path / "a.cdr"
    p.write_bytes(convcodec.compress(img, model=tiny_model))
    assert convcodec.decompress(p, model=tiny_model).size == (37, 26)


def test_max_bytes_gives_the_longest_prefix_that_fits(img, tiny_model):
    full = convcodec.compress(img, model=tiny_model)
    sizes = [len(convcodec.compress(img, model=tiny_model, steps=t)) for t in range(1, 5)]
    for budget in (sizes[0], sizes[1] + 1, sizes[2] - 1, len(full) + 100):
        data = convcodec.compress(img, model=tiny_model, max_bytes=budget)
        assert len(data) <= budget
        want = max(t for t in range(1, 5) if sizes[t - 1] <= budget)
        assert container.unpack(data).header.groups_stored == want
    with pytest.raises(RateError, match="cannot fit"):
        convcodec.compress(img, model=tiny_model, max_bytes=sizes[0] - 1)


def test_bpp_target(img, tiny_model):
    full = convcodec.compress(img, model=tiny_model)
    target = 8 * len(full) / (26 * 37) * 0.8
    data = convcodec.compress(img, model=tiny_model, bpp=target)
    assert 8 * len(data) / (26 * 37) <= target


def test_cut_and_decompress_steps_agree(img, tiny_model):
    full = convcodec.compress(img, model=tiny_model)
    two = convcodec.cut(full, steps=2)
    assert two == convcodec.compress(img, model=tiny_model, steps=2)
    a = np.asarray(convcodec.decompress(two, model=tiny_model))
    b = np.asarray(convcodec.decompress(full, model=tiny_model, steps=2))
    np.testing.assert_array_equal(a, b)


def test_pillow_plugin_open_and_save(tmp_path, img, tiny_model):
    p = tmp_path / "x.cdr"
    Image.fromarray(img).save(p, steps=3, model=tiny_model)
    assert container.unpack(p.read_bytes()).header.groups_stored == 3
    im = Image.open(p)
    assert im.format == "CDR" and im.size == (37, 26) and im.mode == "RGB"
    assert im.info["groups"] == (3, 4)
    im.decode_options = {"model": tiny_model}
    arr = np.asarray(im)
    np.testing.assert_array_equal(arr, np.asarray(convcodec.decompress(p.read_bytes(), model=tiny_model)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="CDR", model=tiny_model, steps=1)
    assert container.unpack(buf.getvalue()).header.groups_stored == 1


def test_pillow_plugin_reports_corruption(tmp_path, img, tiny_model):
    p = tmp_path / "x.cdr"
    data = bytearray(convcodec.compress(img, model=tiny_model))
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(container.ContainerError, match="checksum"):
        Image.open(p)


def test_budget_picks_the_model_that_decodes_best(img, tiny_model, other_model, monkeypatch):
    """With no model named, every current model is tried and the best
    picture within budget wins."""
    from convcodec import api, codec, zoo
    from convcodec.metrics import psnr
    monkeypatch.setattr(zoo, "current_models", lambda: [tiny_model, other_model])
    budget = 10_000
    data = api.encode_to_budget(img, None, None, budget)
    assert len(data) <= budget
    scores = {}
    for m in (tiny_model, other_model):
        d = api.encode_to_budget(img, m, None, budget)
        scores[d] = psnr(img, codec.decode(d, model=m))
    assert data == max(scores, key=scores.get)


def test_decompress_many_matches_decompress(tmp_path, img, tiny_model):
    datas = [convcodec.compress(smooth_image(26, 37, seed=s), model=tiny_model, steps=3) for s in range(3)]
    (tmp_path / "x.cdr").write_bytes(datas[0])
    files = [tmp_path / "x.cdr", *datas[1:]]
    got = convcodec.decompress_many(files, model=tiny_model, batch=2, temperature=1.0, seed=4)
    for d, g in zip(datas, got):
        want = convcodec.decompress(d, model=tiny_model, temperature=1.0, seed=4)
        assert g.size == (37, 26) and np.array_equal(np.asarray(g), np.asarray(want))


def test_superseded_models_still_decode_but_are_not_tried(img, monkeypatch, tmp_path):
    """A model whose card names ``superseded_by`` stays installed, so its
    files decode, but a budget search no longer tries it, and `convcodec
    models` says what replaced it."""
    import json
    from click.testing import CliRunner
    from convcodec import api, codec, zoo
    from convcodec.cli import main
    from .conftest import make_tiny
    make_tiny(tmp_path / "old", seed=0, name="old")
    make_tiny(tmp_path / "new", seed=1, name="new")
    card = json.loads((tmp_path / "old.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**card, "superseded_by": "new"}))
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    assert zoo.list_models() == ["new", "old"] and zoo.current_models() == ["new"]
    old_file = codec.encode(img, model="old").data
    assert codec.decode(old_file).shape == img.shape           # found by the name in the file
    budget = len(old_file) + 10_000
    assert api.encode_to_budget(img, None, None, budget) == api.encode_to_budget(img, "new", None, budget)
    out = CliRunner().invoke(main, ["models"]).output
    assert "old" not in out.split("\n(")[0] and "1 superseded models not shown" in out
    out = CliRunner().invoke(main, ["models", "--all"]).output
    assert "old (superseded by new; kept so that its files decode)" in out
