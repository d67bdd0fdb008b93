"""Encoder-side refinement (convcodec.refine): other integers, same decoder."""
import numpy as np
import pytest
from click.testing import CliRunner

from convcodec import api, codec
from convcodec.cli import main
from convcodec.container import unpack
from convcodec.refine import model_lambda
from convcodec.zoo import ModelError, load_model

from .conftest import make_tiny, smooth_image

LAMBDA = {"training": {"lambda": 0.05, "lambda_first": 0.005}}


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A tiny model whose card, like a trained one's, names its lambda."""
    return make_tiny(tmp_path_factory.mktemp("refine") / "tiny-l", card=LAMBDA)


def _cost(enc, rec, img, lam):
    """The model's measure: estimated bits per pixel + lambda * 255^2 * MSE."""
    h, w = img.shape[:2]
    mse = np.mean((rec.astype(np.float64) - img) ** 2)
    return sum(enc.estimated_bits) / (h * w) + lam * mse


@pytest.mark.parametrize("steps", [None, 2])
def test_refined_file_decodes_to_the_encoders_picture_and_costs_no_more(trained_tiny, steps):
    img = smooth_image(40, 56, seed=3)
    net, info = load_model(trained_tiny)
    base, base_rec = codec.encode(img, model=trained_tiny, steps=steps, reconstruct=True)
    ref, ref_rec = codec.encode(img, model=trained_tiny, steps=steps, reconstruct=True, refine=8)
    t = len(ref.cdr.chunks)
    assert t == len(base.cdr.chunks) == (steps or net.num_groups)
    assert ref.data != base.data                       # it chose other integers...
    np.testing.assert_array_equal(codec.decode(ref.data, model=trained_tiny), ref_rec)   # ...that decode as encoded
    lam = model_lambda(info["card"], t, net.num_groups)
    # Never worse than the network's guess by the model's own measure (the
    # refiner scores float pictures; allow for the 8-bit rounding of these).
    assert _cost(ref, ref_rec, img, lam) <= _cost(base, base_rec, img, lam) * 1.001


def test_lambda_follows_the_training_schedule():
    card = {"training": {"lambda": 0.08, "lambda_first": 0.0005}}
    assert model_lambda(card, 1, 4) == pytest.approx(0.0005)
    assert model_lambda(card, 4, 4) == pytest.approx(0.08)
    assert model_lambda({"training": {"lambda": 0.01}}, 2, 4) == pytest.approx(0.01)


def test_refine_zero_is_the_plain_encoder(trained_tiny):
    img = smooth_image(24, 24)
    assert codec.encode(img, model=trained_tiny, refine=0).data == codec.encode(img, model=trained_tiny).data


def test_model_without_lambda_refuses_clearly(tiny_model, tmp_path):
    img = smooth_image(24, 24)
    with pytest.raises(ModelError, match="lambda"):
        codec.encode(img, model=tiny_model, refine=2)
    src = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(img).save(src)
    r = CliRunner().invoke(main, ["compress", str(src), "-o", str(tmp_path / "a.cdr"),
                                  "--model", tiny_model, "--refine", "2"])
    assert r.exit_code != 0 and "lambda" in r.output
    assert not (tmp_path / "a.cdr").exists()


def test_cli_and_api_refine(trained_tiny, tmp_path):
    img = smooth_image(32, 40, seed=5)
    src = tmp_path / "b.png"
    from PIL import Image
    Image.fromarray(img).save(src)
    out = tmp_path / "b.cdr"
    r = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--model", trained_tiny,
                                  "--refine", "4"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == api.compress(img, model=trained_tiny, refine=4)
    assert unpack(out.read_bytes()).header.groups_stored == 4
    # Within a byte budget, the refined file still fits.
    budget = len(api.compress(img, model=trained_tiny, steps=2)) + 1
    data = api.compress(img, model=trained_tiny, max_bytes=budget, refine=4)
    assert len(data) <= budget


def test_too_big_for_refinement_is_refused_before_any_work(trained_tiny, monkeypatch):
    import convcodec.refine as refine
    monkeypatch.setattr(refine, "MAX_PIXELS", 500)
    with pytest.raises(ValueError, match="MP"):
        codec.encode(smooth_image(24, 24), model=trained_tiny, refine=2)
    codec.encode(smooth_image(16, 16), model=trained_tiny, refine=1)      # 256 pixels: fine


def test_travel_is_short_at_low_rates_and_long_at_high_ones():
    """Adam's total travel (bins) follows lambda between the two knots,
    log-linearly, and stays at the knots' values outside them."""
    from convcodec.refine import TRAVEL, TRAVEL_LAMBDAS, travel
    (t0, t1), (l0, l1) = TRAVEL, TRAVEL_LAMBDAS
    assert travel(l0 / 10) == pytest.approx(t0) and travel(l0) == pytest.approx(t0)
    assert travel(l1) == pytest.approx(t1) and travel(l1 * 10) == pytest.approx(t1)
    assert travel((l0 * l1) ** 0.5) == pytest.approx((t0 * t1) ** 0.5)
    lams = np.geomspace(l0, l1, 9)
    assert all(np.diff([travel(v) for v in lams]) > 0)
