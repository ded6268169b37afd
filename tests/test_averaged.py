"""SmoothGrad and integrated gradients: exact tiny nets, slow loops on the real model, hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.averaged import IG_METHODS, _smoothgrad_mean, ig_alphas, integrated_gradients, smoothgrad
from tiny_net import tiny


# -- tiny nets with exact answers -----------------------------------------------------------
def linear_net(classes: int = 4, seed: int = 0) -> nn.Sequential:
    """Two linear layers: F(x) = W2 (W1 x + b1) + b2, so dF_c/dx = (W2 W1)_c everywhere."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 5, 7), nn.Linear(7, classes)).eval()


def linear_gradient(net, c: int) -> torch.Tensor:
    return (net[2].weight[c] @ net[1].weight).detach().view(3, 6, 5)


class Quadratic(nn.Module):
    """F_c(x) = sum_i w_ci x_i^2: the gradient 2 w_c x is linear along any straight path."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.w = nn.Parameter(torch.randn(classes, 3 * 4 * 4))

    def forward(self, x):
        return x.flatten(1).pow(2) @ self.w.t()


def test_smoothgrad_linear_net_is_the_gradient():
    net = linear_net()
    x = torch.rand(2, 3, 6, 5)
    g = linear_gradient(net, 2)
    # The gradient does not depend on the input, so every noisy copy has the same one.
    plain = smoothgrad(net, x, target=2, n=5, noise=0.3, seed=0)
    torch.testing.assert_close(plain, g.abs().amax(0).expand(2, 6, 5))
    sq = smoothgrad(net, x, target=2, n=5, noise=0.3, squared=True, seed=0)
    torch.testing.assert_close(sq, g.pow(2).amax(0).expand(2, 6, 5))


def test_smoothgrad_quadratic_net_equals_the_noise_average():
    # dF_c/dx = 2 w_c (x + e): the plain mean gradient is 2 w_c (x + mean(e)), checked against
    # the same noise drawn from the same seeded generator.
    net = Quadratic()
    x = torch.rand(2, 3, 4, 4)
    n, level = 6, 0.2
    got = smoothgrad(net, x, target=[0, 2], n=n, noise=level, seed=7)
    gen = torch.Generator().manual_seed(7)
    e = torch.randn((2 * n, 3, 4, 4), generator=gen).view(2, n, 3, 4, 4)
    sigma = level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    w = net.w.detach()[[0, 2]].view(2, 3, 4, 4)
    mean_g = 2 * w * (x + sigma.view(2, 1, 1, 1) * e.mean(1))
    torch.testing.assert_close(got, mean_g.abs().amax(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["cubic", "uniform"])
@pytest.mark.parametrize("method", IG_METHODS)
def test_ig_linear_net_is_exact(method, spacing):
    net = linear_net()
    x = torch.rand(3, 3, 6, 5)
    base = torch.rand(3, 6, 5)
    r = integrated_gradients(net, x, target=[0, 1, 3], baseline=base, points=5, method=method,
                             batch_size=4, spacing=spacing)  # 15 rows in 4 chunks
    want = torch.stack([(x[i] - base) * linear_gradient(net, c) for i, c in enumerate((0, 1, 3))])
    torch.testing.assert_close(r.attributions, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        diff = torch.stack([net(x[i:i + 1])[0, c] - net(base[None])[0, c] for i, c in enumerate((0, 1, 3))])
    torch.testing.assert_close(r.score_difference, diff, rtol=1e-5, atol=1e-5)
    assert float(r.completeness_error.max()) < 1e-4
    assert r.targets.tolist() == [0, 1, 3]


@pytest.mark.parametrize("method, alphas, weights", [
    ("riemann_left", [0, 1 / 4, 2 / 4, 3 / 4], [1 / 4] * 4),
    ("riemann_right", [1 / 4, 2 / 4, 3 / 4, 1], [1 / 4] * 4),
    ("riemann_middle", [1 / 8, 3 / 8, 5 / 8, 7 / 8], [1 / 4] * 4),
    ("trapezoid", [0, 1 / 3, 2 / 3, 1], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
])
def test_ig_quadratic_net_follows_each_rule(method, alphas, weights):
    net = Quadratic()
    x = torch.rand(2, 3, 4, 4)
    base = torch.rand(2, 3, 4, 4)
    w = net.w.detach()[1].view(3, 4, 4)
    path = sum(wk * 2 * w * (base + a * (x - base)) for a, wk in zip(alphas, weights))
    r = integrated_gradients(net, x, target=1, baseline=base, points=4, method=method, batch_size=3,
                             spacing="uniform")
    torch.testing.assert_close(r.attributions, (x - base) * path, rtol=1e-5, atol=1e-6)
    # The gradient is linear in alpha: the midpoint and trapezoid rules integrate it exactly.
    if method in ("riemann_middle", "trapezoid"):
        assert float(r.completeness_error.max()) < 1e-4
    else:
        assert float(r.completeness_error.min()) > 1e-4


def test_ig_cubic_spacing_is_the_rule_in_t():
    # alpha = t^3 on the trapezoid nodes t = 0, 1/2, 1; weights (1/4, 1/2, 1/4) * 3 t^2 = (0, 3/8, 3/4),
    # rescaled to sum to 1.
    alphas, weights = ig_alphas(3, "trapezoid", "cubic")
    assert alphas == [0.0, 1 / 8, 1.0]
    assert weights == pytest.approx([0.0, 1 / 3, 2 / 3])
    net = Quadratic()
    x, base = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    w = net.w.detach()[0].view(3, 4, 4)
    path = 1 / 3 * 2 * w * (base + (x - base) / 8) + 2 / 3 * 2 * w * x
    r = integrated_gradients(net, x, target=0, baseline=base, points=3)
    torch.testing.assert_close(r.attributions, (x - base) * path, rtol=1e-5, atol=1e-6)


# -- the real model against slow loops --------------------------------------------------------
def logit_gradient(model, x, c):
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi)[0, c], xi)
    return g


def rel_error(got, want):
    return float((got - want).norm() / want.norm())


def test_smoothgrad_real_equals_loop(lite0, cat_coffee, snapshot):
    snap = snapshot(lite0.module)
    n, level, seed = 3, 0.15, 11
    got = smoothgrad(lite0, cat_coffee, n=n, noise=level, seed=seed, batch_size=32)
    got_sq = smoothgrad(lite0, cat_coffee, n=n, noise=level, seed=seed, squared=True)
    snap.assert_unchanged()
    # One chunk holds all 6 rows, so the noise is one draw of (6, 3, H, W), image-major.
    e = torch.randn((2 * n, 3, 224, 224), generator=torch.Generator().manual_seed(seed))
    for i, c in enumerate((285, 967)):  # top-1 of the clean images
        x = cat_coffee[i:i + 1]
        sigma = level * (x.max() - x.min())
        grads = [logit_gradient(lite0, x + sigma * e[i * n + s], c) for s in range(n)]
        mean = sum(grads) / n
        # Normwise: the library forms x + sigma e with one fused addcmul, the loop with two ops;
        # that last-bit difference flips a few ReLU6 masks (measured ~1e-3 relative), where a
        # different noise draw gives ~0.8.
        assert rel_error(got[i], mean.abs().amax(1)[0]) < 1e-2
        mean_sq = sum(g * g for g in grads) / n
        assert rel_error(got_sq[i], mean_sq.amax(1)[0]) < 1e-2
    snap.assert_unchanged()


def test_smoothgrad_chunked_equals_unchunked(lite0, cat_coffee, snapshot):
    # B x n = 8 rows through batch_size 3 (3 chunks, the last one short) and through one chunk,
    # with the same explicit noise per row.
    snap = snapshot(lite0.module)
    n = 4
    noise = torch.randn((2 * n, 3, 224, 224), generator=torch.Generator().manual_seed(3))
    source = lambda first, rows: noise[first:first + rows]  # noqa: E731
    sigma = torch.tensor([0.1, 0.2])
    targets = torch.tensor([285, 967])
    with fv.hooks.session(lite0):
        chunked = _smoothgrad_mean(lite0, cat_coffee, targets, n, sigma, False, 3, source)
        whole = _smoothgrad_mean(lite0, cat_coffee, targets, n, sigma, False, 64, source)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-7)
    assert whole.abs().amax() > 0
    snap.assert_unchanged()


def test_ig_real_equals_loop(lite0, cat_coffee, snapshot):
    snap = snapshot(lite0.module)
    steps = 4
    r = integrated_gradients(lite0, cat_coffee, target=[285, 967], points=steps, baseline=0.5,
                             method="riemann_middle", batch_size=3, spacing="uniform")  # 3 chunks
    snap.assert_unchanged()
    base = torch.full((1, 3, 224, 224), 0.5)
    for i, c in enumerate((285, 967)):
        x = cat_coffee[i:i + 1]
        total = torch.zeros_like(x)
        for k in range(steps):
            total += logit_gradient(lite0, base + (k + 0.5) / steps * (x - base), c) / steps
        assert rel_error(r.attributions[i:i + 1], (x - base) * total) < 1e-3
        with torch.no_grad():
            diff = lite0(x)[0, c] - lite0(base)[0, c]
        torch.testing.assert_close(r.score_difference[i], diff, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ig_completeness_on_the_real_model(lite0, cat_coffee, snapshot):
    # 2 x 64 gradient evaluations, black baseline, trapezoid in t with cubic spacing. Measured:
    # ~1% of the score difference (uniform spacing: 8-24%). docs/attribution_more.md has the table.
    snap = snapshot(lite0.module)
    r = integrated_gradients(lite0, cat_coffee, points=64)
    relative = r.completeness_error / r.score_difference.abs()
    print("IG n=64 completeness error", r.completeness_error.tolist(), "relative", relative.tolist())
    assert float(relative.max()) < 0.03
    snap.assert_unchanged()


# -- bad input and hygiene --------------------------------------------------------------------
BAD = [
    (lambda m, x: smoothgrad(m, x[0, 0]), "x:"),
    (lambda m, x: smoothgrad(m, x, target=1000, n=1), "target"),
    (lambda m, x: smoothgrad(m, x, n=0), "n:"),
    (lambda m, x: smoothgrad(m, x, noise=-0.1), "noise"),
    (lambda m, x: smoothgrad(m, x, batch_size=0), "batch_size"),
    (lambda m, x: smoothgrad(m, x, seed=1.5), "seed"),
    (lambda m, x: integrated_gradients(m, x, points=0), "points"),
    (lambda m, x: integrated_gradients(m, x, points=1, method="trapezoid"), "points"),
    (lambda m, x: integrated_gradients(m, x, method="simpson"), "method"),
    (lambda m, x: integrated_gradients(m, x, spacing="log"), "spacing"),
    (lambda m, x: integrated_gradients(m, x, target=[1, 2]), "target"),
    (lambda m, x: integrated_gradients(m, x, baseline=torch.zeros(3, 8, 8)), "baseline"),
    (lambda m, x: integrated_gradients(m, x, baseline="black"), "baseline"),
    (lambda m, x: integrated_gradients(m, x, target=fv.Neuron("_blocks.3", 0)), "target"),
]


@pytest.mark.parametrize("call, word", BAD)
def test_bad_input_names_the_argument(lite0, cat_coffee, snapshot, call, word):
    snap = snapshot(lite0.module)
    with pytest.raises(fv.FastvizError, match=word):
        call(lite0, cat_coffee[:1])
    snap.assert_unchanged()


def test_calls_leave_the_model_as_it_came(lite0, cat_coffee, snapshot):
    net = lite0.module
    net._blocks[2].train()
    net._conv_stem.weight.requires_grad_(False)
    try:
        snap = snapshot(net)
        smoothgrad(lite0, cat_coffee[:1], n=2, seed=0)
        integrated_gradients(lite0, cat_coffee[:1], points=2, baseline=0.0)
        snap.assert_unchanged()
    finally:
        net._blocks[2].eval()
        net._conv_stem.weight.requires_grad_(True)


# -- lower= ----------------------------------------------------------------------------------
def test_lower_gives_the_exact_maps_up_to_rounding_and_leaves_the_network_alone():
    """The lowered copy (BN folded, activations fused) computes the same function: equal maps,
    completeness measured on the copy, and the user's network is not touched."""
    m = tiny()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    exact = smoothgrad(m, x, 4, n=3)
    fast = smoothgrad(m, x, 4, n=3, lower=True)
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-6)
    r_exact = integrated_gradients(m, x, points=8)
    r_fast = integrated_gradients(m, x, points=8, lower=True)
    torch.testing.assert_close(r_fast.attributions, r_exact.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r_fast.score_difference, r_exact.score_difference, rtol=1e-4, atol=1e-5)
    assert torch.equal(r_fast.targets, r_exact.targets)
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(fv.FastvizError, match="lower"):
        smoothgrad(m, x, lower="yes")


def test_steps_is_the_old_name_of_points():
    net = linear_net()
    x = torch.rand(1, 3, 6, 5)
    new = integrated_gradients(net, x, 1, points=4)
    with pytest.warns(DeprecationWarning, match="steps= is deprecated: use points="):
        old = integrated_gradients(net, x, 1, steps=4)
    torch.testing.assert_close(old.attributions, new.attributions)
