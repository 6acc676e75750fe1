"""GDN, the entropy models and the codecs' layouts, against hand computations."""

import math

import torch

from tasks.image_compression.entropy import EntropyBottleneck, GaussianConditional
from tasks.image_compression.models import FactorizedPrior, ScaleHyperprior
from tasks.image_compression.ops import GDN, lower_bound


def test_gdn_and_igdn_follow_the_formula():
    gdn, igdn = GDN(2), GDN(2, inverse=True)
    with torch.no_grad():
        for m in (gdn, igdn):  # beta = (1, 2), gamma = [[0.5, 0.1], [0.2, 0.3]] through the reparametrisation
            m.beta.copy_(torch.sqrt(torch.tensor([1.0, 2.0]) + m.pedestal))
            m.gamma.copy_(torch.sqrt(torch.tensor([[0.5, 0.1], [0.2, 0.3]]) + m.pedestal))
    x = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1)
    norm0 = 1.0 + 0.5 * 1.5 ** 2 + 0.1 * 2.0 ** 2
    norm1 = 2.0 + 0.2 * 1.5 ** 2 + 0.3 * 2.0 ** 2
    expected = torch.tensor([1.5 / math.sqrt(norm0), -2.0 / math.sqrt(norm1)])
    assert torch.allclose(gdn(x).flatten(), expected, atol=1e-5)
    assert torch.allclose(igdn(x).flatten(), torch.tensor([1.5 * math.sqrt(norm0), -2.0 * math.sqrt(norm1)]),
                          atol=1e-5)


def test_lower_bound_passes_gradients_that_push_up():
    x = torch.tensor([0.05, 0.5], requires_grad=True)
    (-lower_bound(x, 0.1).sum()).backward()  # the gradient asks both to grow: both get it
    assert x.grad.tolist() == [-1.0, -1.0]
    x.grad = None
    lower_bound(x, 0.1).sum().backward()  # asks both to shrink: the one under the bound gets nothing
    assert x.grad.tolist() == [0.0, 1.0]


def test_bottleneck_density_sums_to_one_and_its_quantiles_learn():
    torch.manual_seed(0)
    eb = EntropyBottleneck(3)
    values = torch.arange(-3000, 3001, dtype=torch.float32).view(1, 1, -1).expand(3, 1, -1)
    total = eb._likelihood(values).sum(-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-3)
    opt = torch.optim.Adam([eb.quantiles], lr=5.0)
    first = float(eb.aux_loss().detach())
    for _ in range(150):
        opt.zero_grad()
        eb.aux_loss().backward()
        opt.step()
    assert float(eb.aux_loss().detach()) < 0.02 * first
    # the learned tails hold the density's mass between them: c(lower) = tail/2, c(upper) = 1 - tail/2
    lower, median, upper = eb.quantiles[0, 0].tolist()
    assert lower < median < upper
    mass = eb._likelihood(torch.arange(math.ceil(lower), math.floor(upper) + 1.0).view(1, 1, -1).repeat(3, 1, 1))
    assert float(mass[0].sum()) > 0.99


def test_gaussian_conditional_likelihood_is_the_integral_over_the_bin():
    gc = GaussianConditional()
    y = torch.tensor([0.0, 1.0, -2.0])
    s = torch.tensor([1.0, 0.5, 3.0])
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    expected = [phi((v + 0.5) / sd) - phi((v - 0.5) / sd) for v, sd in zip(y.tolist(), s.tolist())]
    assert torch.allclose(gc.likelihood(y, s), torch.tensor(expected), atol=1e-6)
    # scales below the bound are raised to it
    assert torch.allclose(gc.likelihood(torch.zeros(1), torch.tensor([1e-3])),
                          gc.likelihood(torch.zeros(1), torch.tensor([0.11])))


def test_noise_in_training_rounding_at_test():
    eb = EntropyBottleneck(2)
    x = torch.full((1, 2, 3, 3), 0.3)
    eb.train()
    noisy, _ = eb(x)
    assert not torch.equal(noisy, noisy.round()) and (noisy - x).abs().max() <= 0.5
    eb.eval()
    rounded, _ = eb(x)
    medians = eb.medians.view(1, -1, 1, 1)
    assert torch.equal(rounded, torch.round(x - medians) + medians)


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _gdn(c):
    return c * c + c


def test_parameter_counts_match_the_papers_layer_lists():
    """Ballé et al. 2018, Fig. 4: g_a = 4 x conv5x5/2 with 3 GDNs, g_s its mirror with IGDNs, h_a = conv3x3/1 + 2 x
    conv5x5/2, h_s = 2 x deconv5x5/2 + conv3x3/1; the bottleneck's density has per channel filters (3, 3, 3)."""
    n, m = 128, 192
    g_a = _conv(3, n, 5) + 2 * _conv(n, n, 5) + _conv(n, m, 5) + 3 * _gdn(n)
    g_s = _conv(m, n, 5) + 2 * _conv(n, n, 5) + _conv(n, 3, 5) + 3 * _gdn(n)

    def density(c):  # matrices 1x3, 3x3, 3x3, 3x1; biases 3, 3, 3, 1; factors 3, 3, 3; quantiles 3
        return c * (3 + 9 + 9 + 3 + 3 + 3 + 3 + 1 + 3 + 3 + 3 + 3)

    factorized = FactorizedPrior(n, m, 4)
    assert sum(p.numel() for p in factorized.parameters()) == g_a + g_s + density(m)
    h_a = _conv(m, n, 3) + 2 * _conv(n, n, 5)
    h_s = 2 * _conv(n, n, 5) + _conv(n, m, 3)
    hyper = ScaleHyperprior(n, m, 4)
    assert sum(p.numel() for p in hyper.parameters()) == g_a + g_s + h_a + h_s + density(n)


def test_depth_sets_the_downsampling_and_shapes_round_trip():
    for depth in (2, 3, 4):
        codec = ScaleHyperprior(8, 12, depth, hyper_channels=8)
        x = torch.rand(2, 3, 64, 64)
        out = codec(x)
        assert out.x_hat.shape == x.shape
        y_lik, z_lik = out.likelihoods
        assert y_lik.shape == (2, 12, 64 >> depth, 64 >> depth)
        assert z_lik.shape == (2, 8, 64 >> (depth + 2), 64 >> (depth + 2))
        assert codec.stride == 2 ** (depth + 2)
