"""The lowered network (fastviz/lower.py): same function as the original, original untouched.

Bounds (fp32, 1 thread, any CPU):
- logits: relative L2 error <= 1e-5 against a float64 evaluation of the original (measured
  4e-7 to 1e-6 for both the original and the lowered network in fp32).
- input gradients: relative L2 error <= 2e-2 against float64. The gradient of a network with
  ReLUs and max-pools is discontinuous where a pre-activation crosses 0, and fp32 rounding flips
  a few such kinks: the *original* network in fp32 is itself off by up to 9e-3 on resnet18 with
  random weights at some shapes (e.g. 2x3x160x160), and the lowered one by as much at others.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import fastviz as fv
from fastviz.hooks import session
from fastviz.regularizers import NONE
from fastviz.lower import LoweredModel, fingerprint, lowered, release

LOGIT_TOL = 1e-5
GRAD_TOL = 2e-2


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return net


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def logits_and_grad(model, x: torch.Tensor):
    with session(model):
        xi = x.detach().clone().requires_grad_(True)
        out = model(xi)
        # A fixed random weighting of the outputs (a plain sum is constant through a BN that uses
        # batch statistics, so its gradient would be rounding noise).
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        (g,) = torch.autograd.grad((out * w.to(out.dtype)).sum(), xi)
    return out.detach(), g


def float64(model: fv.Model) -> fv.Model:
    return fv.Model(copy.deepcopy(model.module).double(), model.mean, model.std)


def _torchvision(name: str) -> fv.Model:
    torch.manual_seed(0)
    m = fv.load_model(name, weights=None)
    randomise_bn(m.module)
    return m


@pytest.mark.parametrize("name,size,folded", [("efficientnet-lite0", 224, 49), ("resnet18", 112, 20),
                                              ("densenet121", 96, 59), ("alexnet", 96, 0)])
def test_logits_and_gradients_equal_the_original(lite0, name, size, folded):
    m = lite0 if name == "efficientnet-lite0" else _torchvision(name)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    lm = lowered(m, x)
    assert isinstance(lm, LoweredModel) and lm.module is not m.module
    assert len(lm.report.folded) == folded
    assert lm.report.method == "fx" and lm.report.channels_last
    o64, g64 = logits_and_grad(float64(m), x.double())
    o, g = logits_and_grad(m, x)
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL, (rel(ol, o64), rel(o, o64))
    assert rel(gl, g64) <= GRAD_TOL, (rel(gl, g64), rel(g, g64))
    assert ol.argmax(1).tolist() == o.argmax(1).tolist()
    assert gl.is_contiguous() and g.abs().sum() > 0


def test_lite0_padding_folded_and_pointwise_convs_run_as_matmuls(lite0):
    x = torch.rand(1, 3, 224, 224)
    r = lowered(lite0, x).report
    # The stem and 16 depthwise convs pad with a ZeroPad2d: 12 symmetric (stride 1), 5 one-sided
    # "SAME" pads at stride 2, 4 of them depthwise (kernel grown by a zero row and column).
    # 31 expand / project 1x1 convs + the head run as matmuls.
    assert len(r.padding_folded) == 16 and "_blocks.1._depthwise_conv" in r.padding_folded
    assert tuple(lowered(lite0, x).module._blocks[1]._depthwise_conv.kernel_size) == (4, 4)
    # The stem (3 -> 32, dense) keeps its one-sided pad, explicit: a grown kernel costs it more.
    assert lowered(lite0, x).module._conv_stem.pre_pad == (0, 1, 0, 1)
    assert len(r.matmul) == 32 and "_conv_head" in r.matmul
    no_nhwc = lowered(lite0, x, channels_last=False).report  # the matmul needs the NHWC view
    assert not no_nhwc.matmul and len(no_nhwc.padding_folded) == 16


class _PadsThenConv(nn.Conv2d):
    """A conv padding first with a module, as EfficientNet ports do; `twist` breaks the pattern."""

    def __init__(self, pad, twist: bool = False, kernel_size: int = 3, stride: int = 1):
        super().__init__(3, 4, kernel_size, stride)
        self.static_padding, self.twist = nn.ZeroPad2d(pad), twist

    def forward(self, x):
        y = super().forward(self.static_padding(x))
        return y * 2 if self.twist else y


@pytest.mark.parametrize("pad,kernel,stride,twist,becomes", [
    ((1, 1, 1, 1), 3, 1, False, "folded"),
    ((0, 1, 0, 1), 3, 2, False, "pad"),   # one-sided on a dense conv: an explicit pad (PadConv2d)
    ((1, 2, 1, 2), 5, 2, False, "pad"),
    ((0, 2, 0, 2), 3, 2, False, "pad"),   # no conv padding expresses it
    ((1, 1, 1, 1), 3, 1, True, "kept"),   # the forward is not pad + conv
])
def test_padding_is_folded_only_where_it_is_the_same_function(pad, kernel, stride, twist, becomes):
    torch.manual_seed(0)
    net = nn.Sequential(_PadsThenConv(pad, twist, kernel, stride), nn.ReLU(), nn.Conv2d(4, 3, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    m = fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=16)
    x = torch.rand(2, 3, 16, 16)
    lm = lowered(m, x)
    assert (lm.report.padding_folded == ["0"]) is (becomes == "folded")
    assert (getattr(lm.module[0], "pre_pad", None) == pad) is (becomes == "pad")
    assert isinstance(lm.module[0], _PadsThenConv) is (becomes == "kept")
    assert [c for c, *_ in lm.report.activation_fused] == ([] if becomes == "kept" else ["0"])
    assert lm.report.matmul == ["2"]
    assert rel(lm(x), m(x)) <= LOGIT_TOL


def test_densenet_bn_after_cat_is_skipped_and_said(lite0):
    m = _torchvision("densenet121")
    lm = lowered(m, torch.rand(1, 3, 64, 64))
    skipped = dict(lm.report.skipped)
    # norm1 of a dense layer normalises the concatenation of earlier features: not a conv's output.
    assert "not a conv" in skipped["features.denseblock1.denselayer1.norm1"]
    assert "features.denseblock1.denselayer1.norm2" not in skipped
    assert ("features.denseblock1.denselayer1.conv1", "features.denseblock1.denselayer1.norm2") in lm.report.folded


def test_activations_at_named_layers_equal(lite0):
    x = fv.load_images(fv.sample_images()["chelsea"])
    names = ["_blocks.3._bn1", "_blocks.10", "_conv_head"]
    with session(lite0) as s:
        ref, _ = s.forward(x, names, stop=False)
    # A folded BN (now Identity) that the caller reads is kept out of the activation fusion.
    lm = lowered(lite0, x, keep=["_blocks.3._bn1"])
    assert "_blocks.3._depthwise_conv" not in {c for c, *_ in lm.report.activation_fused}
    with session(lm) as s:
        got, _ = s.forward(x, names, stop=False)
    for n in ["_blocks.3._bn1", "_blocks.10"]:
        assert got[n].shape == ref[n].shape
        assert rel(got[n], ref[n]) <= 1e-5, n
    # A folded conv shows its BN's output, not its own: callers that read a conv name keep it.
    assert rel(got["_conv_head"], ref["_conv_head"]) > 1e-2
    # Without `keep`, that BN's name shows the ReLU6 its conv now applies (a fresh copy: the
    # cached one, made for a caller that reads it, serves every caller).
    release(lite0)
    with session(lowered(lite0, x)) as s:
        fused, _ = s.forward(x, ["_blocks.3._bn1"], stop=False)
    assert float(fused["_blocks.3._bn1"].min()) >= 0 > float(ref["_blocks.3._bn1"].min())
    assert rel(fused["_blocks.3._bn1"], ref["_blocks.3._bn1"].clamp(0, 6)) <= 1e-5
    kept = lowered(lite0, x, keep=["_conv_head"])
    assert "_conv_head" not in {c for c, _ in kept.report.folded}
    assert any("objective reads" in r for _, r in kept.report.skipped)
    with session(kept) as s:
        got, _ = s.forward(x, ["_conv_head"])
    assert rel(got["_conv_head"], ref["_conv_head"]) <= 1e-5


def test_original_unchanged(lite0, snapshot):
    state = {k: v.clone() for k, v in lite0.module.state_dict().items()}
    snap = snapshot(lite0.module)
    x = torch.rand(1, 3, 64, 64)
    release(lite0)
    lm = lowered(lite0, x)
    fv.class_model(lite0, [1], steps=2, size=64)
    snap.assert_unchanged()
    now = lite0.module.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)
    assert lite0.module._conv_stem.weight.data_ptr() != lm.module._conv_stem.weight.data_ptr()
    assert isinstance(lite0.module._bn0, nn.BatchNorm2d) and isinstance(lm.module._bn0, nn.Identity)


def test_cache_and_weights_changed_between_calls():
    m = _torchvision("resnet18")
    x = torch.rand(1, 3, 64, 64)
    a = lowered(m, x)
    assert lowered(m, x) is a  # cached: same weights
    changes = [
        lambda: m.module.bn1.running_var.mul_(2),            # in place (version counter)
        lambda: m.module.layer1[0].conv1.weight.data.mul_(0.5),  # through .data (no version bump)
        lambda: m.module.load_state_dict(_torchvision("resnet18").module.state_dict()),
    ]
    prev = a
    for i, change in enumerate(changes):
        with torch.no_grad():
            change()
        now = lowered(m, x)
        assert now is not prev, i
        o, _ = logits_and_grad(m, x)
        ol, _ = logits_and_grad(now, x)
        assert rel(ol, o) <= LOGIT_TOL, i  # the new copy follows the new weights
        prev = now
    # the synthesis loop picks up a change too
    with torch.no_grad():
        m.module.fc.bias.add_(100 * torch.nn.functional.one_hot(torch.tensor(3), 1000).float())
    r = fv.class_model(m, [3], steps=1, size=64, reg=NONE)
    assert r.history[0, 0] > 90  # the bias of 100 is in the lowered copy the loop ran
    assert fingerprint(m.module)[0] == fingerprint(m.module)[0]


class Tricky(nn.Module):
    """conv->BN (foldable), ReLU->BN (not), conv feeding BN and a residual (not), BN without stats."""

    def __init__(self, data_dependent: bool = False):
        super().__init__()
        self.data_dependent = data_dependent
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.bn_after_relu = nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, track_running_stats=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        if self.data_dependent and bool(x.mean() > -1e9):  # fx cannot trace this
            x = x * 1.0
        h = self.bn_after_relu(self.relu(self.bn1(self.conv1(x))))
        y = self.conv2(h)
        h = self.bn2(y) + y  # the conv's output is used twice
        h = self.bn3(self.conv3(h))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("data_dependent", [False, True], ids=["fx", "recorded"])
def test_unfoldable_bn_is_skipped_and_reported(data_dependent, snapshot):
    torch.manual_seed(0)
    net = Tricky(data_dependent)
    randomise_bn(net)
    m = fv.Model(net.eval(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=16, labels=list("abcde"))
    snap = snapshot(net)
    x = torch.rand(2, 3, 16, 16)
    lm = lowered(m, x)
    assert lm.report.method.startswith("fx" if not data_dependent else "recorded forward (fx:")
    assert lm.report.folded == [("conv1", "bn1")]
    skipped = dict(lm.report.skipped)
    # Where fx cannot trace, the activation fusion (which needs fx's graph) says so too.
    assert set(skipped) == {"bn_after_relu", "bn2", "bn3"} | ({"activations"} if data_dependent else set())
    assert not data_dependent or "fx cannot trace" in skipped["activations"]
    assert "not a conv" in skipped["bn_after_relu"]
    assert "also used" in skipped["bn2"]
    assert "running statistics" in skipped["bn3"]
    o64, g64 = logits_and_grad(float64(m), x.double())
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL and rel(gl, g64) <= 1e-5
    snap.assert_unchanged()
    r = fv.class_model(m, [1, 2], steps=2)
    assert r.info["lower"]["folded"] == 1
    assert any(s.startswith("bn2: ") and "also used" in s for s in r.info["lower"]["skipped"])
    snap.assert_unchanged()


def test_render_lower_off_and_on_agree(lite0):
    kw = dict(steps=3, size=96, seed=0)
    a = fv.class_model(lite0, [285, 967], lower=False, **kw)
    b = fv.class_model(lite0, [285, 967], **kw)
    assert a.info["lower"] is None and b.info["lower"]["folded"] == 49
    assert b.info["lower"]["copy_mb"] > 10
    # Same start, three steps: the scores agree to rounding (no percentile clip has moved yet).
    assert torch.allclose(a.history[0], b.history[0], rtol=1e-4, atol=1e-3)
    assert torch.allclose(a.history, b.history, rtol=2e-2, atol=5e-2)


def test_saliency_lower_equals_exact(lite0, cat_coffee):
    exact = fv.saliency(lite0, cat_coffee, [285, 967])
    fast = fv.saliency(lite0, cat_coffee, [285, 967], lower=True)
    assert exact.abs().sum() > 0
    assert rel(fast, exact) <= 2e-3
    n = fv.Neuron("_blocks.10", channel=3)
    assert rel(fv.neuron_gradient(lite0, cat_coffee, n, lower=True), fv.neuron_gradient(lite0, cat_coffee, n)) <= 2e-3


def test_a_network_that_cannot_be_copied_runs_as_it_is_and_says_so(snapshot):
    import threading

    torch.manual_seed(0)
    net = Tricky()
    net.lock = threading.Lock()  # deepcopy raises on it
    m = fv.Model(net, input_size=16, labels=list("abcde"))
    snap = snapshot(net)
    with pytest.warns(RuntimeWarning, match="could not lower"):
        r = fv.class_model(m, [1], steps=2)
    assert r.info["lower"]["method"].startswith("not lowered (TypeError") and r.info["lower"]["folded"] == 0
    assert r.history[-1, 0] != r.history[0, 0]
    snap.assert_unchanged()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lowered_on_cuda_and_in_the_graph():
    m = fv.load_model(device="cuda")
    x = fv.load_images(fv.sample_images()["chelsea"]).cuda()
    lm = lowered(m, x)
    assert lm.module._conv_stem.weight.is_cuda and len(lm.report.folded) == 49
    o, g = logits_and_grad(m, x)
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o) <= 1e-4 and rel(gl, g) <= GRAD_TOL  # cuDNN's TF32 / algorithm choice differ
    r = fv.class_model(m, [285], steps=8, backend="graph")
    assert r.info["backend"] == "graph" and r.info["lower"]["folded"] == 49


# -- activations fused into the conv before them (CPU, channels_last) --------------------------
class _ConvBnAct(nn.Module):
    """conv -> BN -> activation -> 1x1 conv -> pool: one fusable pair, pre-activations spread
    over (-6, 12) so ReLU6's both kinks are crossed."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, nn.BatchNorm2d(conv.out_channels), act
        self.head = nn.Sequential(nn.Conv2d(conv.out_channels, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            self.conv.weight.mul_(4.0)
            self.bn.bias.fill_(2.0)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))))


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.ReLU(inplace=True), nn.Hardtanh(-1.0, 3.0)])
@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(6, 12, 1),                         # a matmul (Pointwise)
    lambda: nn.Conv2d(6, 6, 3, 2, 1, groups=6),          # depthwise, stride 2
    lambda: nn.Conv2d(6, 10, 3, 1, 1, bias=False),       # dense 3x3
], ids=["pointwise", "depthwise-s2", "dense3x3"])
def test_fused_activation_is_the_same_function(act, conv):
    torch.manual_seed(0)
    net = randomise_bn(_ConvBnAct(conv(), act)).eval()
    m = fv.Model(net, mean=(0.5,) * 6, std=(0.25,) * 6, input_size=12)
    x = torch.rand(3, 6, 12, 12, generator=torch.Generator().manual_seed(1))
    lm = lowered(m, x)
    assert lm.report.activation_fused == [("conv", ["bn"], "act")]
    assert isinstance(lm.module.act, type(act)) and type(lm.module.act) is not type(act)  # passes through
    o64, g64 = logits_and_grad(float64(m), x.double())
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL and rel(gl, g64) <= 1e-5
    # The same with the torch fallback (no oneDNN): in-place activation after torch's own op.
    fused = lm.module.conv
    fused.onednn = False
    try:
        of, gf = logits_and_grad(lm, x)
    finally:
        fused.onednn = True
    assert rel(of, o64) <= LOGIT_TOL and rel(gf, g64) <= 1e-5


class _SharedAct(nn.Module):
    """One ReLU6 module called twice: after a conv (fusable) and after a residual add (not)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        with torch.no_grad():
            self.c1.weight.mul_(20.0)
            self.c2.weight.mul_(10.0)

    def forward(self, x):
        y = self.act(self.c1(x))
        return self.head(self.act(self.c2(y) + y))


def test_shared_activation_after_a_fused_conv_and_after_an_add(snapshot):
    torch.manual_seed(0)
    net = _SharedAct().eval()
    snap = snapshot(net)
    m = fv.Model(net, input_size=16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    lm = lowered(m, x)
    assert lm.report.activation_fused == [("c1", [], "act")]  # c2's output goes to the add
    o64, g64 = logits_and_grad(float64(m), x.double())
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL and rel(gl, g64) <= 1e-5
    # The add's output crosses 6, so the module must still clamp it on its second call.
    seen = []
    h = lm.module.act.register_forward_hook(lambda _m, i, o: seen.append((float(i[0].max()), float(o.max()))))
    try:
        lm(x)
    finally:
        h.remove()
    assert len(seen) == 2 and seen[1][0] > 6.0 and max(o for _, o in seen) == 6.0
    snap.assert_unchanged()
    assert type(net.act) is nn.ReLU6 and isinstance(net.c1, nn.Conv2d)


class _ActIntoAdd(nn.Module):
    """conv -> ReLU6 into a residual add with a conv made before it: the add hands one gradient
    tensor to both branches, and the fused conv's backward runs first."""

    def __init__(self, into: str):
        super().__init__()
        self.c0, self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.act, self.into = nn.ReLU6(), into
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        with torch.no_grad():
            self.c1.weight.mul_(20.0)

    def forward(self, x):
        z = self.c0(x)
        y = self.act(self.c1(x))
        return self.head(self.c2(y + z) if self.into == "add" else self.c2(y) + z)


@pytest.mark.parametrize("into", ["add", "conv"])
def test_the_mask_is_applied_in_place_only_to_a_gradient_nothing_else_holds(into):
    torch.manual_seed(0)
    m = fv.Model(_ActIntoAdd(into).eval(), input_size=16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    lm = lowered(m, x)
    assert [c for c, *_ in lm.report.activation_fused] == ["c1"]
    # Into a conv, the gradient reaching c1's backward is c2's fresh input gradient: masked in
    # place. Into the add it is the same tensor c0's backward reads later: masked into a new one.
    assert lm.report.mask_in_place == ([] if into == "add" else ["c1"])
    o64, g64 = logits_and_grad(float64(m), x.double())
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL and rel(gl, g64) <= 1e-5
    if into == "add":  # the rule is what keeps it right: in place there would change c0's gradient
        lm.module.c1.grad_owned = True
        try:
            _, bad = logits_and_grad(lm, x)
        finally:
            lm.module.c1.grad_owned = False
        assert rel(bad, g64) > 1e-2


def test_lite0_activations_fused_and_cached_by_what_the_caller_reads(lite0):
    x = torch.rand(1, 3, 224, 224)
    release(lite0)
    lm = lowered(lite0, x)
    fused = {c: path for c, path, _ in lm.report.activation_fused}
    # The stem, 16 depthwise, 15 expand convs and the head apply their ReLU6; project convs have none.
    assert len(fused) == 33 and fused["_blocks.1._depthwise_conv"] == ["_blocks.1._bn1"]
    assert "_blocks.1._project_conv" not in fused
    assert lm.report.summary()["activation_fused"] == 33
    # Every fused conv but the head (into the pool) feeds one conv: its mask runs in place.
    assert set(c for c, *_ in lm.report.activation_fused) - set(lm.report.mask_in_place) == {"_conv_head"}
    # A later call that reads a name the fusion changed gets a copy made for it, not the cached one.
    kept = lowered(lite0, x, keep=["_blocks.1._bn1"])
    assert kept is not lm and "_blocks.1._depthwise_conv" not in {c for c, *_ in kept.report.activation_fused}
    assert lowered(lite0, x, keep=["_blocks.10"]) is kept  # a block output is the same in both
    assert not lowered(lite0, x, activations=False).report.activation_fused
    assert not lowered(lite0, x, channels_last=False).report.activation_fused


def test_guided_backprop_and_deconvnet_through_the_fused_copy(lite0, cat_coffee):
    exact = fv.guided_backprop(lite0, cat_coffee, [285, 967])
    fast = fv.guided_backprop(lite0, cat_coffee, [285, 967], lower=True)
    assert exact.abs().sum() > 0 and rel(fast, exact) <= 2e-3
    # Deconvnet replaces the activation's backward, so it runs on a copy without the fusion.
    from fastviz.attribution import gradient

    g_exact, _ = gradient(lite0, cat_coffee, [285, 967], deconv=True)
    g_fast, _ = gradient(lite0, cat_coffee, [285, 967], deconv=True, lower=True)
    assert rel(g_fast, g_exact) <= 2e-3


def test_bf16_autocast_through_the_fused_copy(lite0):
    release(lite0)
    r = fv.class_model(lite0, [285], steps=2, size=64, amp=True)
    assert r.info["lower"]["activation_fused"] == 33 and bool(r.images.isfinite().all())


class _InPlaceAfter(nn.Module):
    """conv -> ReLU6 whose output is then changed in place (`y += 1`) and activated again."""

    def __init__(self, in_place: str):
        super().__init__()
        self.c1, self.c2, self.act, self.in_place = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.ReLU6(), in_place
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        with torch.no_grad():
            self.c1.weight.mul_(20.0)

    def forward(self, x):
        y = self.act(self.c1(x))
        if self.in_place == "+=":
            y += 1.0
        elif self.in_place == "add_":
            y = y.add_(1.0)
        else:
            y = y + 1.0
        return self.head(self.c2(self.act(y)))


@pytest.mark.parametrize("in_place", ["", "+=", "add_"])
def test_an_activated_output_changed_in_place_is_not_fused(in_place):
    torch.manual_seed(0)
    m = fv.Model(_InPlaceAfter(in_place).eval(), input_size=16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    lm = lowered(m, x)
    # The fused conv keeps its output for the backward, so an in-place change after it would
    # break the backward. `add_` is in fx's graph: that conv is left alone. fx records `+=` as a
    # plain add: the end-to-end check at lowering sees the backward fail and fuses nothing.
    # Without either it is fused, and the second call of the same module still clamps what the
    # add pushed above 6.
    assert [c for c, *_ in lm.report.activation_fused] == ([] if in_place else ["c1"])
    assert any(n == "activations" and "backward failed" in r for n, r in lm.report.skipped) is (in_place == "+=")
    o64, g64 = logits_and_grad(float64(m), x.double())
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL and rel(gl, g64) <= 1e-5


def test_the_mark_is_void_after_an_in_place_change():
    from fastviz.fused import _activated, _tag

    y = _tag(torch.rand(4), ("hardtanh", (0.0, 6.0)))
    assert _activated(y, ("hardtanh", (0.0, 6.0))) and not _activated(y, ("relu", ()))
    y.add_(10.0)
    assert not _activated(y, ("hardtanh", (0.0, 6.0)))
    assert not _activated(torch.rand(4), ("relu", ()))
