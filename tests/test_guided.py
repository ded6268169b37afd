"""The guided ReLU and deconvnet rules (fastviz/guided.py) against their definitions, by hand."""

import torch
from torch import nn

import fastviz as fv
from fastviz.guided import DeconvReLU, GuidedReLU


def test_guided_relu_passes_only_positive_gradients():
    y = torch.randn(50, requires_grad=True)
    g = torch.randn(50)
    (got,) = torch.autograd.grad(GuidedReLU.apply(y), y, g)
    torch.testing.assert_close(got, g.clamp_min(0))


def test_guided_relu6_backprop_is_mask_times_positive_gradient():
    """grad * (0 < x < 6) * (grad > 0) through a ReLU6 module, and its forward unchanged."""
    torch.manual_seed(int(torch.randint(0, 2 ** 31, ())))
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 9, 2))
    with torch.no_grad():
        net[0].weight.mul_(8)  # pre-activations on both sides of 0 and 6
    x = torch.rand(1, 3, 3, 3)
    pre = net[0](x)
    mask = ((pre > 0) & (pre < 6)).float()
    # The gradient reaching the activation's output, by hand: the Linear's weights.
    upstream = net[3].weight[1].view(1, 4, 3, 3)
    want_at_pre = upstream.clamp_min(0) * mask
    (want,) = torch.autograd.grad(net[0](x.requires_grad_(True)), x, want_at_pre)
    got = fv.guided_backprop(fv.Model(net), x.detach(), target=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_deconv_relu_ignores_the_forward_input():
    x = torch.randn(20, requires_grad=True)
    y = torch.relu(x)
    g = torch.randn(20)
    (got,) = torch.autograd.grad(DeconvReLU.apply(x, y), x, g)
    torch.testing.assert_close(got, g.clamp_min(0))


def test_guided_backprop_on_silu_and_gelu_passes_positive_gradients_only():
    """conv -> act -> conv -> sum: guided = W1^T (act'(z1) * relu(W2^T 1)), not the gradient."""
    import torch.nn.functional as F
    from torch import nn

    import fastviz as fv

    for act, deriv in ((nn.SiLU(), lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))),
                       (nn.GELU(), None)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, nn.Conv2d(4, 1, 3, padding=1),
                            nn.Flatten(), nn.Linear(64, 1)).eval()
        x = torch.rand(1, 3, 8, 8)
        g = fv.guided_backprop(net, x, 0)
        plain = fv.gradient(net, x, 0)[0]
        assert (g - plain).abs().max() > 1e-4  # never the plain gradient under a guided name
        xi = x.clone().requires_grad_(True)
        z1 = net[0](xi)
        zd = z1.detach().requires_grad_(True)
        a = act(zd)
        out = net[4](net[3](net[2](a)))
        (up,) = torch.autograd.grad(out.sum(), a)
        (down,) = torch.autograd.grad(act(zd), zd, up.clamp(min=0))  # act' * relu(incoming)
        (want,) = torch.autograd.grad(z1, xi, down)
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
        if deriv is not None:  # the activation's own derivative is what multiplied
            torch.testing.assert_close(down, deriv(zd.detach()) * up.clamp(min=0), rtol=1e-5, atol=1e-7)


def test_timms_own_activation_modules_are_guided():
    """timm's GELU (ConvNeXt's) is not an nn.GELU: it is guided all the same, and the map is the
    one torch's GELU gives on the same weights, never the plain gradient under a guided name."""
    import warnings

    import pytest

    timm_act = pytest.importorskip("timm.layers.activations")
    from fastviz.guided import is_activation

    assert is_activation(timm_act.GELU()) and is_activation(timm_act.Swish()) and is_activation(nn.GELU())
    assert not is_activation(timm_act.Sigmoid()) and not is_activation(nn.Sigmoid())  # gates are not rectifiers

    def net(act):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, nn.Conv2d(4, 1, 3, padding=1),
                             nn.Flatten(), nn.Linear(64, 1)).eval()

    x = torch.rand(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "has no activation module" would be raised here
        got = fv.guided_backprop(net(timm_act.GELU()), x, 0)
        deconv = fv.deconvnet(net(timm_act.GELU()), x, 0)
    torch.testing.assert_close(got, fv.guided_backprop(net(nn.GELU()), x, 0))
    torch.testing.assert_close(deconv, fv.deconvnet(net(nn.GELU()), x, 0))
    assert (got - fv.gradient(net(timm_act.GELU()), x, 0)[0]).abs().max() > 1e-4
