"""Saliency, guided backprop and neuron gradients: exact on hand-built nets, faithful on a real one."""

import pytest
import torch
from torch import nn

import fastviz as fv
from tiny_net import H, W, linear_model, tiny


class OneByOne(nn.Module):
    """score_k = sum over pixels of relu(w1 . x_p)_j * w2_kj: gradients are written out by hand below."""

    def __init__(self, w1, w2, act):
        super().__init__()
        self.conv = nn.Conv2d(3, w1.shape[0], 1, bias=False)
        self.conv.weight.data = w1[:, :, None, None].clone()
        self.act = act
        self.head = nn.Linear(w1.shape[0], w2.shape[0], bias=False)
        self.head.weight.data = w2.clone()

    def forward(self, x):
        return self.head(self.act(self.conv(x)).sum((2, 3)))


W1 = torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]])
W2 = torch.tensor([[1.0, -1.0], [-0.5, 2.0]])


def hand_gradient(x, k, guided, upper=float("inf")):
    h = torch.einsum("jc,bchw->bjhw", W1, x)
    active = ((h > 0) & (h < upper)).float()
    w2 = W2[k].view(1, -1, 1, 1)
    gate = (w2 > 0).float() if guided else 1.0  # the incoming gradient at the ReLU is w2[k, j]
    return torch.einsum("bjhw,jc->bchw", active * w2 * gate, W1)


@pytest.mark.parametrize("act,upper", [(nn.ReLU(), float("inf")), (nn.ReLU(inplace=True), float("inf")),
                                       (nn.ReLU6(), 6.0), (nn.ReLU6(inplace=True), 6.0)])
def test_exact_gradients_on_a_hand_built_net(act, upper):
    net = OneByOne(W1, W2, act)
    x = torch.randn(2, 3, 5, 4) * 4  # large enough that some units pass 6 (ReLU6 saturates)
    targets = [0, 1]
    plain = torch.stack([hand_gradient(x[i:i + 1], k, False, upper)[0] for i, k in enumerate(targets)])
    guided = torch.stack([hand_gradient(x[i:i + 1], k, True, upper)[0] for i, k in enumerate(targets)])
    assert not torch.equal(plain, guided), "the test net must make guided differ from plain"
    torch.testing.assert_close(fv.gradient(net, x, targets)[0], plain)
    torch.testing.assert_close(fv.guided_backprop(net, x, targets), guided)
    torch.testing.assert_close(fv.saliency(net, x, targets), plain.abs().amax(1))


def test_one_module_reused_in_a_forward_is_guided_at_every_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1, bias=False)
            self.b = nn.Conv2d(3, 3, 1, bias=False)
            self.relu = nn.ReLU(inplace=True)  # one object, two calls: like EfficientNet's _swish

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x)))).sum((1, 2, 3))[:, None]

    torch.manual_seed(0)
    net = Twice()
    x = torch.randn(1, 3, 6, 6)
    xi = x.clone().requires_grad_(True)
    # Reference: guided backprop written with explicit tensor hooks at both activation calls.
    h1 = net.a(xi)
    r1 = h1.clamp(min=0)
    r1.register_hook(lambda g: g.clamp(min=0))
    h2 = net.b(r1)
    r2 = h2.clamp(min=0)
    r2.register_hook(lambda g: g.clamp(min=0))
    r2.sum().backward()
    torch.testing.assert_close(fv.guided_backprop(net, x, 0), xi.grad)


def test_real_model_predicts_the_sample_photos(lite0, cat_coffee):
    top = fv.predict(lite0, cat_coffee, k=5)
    assert top[0][0][:2] == (285, "Egyptian cat")
    assert top[1][0][:2] == (967, "espresso")
    assert len(top[0]) == 5 and abs(sum(p for *_, p in top[1]) - 1) < 0.1


def _quadrant_shares(m):
    """Fraction of a (224, 224) map's mass in each 112 x 112 quadrant: TL, TR, BL, BR."""
    q = m.reshape(2, 112, 2, 112).sum((1, 3)).flatten()
    return q / q.sum()


def test_saliency_lies_on_the_object_of_its_class(lite0, photos):
    """Chelsea fills its whole 224 crop, so "on the cat" needs a picture with something else in it:
    a mosaic of chelsea (top left), coffee (top right), china and flower. The network still calls
    it an Egyptian cat. The map for class 285 must put more than the uniform share (0.25) of its
    mass on the cat and far more than the espresso map (967) puts there; the espresso map must do
    the same on the cup. A constant map or noise gives 0.25 everywhere and the same shares for
    both classes; a map of the wrong image (say chelsea's own, unmixed) does not follow the
    mosaic's layout; a map that ignores the target class is the same for 285 and 967. Each fails.
    (Measured: cat 0.318 vs 0.197, cup 0.417 vs 0.206. Raw gradients saturate on the confident
    cat, so the shares are moderate; SmoothGrad sharpens them.)
    """
    q = fv.load_images([photos[k] for k in ("chelsea", "coffee", "china", "flower")], size=112)
    mosaic = torch.cat([torch.cat([q[0], q[1]], 2), torch.cat([q[2], q[3]], 2)], 1)[None]
    assert fv.predict(lite0, mosaic, k=1)[0][0][0] == 285
    s = fv.saliency(lite0, mosaic.expand(2, -1, -1, -1), target=[285, 967])
    cat, cup = _quadrant_shares(s[0]), _quadrant_shares(s[1])
    assert cat[0] > 0.29 and cat[0] > 1.4 * cup[0], (cat, cup)
    assert cup[1] > 0.35 and cup[1] > 1.5 * cat[1], (cat, cup)
    unmixed = fv.saliency(lite0, fv.load_images(photos["chelsea"]), target=285)[0]
    assert _quadrant_shares(unmixed)[0] < 0.29  # the fair-check claim above: the wrong image fails


def test_neuron_gradient_plain_and_guided(lite0, cat_coffee):
    n = fv.Neuron("_blocks.10", channel=5)
    plain = fv.neuron_gradient(lite0, cat_coffee, n)
    guided = fv.neuron_gradient(lite0, cat_coffee, n, guided=True)
    assert plain.shape == guided.shape == (2, 3, 224, 224)
    assert float(plain.abs().sum()) > 0 and float(guided.abs().sum()) > 0
    assert not torch.allclose(plain, guided)
    # Independent check: the gradient of the same unit taken from a hand-written forward hook.
    xi = cat_coffee.clone().requires_grad_(True)
    act = {}
    h = lite0.layer("_blocks.10").register_forward_hook(lambda m, i, o: act.setdefault("a", o))
    try:
        lite0(xi)
    finally:
        h.remove()
    a = act["a"]
    a[:, 5, a.shape[2] // 2, a.shape[3] // 2].sum().backward()
    torch.testing.assert_close(plain, xi.grad, rtol=1e-4, atol=1e-7)
    for p in lite0.module.parameters():
        p.grad = None


def test_neuron_gradient_stops_the_forward_at_its_layer(lite0, cat_coffee):
    fv.neuron_gradient(lite0, cat_coffee[:1], fv.Neuron("_blocks.10", channel=0))  # the one-time check
    ran = []
    h = lite0.layer("_blocks.11").register_forward_hook(lambda *a: ran.append(1))
    try:
        fv.neuron_gradient(lite0, cat_coffee[:1], fv.Neuron("_blocks.10", channel=0))
    finally:
        h.remove()
    assert not ran


def test_guided_backprop_differs_from_the_gradient_on_relu6(lite0, cat_coffee):
    g = fv.guided_backprop(lite0, cat_coffee[:1], target=285)
    plain, _ = fv.gradient(lite0, cat_coffee[:1], 285)
    # Guided backprop on EfficientNet-Lite0 is not the plain gradient (captum's ReLU-only version is).
    assert float((g - plain).abs().sum()) > 0.1 * float(plain.abs().sum())


def test_target_forms_agree(lite0, cat_coffee):
    a = fv.saliency(lite0, cat_coffee, target=[285, 967])
    b = fv.saliency(lite0, cat_coffee, target=torch.tensor([285, 967]))
    c = fv.saliency(lite0, cat_coffee)  # top-1 is 285 and 967
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("target,match", [
    (1000, r"target: class index 1000 is out of range for 1000 classes \(0-999\)"),
    (-1, r"target: class index -1 is out of range"),
    ([1, 2, 3], r"target: expected one class per image \(2\), got 3"),
    ([1.5, 2.0], "target: expected an int, got float 1.5"),
    ("cat", "target: expected"),
])
def test_bad_targets(lite0, cat_coffee, target, match):
    with pytest.raises(fv.FastvizError, match=match):
        fv.saliency(lite0, cat_coffee, target=target)


def test_bad_neurons(lite0, cat_coffee):
    with pytest.raises(fv.FastvizError, match="Neuron.channel: '_blocks.10' has 112 channels, got 500"):
        fv.neuron_gradient(lite0, cat_coffee, fv.Neuron("_blocks.10", channel=500))
    with pytest.raises(fv.FastvizError, match="layer: no module named '_blocks.99'"):
        fv.neuron_gradient(lite0, cat_coffee, fv.Neuron("_blocks.99", channel=0))
    with pytest.raises(fv.FastvizError, match="runs .* times in one forward"):
        fv.neuron_gradient(lite0, cat_coffee, fv.Neuron("_swish", channel=0))
    with pytest.raises(fv.FastvizError, match="Neuron.channel: expected a non-negative int"):
        fv.Neuron("_blocks.10", channel=-1)


def test_a_reused_module_is_refused_every_time(lite0, cat_coffee):
    for _ in range(2):  # the second time the call count comes from the cache
        with pytest.raises(fv.FastvizError, match="'_swish' runs 2 times in one forward"):
            fv.neuron_gradient(lite0, cat_coffee, fv.Neuron("_swish", channel=0))


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "densenet121"])
def test_guided_backprop_on_torchvision_nets_with_inplace_relus(name):
    """The gate returns a view of each activation's output: these nets' inplace ReLUs and
    residual additions must not trip autograd, and the map must differ from the gradient."""
    torch.manual_seed(0)
    m = fv.load_model(name, weights=None)
    x = torch.rand(1, 3, 224, 224)
    g = fv.guided_backprop(m, x, target=3)
    plain, _ = fv.gradient(m, x, 3)
    assert g.shape == (1, 3, 224, 224) and float(g.abs().sum()) > 0
    assert float((g - plain).abs().sum()) > 0.01 * float(plain.abs().sum())


def test_deconvnet_passes_relu_of_the_gradient_whatever_the_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    model = fv.Model(net)
    w1, w2 = net[1].weight.detach(), net[3].weight.detach()
    want = (w2[1].clamp(min=0) @ w1).view(3, 2, 2)  # relu(W2^T e_1) back through W1
    for x in (torch.rand(2, 3, 2, 2), -torch.rand(2, 3, 2, 2)):
        g = fv.deconvnet(model, x, target=1)
        assert torch.allclose(g, want.expand(2, 3, 2, 2), atol=1e-6)
    assert net[2].inplace


def test_input_x_gradient_is_the_image_times_the_gradient():
    model, x = linear_model(6), torch.rand(2, 3, H, W)
    w = model.module[1].weight[[0, 2]].view(2, 3, H, W)
    assert torch.allclose(fv.input_x_gradient(model, x, [0, 2]), x * w, atol=1e-6)


@pytest.mark.parametrize("name", ["deconvnet", "input_x_gradient"])
def test_deconvnet_and_input_x_gradient_equal_captums_on_resnet18(name):
    captum_attr = pytest.importorskip("captum.attr", reason="captum (dev extra) not installed")
    torch.manual_seed(0)
    model = fv.load_model("resnet18", weights=None)

    class Normalised(nn.Module):  # captum sees the same [0, 1] input and the same ReLU modules
        def __init__(self):
            super().__init__()
            self.net = model.module

        def forward(self, x):
            return self.net(model.normalize(x))

    x = torch.rand(2, 3, 64, 64)
    peer = {"deconvnet": captum_attr.Deconvolution, "input_x_gradient": captum_attr.InputXGradient}[name]
    with pytest.warns(UserWarning):
        theirs = peer(Normalised()).attribute(x.clone(), target=[3, 7])
    ours = getattr(fv, name)(model, x, [3, 7])
    assert ours.abs().amax() > 1e-3
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    if name == "deconvnet":
        assert not torch.allclose(ours, fv.guided_backprop(model, x, [3, 7]), atol=1e-3)


def test_guided_relu_is_the_old_name_of_guided():
    m = tiny()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    new, _ = fv.gradient(m, x, 1, guided=True)
    with pytest.warns(DeprecationWarning, match="guided_relu"):
        old, _ = fv.gradient(m, x, 1, guided_relu=True)
    torch.testing.assert_close(old, new)
    with pytest.warns(DeprecationWarning), pytest.raises(fv.FastvizError, match="guided_relu, guided"):
        fv.gradient(m, x, 1, guided=True, guided_relu=True)
    with pytest.raises(TypeError):
        fv.saliency(m, x, 1, True)  # options are keyword-only
