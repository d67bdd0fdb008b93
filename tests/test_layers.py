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
