import numpy as np
import pytest

from convcodec.metrics import bd_rate, interp_curve, pareto, psnr, rate_window


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy(); b[0, 0, 0] = 16
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / (256 / 48)))
    assert psnr(a, a) == float("inf")


def test_bd_rate_of_a_scaled_curve_is_the_scale():
    pts = [(0.1, 25.0), (0.25, 28.0), (0.5, 31.0), (1.0, 34.0)]
    half = [(b * 0.5, q) for b, q in pts]
    assert bd_rate(pts, half) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(pts, pts) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(half, pts) == pytest.approx(100.0, abs=1e-6)


def test_rate_window_reaches_the_window_ends():
    pts = [(0.05, 20.0), (0.2, 26.0), (1.0, 34.0), (2.0, 38.0)]
    got = rate_window(pts, 0.1, 1.5)
    assert [b for b, _ in got] == [0.1, 0.2, 1.0, 1.5]
    assert [q for _, q in got] == pytest.approx([22.0, 26.0, 34.0, 36.0])
    # a curve that starts inside the window keeps its own first point
    assert rate_window(pts[1:], 0.1, 1.5)[0] == (0.2, 26.0)


def test_bd_rate_over_a_window_differs_where_the_curves_do():
    # test matches the anchor up to 1 bpp and needs twice the bits above it
    anchor = [(0.1, 25.0), (0.25, 28.0), (0.5, 31.0), (1.0, 34.0), (2.0, 37.0), (4.0, 40.0)]
    test = anchor[:4] + [(4.0, 37.0), (8.0, 40.0)]
    assert bd_rate(anchor, test, bpp_range=(0.1, 1.0)) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, test) > 10
    # a scaled curve keeps its BD-rate inside any window both curves cover
    half = [(b * 0.5, q) for b, q in anchor]
    assert bd_rate(anchor, half, bpp_range=(0.2, 1.5)) == pytest.approx(-50.0, abs=2.0)


def test_bd_rate_needs_overlap():
    assert bd_rate([(0.1, 20), (0.2, 21)], [(0.1, 30), (0.2, 31)]) is None


def test_pareto_and_interp():
    assert pareto([(0.5, 30), (0.4, 31), (0.6, 29), (0.7, 33)]) == [(0.4, 31), (0.7, 33)]
    assert interp_curve([0.1, 0.3], [20, 30], 0.2) == pytest.approx(25)
    assert interp_curve([0.1, 0.3], [20, 30], 0.05) is None


def test_entropy_clock_counts_the_coder_and_puts_it_back(tiny_model):
    from convcodec import codec, entropy
    from convcodec.metrics import EntropyClock
    from .conftest import smooth_image
    orig = entropy.encode
    clock = EntropyClock()
    try:
        codec.encode(smooth_image(16, 16), model=tiny_model)
        assert clock.seconds > 0
        clock.reset()
        assert clock.seconds == 0
    finally:
        clock.close()
    assert entropy.encode is orig
