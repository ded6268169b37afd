"""CAM family: closed forms on a hand-built net, slow loops on the real model, hygiene, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastviz as fv
from fastviz.cam import default_layer, gradcam, guided_gradcam, layercam, scorecam

HEAD = "_avg_pooling"  # EfficientNet-Lite0's default: the input of this module (checked below)


# -- a hand-built net: conv 3x3 -> ReLU -> global average pool -> linear ------------------------
def tiny_net(k: int = 4, classes: int = 3, stride: int = 1, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, k, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(k, classes)).eval()


def minmax(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m - lo) / (hi - lo)


def tiny_closed_form(net, x, c):
    """A = ReLU(conv x); y_c = sum_k W_ck mean(A_k), so d y_c / d A_kij = W_ck / (h w) everywhere."""
    conv, fc = net[0], net[4]
    with torch.no_grad():
        a = F.relu(conv(x))
    hw = a.shape[-2] * a.shape[-1]
    w = fc.weight[c].detach().view(1, -1, 1, 1) / hw  # (1, K, 1, 1): the gradient, also alpha_k
    grad_cam = (w * a).sum(1).clamp_min(0)
    layer_cam = (w.clamp_min(0) * a).sum(1).clamp_min(0)
    return a, w, grad_cam, layer_cam


def test_gradcam_and_layercam_closed_form():
    net = tiny_net()
    x = torch.rand(2, 3, 16, 16)
    _, _, grad_cam, layer_cam = tiny_closed_form(net, x, c=1)
    got = gradcam(net, x, target=1, layer="1", normalize=False)
    torch.testing.assert_close(got, grad_cam, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gradcam(net, x, target=1, layer="1"), minmax(grad_cam))
    torch.testing.assert_close(layercam(net, x, target=1, layer="1", normalize=False), layer_cam,
                               rtol=1e-5, atol=1e-7)
    assert not torch.equal(grad_cam, layer_cam)  # some W_ck < 0: the two methods differ here


def test_gradcam_upsamples_to_the_image():
    net = tiny_net(stride=2)
    x = torch.rand(1, 3, 16, 16)
    _, _, grad_cam, _ = tiny_closed_form(net, x, c=0)
    want = F.interpolate(grad_cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(gradcam(net, x, target=0, layer="1", normalize=False), want,
                               rtol=1e-5, atol=1e-7)


def test_guided_gradcam_closed_form():
    net = tiny_net()
    x = torch.rand(2, 3, 12, 12)
    a, w, grad_cam, _ = tiny_closed_form(net, x, c=2)
    # Guided backprop through the one ReLU: the upstream gradient w passes where A > 0 and w > 0.
    upstream = (a > 0) * w.clamp_min(0)
    guided = F.conv_transpose2d(upstream.expand_as(a), net[0].weight.detach(), padding=1)
    torch.testing.assert_close(guided_gradcam(net, x, target=2, layer="1"),
                               minmax(grad_cam)[:, None] * guided, rtol=1e-4, atol=1e-7)


def test_scorecam_one_channel_is_the_normalised_activation():
    # One channel: the map is ReLU(w * up(A)) with a softmax weight w > 0, so after (m - min) /
    # (max - min) it is the normalised upsampled activation, whatever the classifier does.
    net = tiny_net(k=1, stride=2)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        up = F.interpolate(F.relu(net[0](x)), size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(scorecam(net, x, layer="1"), minmax(up), rtol=1e-5, atol=1e-6)


def scorecam_loop(model: fv.Model, x: torch.Tensor, layer: str, c: int) -> torch.Tensor:
    """The authors' loop: one image, one channel, one masked forward at a time."""
    box = {}

    def grab(_m, _i, out):
        box["a"] = out.clone()  # a copy: later in-place ops cannot touch it

    handle = model.layer(layer).register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = box["a"]
    H, W = x.shape[-2:]
    xn = model.normalize(x)
    total = torch.zeros(1, 1, H, W)
    for k in range(a.shape[1]):
        up = F.interpolate(a[:, k:k + 1], size=(H, W), mode="bilinear", align_corners=False)
        if up.max() == up.min():
            continue
        mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            prob = model.module(xn * mask).softmax(1)[0, c]
        total += prob * up
    return minmax(F.relu(total)[:, 0])[0]


def test_scorecam_tiny_equals_loop():
    net = tiny_net(k=5, stride=2)
    model = fv.Model(net)
    x = torch.rand(3, 3, 16, 16)
    got = scorecam(model, x, target=[0, 1, 2], layer="1", batch_size=4)  # 15 rows, 4 chunks
    for i in range(3):
        torch.testing.assert_close(got[i], scorecam_loop(model, x[i:i + 1], "1", i), rtol=1e-4, atol=1e-5)


# -- the real model against slow loops ----------------------------------------------------------
def grad_loop(model: fv.Model, x: torch.Tensor, layer: str, c: int, use_input: bool = False):
    """Activation and d logit_c / d activation for ONE image, by the book (hook + autograd.grad)."""
    box = {}

    def grab(_m, inputs, out):
        box["a"] = inputs[0] if use_input else out
        return None if use_input else out.clone()  # an inplace ReLU6 must not overwrite it

    handle = model.layer(layer).register_forward_hook(grab)
    try:
        xi = x.clone().requires_grad_(True)  # the graph runs from the image, parameters untouched
        logit = model(xi)[0, c]
        (g,) = torch.autograd.grad(logit, box["a"])
    finally:
        handle.remove()
    return box["a"].detach(), g


def test_default_layer(lite0, cat_coffee):
    assert default_layer(lite0, cat_coffee) == HEAD
    resnet = fv.Model(__import__("torchvision").models.resnet18(weights=None).eval())
    assert default_layer(resnet, torch.rand(1, 3, 64, 64)) == "avgpool"


def test_default_layer_of_a_token_network_is_its_last_token_stage():
    """LeViT's head averages the last stage's tokens in its forward, so no module takes them: the
    default is the deepest declared stage's output with more than one position, the tensor the
    head pools (at 64 px the last stage is 1x1 and the stage before it, 2x2, is used)."""
    timm = pytest.importorskip("timm")
    for size, kw, expected in ((224, {}, "stages.2"), (64, {"img_size": 64}, "stages.1")):
        torch.manual_seed(0)
        net = timm.create_model("levit_128s", pretrained=False, num_classes=10, **kw).eval()
        m = fv.Model.from_timm(net)
        x = torch.rand(1, 3, size, size)
        assert default_layer(m, x) == expected
        box = {}

        def keep(name):
            def hook(_m, _i, out):
                box[name] = out
            return hook

        handles = [m.layer(n).register_forward_hook(keep(n)) for n in ("stages.1", "stages.2")]
        try:
            with torch.no_grad():
                logits = m(x)
                pooled = net.forward_head(box["stages.2"])  # the head on the last stage alone: the logits
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(pooled, logits, rtol=0, atol=0)
        tokens = {n: box[n].shape[1] for n in box}
        assert tokens == ({"stages.1": 49, "stages.2": 16} if size == 224 else {"stages.1": 4, "stages.2": 1})
        cam = gradcam(m, x, 3)
        torch.testing.assert_close(cam, gradcam(m, x, 3, layer=expected))
        assert cam.shape == (1, size, size) and torch.isfinite(cam).all()


def test_gradcam_layercam_real_equal_loop(lite0, cat_coffee, snapshot):
    snap = snapshot(lite0.module)
    classes = [285, 967]
    got_grad = gradcam(lite0, cat_coffee, target=classes, layer=None)
    got_layer = layercam(lite0, cat_coffee, target=classes, layer="_blocks.10")
    snap.assert_unchanged()
    for i, c in enumerate(classes):
        x = cat_coffee[i:i + 1]
        a, g = grad_loop(lite0, x, HEAD, c, use_input=True)
        want = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        want = minmax(F.interpolate(want, size=(224, 224), mode="bilinear", align_corners=False)[:, 0])
        torch.testing.assert_close(got_grad[i:i + 1], want, rtol=1e-3, atol=1e-4)
        a, g = grad_loop(lite0, x, "_blocks.10", c)
        want = F.relu((F.relu(g) * a).sum(1, keepdim=True))
        want = minmax(F.interpolate(want, size=(224, 224), mode="bilinear", align_corners=False)[:, 0])
        torch.testing.assert_close(got_layer[i:i + 1], want, rtol=1e-3, atol=1e-4)
    snap.assert_unchanged()


def test_guided_gradcam_real_equal_parts(lite0, cat_coffee, snapshot):
    snap = snapshot(lite0.module)
    got = guided_gradcam(lite0, cat_coffee)  # top-1: 285 and 967
    want = gradcam(lite0, cat_coffee, target=[285, 967])[:, None] * fv.guided_backprop(
        lite0, cat_coffee, target=[285, 967])
    torch.testing.assert_close(got, want)
    assert got.abs().amax() > 0
    snap.assert_unchanged()


def test_scorecam_real_equal_loop_and_chunking(lite0, cat_coffee, snapshot):
    # _blocks.0 has 16 channels: 2 images x 16 masked forwards, cheap enough for a loop.
    snap = snapshot(lite0.module)
    chunked = scorecam(lite0, cat_coffee, layer="_blocks.0", batch_size=5)  # 32 rows, 7 chunks
    whole = scorecam(lite0, cat_coffee, layer="_blocks.0", batch_size=64)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    for i, c in enumerate((285, 967)):
        torch.testing.assert_close(chunked[i], scorecam_loop(lite0, cat_coffee[i:i + 1], "_blocks.0", c),
                                   rtol=1e-3, atol=1e-4)
    snap.assert_unchanged()


@pytest.mark.slow
def test_scorecam_default_layer_is_not_degenerate(lite0, photos):
    # 1280 masked forwards: the default layer must be a rectified map, or the positive weights
    # sum a mostly negative map to zero everywhere.
    x = fv.load_images(photos["chelsea"])
    cam = scorecam(lite0, x, target=285, batch_size=128)[0]
    assert cam.amax() == 1 and cam.std() > 0.1


def test_gradcam_of_chelsea_lies_on_the_cat(lite0, photos):
    # Chelsea's face fills the centre of the 224 crop; the border is partly wall, partly fur, so
    # the margin is modest (measured 0.73 vs 0.39). The same check on
    # the class "espresso" (967) for the same photo must NOT prefer the centre by as much: that
    # rules out a map that is merely centre-biased (padding, the receptive field) and shows the
    # map follows the class asked for.
    x = fv.load_images(photos["chelsea"])
    cat = gradcam(lite0, x, target=285)[0]
    inner = torch.zeros(224, 224, dtype=torch.bool)
    inner[56:168, 56:168] = True
    assert cat[inner].mean() > 1.5 * cat[~inner].mean()
    cup = gradcam(lite0, x, target=967)[0]
    assert cat[inner].mean() / cat[~inner].mean() > cup[inner].mean() / cup[~inner].mean().clamp_min(1e-6)


# -- bad input and hygiene --------------------------------------------------------------------
BAD = [
    (lambda m, x: gradcam(m, x[0, 0]), "x:"),
    (lambda m, x: gradcam(m, x, target=1000), "target"),
    (lambda m, x: layercam(m, x, target=[1, 2, 3]), "target"),
    (lambda m, x: gradcam(m, x, layer="_blocks.99"), "layer"),
    (lambda m, x: guided_gradcam(m, x, layer="_swish"), "layer"),  # one module run twice
    (lambda m, x: layercam(m, x, layer="_fc"), "layer"),  # not a feature map
    (lambda m, x: scorecam(m, x, layer="_blocks.0", batch_size=0), "batch_size"),
    (lambda m, x: scorecam(m, x, target=-1, layer="_blocks.0"), "target"),
    (lambda m, x: gradcam(m, x, target=fv.Neuron("_blocks.3", 0)), "target"),
]


@pytest.mark.parametrize("call, word", BAD)
def test_bad_input_names_the_argument(lite0, cat_coffee, snapshot, call, word):
    snap = snapshot(lite0.module)
    with pytest.raises(fv.FastvizError, match=word):
        call(lite0, cat_coffee[:1])
    snap.assert_unchanged()


def test_every_cam_leaves_the_model_as_it_came(lite0, cat_coffee, snapshot):
    net = lite0.module
    net._blocks[3].train()  # an odd state the calls must give back as it was
    net._fc.weight.requires_grad_(False)
    try:
        snap = snapshot(net)
        x = cat_coffee[:1]
        gradcam(lite0, x)
        layercam(lite0, x, layer="_blocks.5")
        guided_gradcam(lite0, x)
        scorecam(lite0, x, layer="_blocks.0")
        snap.assert_unchanged()
    finally:
        net._blocks[3].eval()
        net._fc.weight.requires_grad_(True)
