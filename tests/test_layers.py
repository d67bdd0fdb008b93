"""Building blocks: GDN as a matrix product equals its textbook 1x1-convolution form."""
import torch
import torch.nn.functional as F

from convcodec.nets.layers import GDN


def test_gdn_matches_the_convolution_form():
    torch.manual_seed(0)
    for inverse in (False, True):
        g = GDN(16, inverse=inverse)
        with torch.no_grad():
            g.gamma.add_(torch.rand(16, 16) * 0.05)
            g.beta.mul_(0.5)
        x = torch.randn(3, 16, 20, 24)
        norm = torch.sqrt(F.conv2d(x * x, g.gamma.abs().view(16, 16, 1, 1), g.beta.abs() + 1e-6))
        ref = x * norm if inverse else x / norm
        torch.testing.assert_close(g(x), ref, rtol=1e-5, atol=1e-5)           # batch path
        torch.testing.assert_close(g(x[1:2]), ref[1:2], rtol=1e-5, atol=1e-5)  # single-image path


def test_gdn_couplings_train():
    """gamma is used as |gamma|, whose gradient at exactly 0 is 0: couplings
    must start above 0 (GAMMA_FLOOR) or they never move (every model before
    the floor had a diagonal gamma). unstick_gdn lifts a trained model's."""
    from convcodec.nets.layers import GAMMA_FLOOR, unstick_gdn
    torch.manual_seed(0)
    g = GDN(8, inverse=True)
    off = ~torch.eye(8, dtype=torch.bool)
    assert (g.gamma[off] == GAMMA_FLOOR).all()
    x = torch.randn(2, 8, 5, 5)
    target = torch.randn(2, 8, 5, 5)
    ((g(x) - target) ** 2).mean().backward()
    assert (g.gamma.grad[off] != 0).all()

    with torch.no_grad():
        g.gamma[off] = 0.0                      # a model trained before the floor
    g.gamma.grad = None
    ((g(x) - target) ** 2).mean().backward()
    assert (g.gamma.grad[off] == 0).all()       # stuck
    assert unstick_gdn(g) == 56 and (g.gamma[off] == GAMMA_FLOOR).all()
    assert unstick_gdn(g) == 0
