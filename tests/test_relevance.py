"""fv.lrp: equal to zennit, conservative where the theory says so, LRP-0 = input x gradient,
every layer covered or refused by name, the user's rules by layer name, batched."""

import pytest
import torch
import torchvision
from torch import nn

import fastviz as fv
from fastviz.relevance import rules

zh = pytest.importorskip("tests.zennit_helpers")

COMPOSITES = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"]
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def rel_diff(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _busy_bn(net, seed=0, eps=None):
    """Give every BN non-trivial statistics (random init has mean 0, var 1: folding would be a no-op)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            if eps is not None:
                m.eps = eps
    return net


def resnet18(eps=None):
    torch.manual_seed(0)
    return fv.Model(_busy_bn(torchvision.models.resnet18().eval(), eps=eps), **IMAGENET)


def resnet_canonizers(net, exact: bool):
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetCanonizer

    if not exact:
        return [ResNetCanonizer()]
    return [zh.ExactNamedMerge(zh.conv_bn_pairs(net)), ResNetBasicBlockCanonizer()]


# -- equal to zennit -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPOSITES)
def test_resnet18_equals_zennit(name):
    """Random-weight resnet18 with busy BatchNorms, zennit's own ResNetCanonizer. The bound, 1e-4,
    is zennit's merge: its merged BN still divides by sqrt(1 + 1e-5) (measured 4.4e-5); with
    that BN made an exact identity the two agree to float rounding (next test)."""
    m = resnet18()
    x, t = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 7])
    r = fv.lrp(m, x, t, composite=name)
    z = zh.zennit_lrp(m, x, t, name, resnet_canonizers(m.module, exact=False))
    assert rel_diff(r.relevance, z) < 1e-4


@pytest.mark.parametrize("name", COMPOSITES)
def test_resnet18_equals_zennit_with_an_exact_merge(name):
    m = resnet18()
    x, t = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 7])
    r = fv.lrp(m, x, t, composite=name)
    z = zh.zennit_lrp(m, x, t, name, resnet_canonizers(m.module, exact=True))
    assert rel_diff(r.relevance, z) < 1e-5  # measured 1.4e-6 .. 2e-6: float32 rounding


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPOSITES)
def test_vgg16_equals_zennit(name):
    """No BatchNorm to fold: the same arithmetic; what is left is float32 rounding of other
    kernels (fastviz runs channels_last), measured 1.8e-6 .. 2.3e-6."""
    from zennit.torchvision import VGGCanonizer

    torch.manual_seed(0)
    m = fv.Model(torchvision.models.vgg16().eval(), **IMAGENET)
    x, t = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 7])
    r = fv.lrp(m, x, t, composite=name)
    z = zh.zennit_lrp(m, x, t, name, [VGGCanonizer()])
    assert rel_diff(r.relevance, z) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPOSITES)
def test_lite0_pretrained_equals_zennit_in_float64(name):
    """EfficientNet-Lite0 on the cat and the coffee cup, both run in float64: the same arithmetic
    to the last bits, on any CPU (measured 1.9e-15, 4.5e-15, 2.0e-14). zennit needs two
    canonizers there (its sequential merge skips convs that hold a padding module; the skip
    connection needs its Sum), and its merged BN made an exact identity (Lite0's eps = 1e-3 leaves
    a 0.9995 scale per BN otherwise: 8.5e-3 .. 2.8e-2 apart). In float32, alpha-beta's two
    normalisations per layer amplify rounding to 6e-5 .. 2e-4 depending on the CPU's kernels,
    which is why this comparison is made in float64 (float32: next test)."""
    m = fv.load_model()
    m.module.double()
    x = fv.load_images([fv.sample_images()[k] for k in ("chelsea", "coffee")])
    t = torch.tensor([285, 967])
    r = fv.lrp(m, x, t, composite=name)
    assert r.relevance.dtype == torch.float64
    z = zh.zennit_lrp(m, x.double(), t, name, [zh.ExactNamedMerge(zh.conv_bn_pairs(m.module)), zh.Lite0Skip()])
    assert rel_diff(r.relevance, z) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lite0_pretrained_equals_zennit_in_float32(name):
    """The float32 run users make, on the composites without alpha-beta's amplification:
    measured 1.2e-6 and 2.1e-6, float32 rounding of differently ordered kernels."""
    m = fv.load_model()
    x = fv.load_images([fv.sample_images()[k] for k in ("chelsea", "coffee")])
    t = torch.tensor([285, 967])
    r = fv.lrp(m, x, t, composite=name)
    z = zh.zennit_lrp(m, x, t, name, [zh.ExactNamedMerge(zh.conv_bn_pairs(m.module)), zh.Lite0Skip()])
    assert rel_diff(r.relevance, z) < 1e-4


# -- conservation and LRP-0 ----------------------------------------------------------------------
class BiasFree(nn.Module):
    """A ReLU network without biases: conv, max pool, a residual sum, average pool, dense."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        a = self.pool(self.relu(self.conv1(x)))
        a = self.relu(a + self.conv2(a))
        return self.fc(self.gap(a).flatten(1))


def bias_free(seed=0):
    torch.manual_seed(seed)
    net = BiasFree().eval()
    with torch.no_grad():
        net.fc.weight.abs_()  # positive logits for every class: a logit to conserve
    return fv.Model(net)


def test_conservation_layer_by_layer_on_a_bias_free_relu_network():
    """z+ on the convs, epsilon -> 0 on the dense layer: the input relevance sums to the logit
    (1e-5 relative) and so does the relevance at every layer's input on the way down."""
    m = bias_free()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    r = fv.lrp(m, x, 1, composite="epsilon_plus", epsilon=0.0, stabilizer=0.0)
    torch.testing.assert_close(r.conservation, torch.ones(3), rtol=0, atol=1e-5)
    # the same totals at every layer: the relevance (gradient) reaching each module's output
    net = next(iter(m._lrp.values()))[1].module
    totals = {}

    def watch(name):
        def hook(module, inputs, output):
            output.register_hook(lambda g: totals.__setitem__(name, g.flatten(1).sum(1)))
        return hook

    hooks = [mod.register_forward_hook(watch(n)) for n, mod in net.named_modules()
             if n in ("conv1", "pool", "gap")]
    xi = x.clone().requires_grad_(True)
    s = net(xi)[:, 1]
    torch.autograd.grad(s, xi, s.detach())
    for h in hooks:
        h.remove()
    # (conv2's output holds only its share of the residual sum; pool's output, both shares)
    assert set(totals) == {"conv1", "pool", "gap"}
    for name, total in totals.items():
        torch.testing.assert_close(total / r.logits, torch.ones(3), rtol=0, atol=1e-5, msg=name)


def test_lrp0_is_input_times_gradient_on_a_relu_network():
    """LRP-0 (epsilon = 0 everywhere) equals input x gradient on ReLU networks, biases included."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4)).eval()
    m = fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    r = fv.lrp(m, x, [0, 3], composite="epsilon", epsilon=0.0, stabilizer=0.0)
    xn = m.normalize(x).requires_grad_(True)
    out = net(xn)
    (g,) = torch.autograd.grad(out[[0, 1], [0, 3]].sum(), xn)
    torch.testing.assert_close(r.relevance, (xn * g).detach(), rtol=1e-5, atol=1e-6)


# -- what it covers, and what it refuses -----------------------------------------------------------
def test_densenet121_batchnorm_after_concatenation_is_passed():
    """DenseNet's BNs read concatenations, not a conv's output: they stay, with Pass (as zennit
    treats BN), and the rest is folded; the functional ReLU and pool at the end get their rules."""
    torch.manual_seed(0)
    m = fv.Model(torchvision.models.densenet121().eval(), **IMAGENET)
    r = fv.lrp(m, torch.rand(1, 3, 64, 64), 5)
    assert r.relevance.shape == (1, 3, 64, 64) and torch.isfinite(r.relevance).all()
    net = next(iter(m._lrp.values()))[1]
    assert ("features.conv0", "features.norm0") in net.folded
    assert "features.denseblock1.denselayer1.norm1" in net.passed
    assert any("adaptive_avg_pool2d" in k and v.startswith("Norm") for k, v in r.rules.items())


def test_squeeze_excitation_gate_takes_no_relevance():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.squeeze = nn.Conv2d(4, 4, 1)
            self.gate = nn.Sigmoid()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            a = self.act(self.conv(x))
            g = self.gate(self.squeeze(a.mean((2, 3), keepdim=True)))
            return self.fc((a * g).mean((2, 3)))

    torch.manual_seed(0)
    m = fv.Model(SE().eval())
    r = fv.lrp(m, torch.rand(2, 3, 8, 8), 1)
    assert "gate" in r.rules.values() and torch.isfinite(r.relevance).all()
    assert "squeeze" in r.rules  # it is still given a rule; it receives no relevance


def test_a_layer_without_a_rule_is_refused_by_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LayerNorm(4 * 6 * 6),
                        nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(fv.FastvizError, match=r"layer '3' \(LayerNorm\) has no LRP rule"):
        fv.lrp(fv.Model(net), torch.rand(1, 3, 8, 8))


def test_an_operation_without_a_rule_is_refused_by_name():
    class Product(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc((self.a(x) * self.b(x)).mean((2, 3)))

    with pytest.raises(fv.FastvizError, match=r"computes mul \(mul in the forward\): a product or quotient"):
        fv.lrp(fv.Model(Product().eval()), torch.rand(1, 3, 8, 8))


def test_untraceable_network_is_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = x * 2
            return self.fc(x.flatten(1))

    with pytest.raises(fv.FastvizError, match="cannot trace Branchy with torch.fx"):
        fv.lrp(fv.Model(Branchy()), torch.rand(1, 3, 2, 2))


# -- the user's rules ------------------------------------------------------------------------------
def test_user_rule_by_name_wins_and_zbox_bounds_are_image_units():
    """rules={"features.0": ZBox(0, 1)} with epsilon_plus equals the epsilon_gamma_box's first
    layer (z-box over [0, 1] images mapped through the normalisation) when the other convs share
    a rule: both composites then differ only in the first conv."""
    from tests.tiny_net import tiny

    m = tiny()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    box = fv.lrp(m, x, 1, composite="epsilon_gamma_box", rules={"features.3": rules.ZPlus()})
    mine = fv.lrp(m, x, 1, composite="epsilon_plus", rules={"features.0": rules.ZBox(0.0, 1.0)})
    assert box.rules["features.0"].startswith("ZBox") and mine.rules["features.0"].startswith("ZBox")
    torch.testing.assert_close(mine.relevance, box.relevance, rtol=1e-5, atol=1e-7)
    plain = fv.lrp(m, x, 1, composite="epsilon_plus")
    assert rel_diff(plain.relevance, mine.relevance) > 1e-3  # the rule changed something


def test_container_rule_reaches_the_layers_inside_it():
    from tests.tiny_net import tiny

    r = fv.lrp(tiny(), torch.rand(1, 3, 32, 32), 1, rules={"features": rules.Gamma(0.5)})
    assert r.rules["features.0"] == r.rules["features.3"] == "Gamma(gamma=0.5, stabilizer=1e-06)"
    assert r.rules["features.2"] == "Pass()"  # Gamma does not apply to a ReLU: the composite's
    assert r.rules["fc"].startswith("Epsilon")


@pytest.mark.parametrize("given,match", [
    ({"features.9": rules.ZPlus()}, "rules: no module named 'features.9'"),
    ({"features.1": rules.ZPlus()}, "'features.1' is a BatchNorm folded into 'features.0'"),
    ({"features.2": rules.ZPlus()}, r"ZPlus.* does not apply to 'features.2' \(ReLU"),
    ({"fc": "epsilon"}, r"rules\['fc'\]: expected a rule"),
    ([("fc", rules.Epsilon())], "expected a mapping"),
])
def test_bad_rules_are_refused(given, match):
    from tests.tiny_net import tiny

    with pytest.raises(fv.FastvizError, match=match):
        fv.lrp(tiny(), torch.rand(1, 3, 32, 32), rules=given)


@pytest.mark.parametrize("kwargs,match", [
    (dict(composite="lrp"), "composite: expected one of"),
    (dict(epsilon=-1.0), "epsilon: expected a number in"),
    (dict(low=1.0, high=0.0), "expected low < high"),
    (dict(low=(0.0, 0.0)), "one per channel"),
    (dict(target=10), "target"),
])
def test_bad_arguments_are_refused(kwargs, match):
    from tests.tiny_net import tiny

    with pytest.raises(fv.FastvizError, match=match):
        fv.lrp(tiny(), torch.rand(1, 3, 32, 32), **kwargs)


def test_rule_parameters_are_checked():
    with pytest.raises(fv.FastvizError, match="alpha - beta = 1"):
        rules.AlphaBeta(3.0, 1.0)


# -- batched, cached, unchanged --------------------------------------------------------------------
def test_batched_equals_row_by_row_and_the_cache_follows_the_weights():
    m = resnet18()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    t = [1, 5, 9]
    whole = fv.lrp(m, x, t).relevance
    rows = torch.cat([fv.lrp(m, x[i:i + 1], t[i]).relevance for i in range(3)])
    torch.testing.assert_close(whole, rows, rtol=1e-4, atol=1e-7)  # oneDNN picks kernels by batch
    before = fv.lrp(m, x[:1], 1).relevance
    with torch.no_grad():
        m.module.fc.weight.mul_(-1)
    after = fv.lrp(m, x[:1], 1).relevance
    assert rel_diff(after, before) > 0.1  # new weights: the copy was made again


def test_top1_target_and_result_fields():
    from tests.tiny_net import tiny

    m = tiny()
    x = torch.rand(2, 3, 32, 32)
    r = fv.lrp(m, x)
    torch.testing.assert_close(r.targets, fv.predict(m, x, k=1) and torch.tensor(
        [p[0][0] for p in fv.predict(m, x, k=1)]))
    assert r.maps.shape == (2, 32, 32) and r.composite == "epsilon_plus_flat"
    torch.testing.assert_close(r.conservation, r.relevance.flatten(1).sum(1) / r.logits)


# -- timm's CNNs (random weights; the any-model table will extend this) ----------------------------
TIMM_WORKS = ["resnet50d", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "densenet121",
              "ghostnet_100", "repvgg_a0", "resnext26ts", "dla34", "rexnet_100", "mobilenetv2_050",
              "inception_v3"]
SIZE = {"inception_v3": 160}
TIMM_REFUSED = {
    "convnext_atto": r"layer_norm .*LayerNorm2d.* AttnLRP",
    "vit_tiny_patch16_224": r"does not run on an input of shape|layer_norm",
    "vgg11": "cannot trace VGG with torch.fx",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_WORKS)
def test_timm_cnns_are_explained(name):
    """SiLU, Hardswish, squeeze-excitation gates (sigmoid and hard sigmoid), grouped and
    depthwise convs, concatenations, three-way sums: finite relevance of the input's shape, the
    model unchanged."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    side = SIZE.get(name, 96)
    r = fv.lrp(fv.Model(net, **IMAGENET), torch.rand(2, 3, side, side), [1, 2])
    assert r.relevance.shape == (2, 3, side, side) and torch.isfinite(r.relevance).all()
    assert r.relevance.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_REFUSED))
def test_timm_models_lrp_cannot_cover_are_refused_by_name(name):
    timm = pytest.importorskip("timm")
    net = timm.create_model(name, pretrained=False).eval()
    with pytest.raises(fv.FastvizError, match=TIMM_REFUSED[name]):
        fv.lrp(fv.Model(net, **IMAGENET), torch.rand(1, 3, 96, 96))
