"""Activations fused into the conv before them (fastviz/lower/activations.py)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.lower import lowered, release
from lower_helpers import LOGIT_TOL, float64, logits_and_grad, randomise_bn, rel


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
