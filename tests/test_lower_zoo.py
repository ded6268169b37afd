"""The lowered copy (fastviz/lower/) on timm's families: same function, the report says what was
folded and why not, the user's network untouched.

Random weights with randomised BatchNorm statistics (so folding has something to fold), small
inputs where the model allows (fixed-size models built with a small `img_size`), batch 2.

Bounds (fp32, 1 thread, any CPU), each against a float64 evaluation of the user's network:
- logits: relative L2 <= LOGIT_TOL (1e-5). Folding rounds each folded weight once and the
  lowered kernels sum in another order: fp32 rounding, measured 2e-7 to 1e-6 on these families
  for both the original and the lowered network.
- input gradients: relative L2 <= GRAD_TOL (2e-2). A ReLU network's gradient jumps where a
  pre-activation crosses 0, and fp32 rounding flips a few such kinks: the *original* timm
  densenet121 in fp32 is 8e-4 from float64 here (tests/test_lower_build.py says more).
A rewrite that changes the function (the activation inside timm's `BatchNormAct2d` dropped with
its BN, as lowering once did) is off by 1e2 to 1e4 relative: far outside both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import fastviz as fv
from fastviz.lower import lowered
from fastviz.lower.fold import NormTail
from lower_helpers import GRAD_TOL, LOGIT_TOL, float64, logits_and_grad, randomise_bn, rel

timm = pytest.importorskip("timm")

_NORMS = (nn.LayerNorm, nn.GroupNorm)

def _family(name: str, kwargs: dict, size: int, folded: int, skip_says: str | None = None, slow=False):
    """timm name, create_model kwargs, input side, BNs folded, what every skipped BN's reason says."""
    return pytest.param(name, kwargs, size, folded, skip_says, id=name, marks=[pytest.mark.slow] if slow else [])


FAMILIES = [
    _family("resnet18", {}, 64, 20),
    _family("efficientnet_b0", {}, 64, 49),  # BatchNormAct2d (SiLU) after every conv
    _family("mobilenetv3_small_100", {}, 64, 34),  # BatchNormAct2d (hard-swish, ReLU)
    _family("convnext_atto", {}, 64, 0),  # LayerNorm: nothing to fold
    _family("regnetx_002", {}, 64, 44),  # BatchNormAct2d (ReLU): folded, then fused into the conv
    _family("densenet121", {}, 64, 59, "not a conv's output (comes from cat)"),  # pre-activation BNs
    _family("vit_tiny_patch16_224", {"img_size": 64}, 64, 0),
    _family("deit_tiny_distilled_patch16_224", {"img_size": 64}, 64, 0),
    _family("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 64, 0),
    _family("levit_128s", {"img_size": 64}, 64, 4, "not a conv's output (comes from"),  # BN after Linear
    _family("mobilevit_xxs", {}, 64, 32),  # fx cannot trace it: pairs from a recorded forward
    # Conv + BN stages, then LayerNorm attention whose biases are fixed at 7x7 tokens: 224 only.
    _family("efficientformer_l1", {}, 224, 33, slow=True),
    _family("resnet50d", {}, 64, 55, slow=True),
]


def _build(name: str, kwargs: dict) -> fv.Model:
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, **kwargs)  # left in training mode, as timm makes it
    randomise_bn(net)
    next(net.parameters()).requires_grad_(False)  # a mix of frozen and trainable, to be kept
    return fv.Model.from_timm(net)


@pytest.mark.parametrize("name,kwargs,size,folded,skip_says", FAMILIES)
def test_lowered_equals_eager_and_says_what_it_folded(name, kwargs, size, folded, skip_says, snapshot):
    m = _build(name, kwargs)
    net = m.module
    state = {k: v.clone() for k, v in net.state_dict().items()}
    snap = snapshot(net)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    lm = lowered(m, x)
    report = lm.report
    assert not report.method.startswith("not lowered"), report.method
    assert report.method == "fx" or (name == "mobilevit_xxs" and report.method.startswith("recorded forward"))
    assert len(report.folded) == folded, [b for _, b in report.folded][:5]
    skipped = [(b, why) for b, why in report.skipped if b not in ("activations", "channels_last")]
    if skip_says is None:
        assert not skipped, skipped[:3]
    else:
        assert skipped and all(skip_says in why for _, why in skipped), skipped[:3]
    # Every BN folded or said; no LayerNorm / GroupNorm touched.
    bns = {n for n, mod in net.named_modules() if isinstance(mod, _BatchNorm)}
    assert bns == {b for _, b in report.folded} | {b for b, _ in skipped}
    # A copy with nothing folded or rewritten keeps the network's layout (channels_last alone
    # cost convnext_tiny 3-5%); one with folded BNs goes channels_last.
    assert report.channels_last == bool(report.folded or report.matmul or report.activation_fused)
    norms = lambda mod: sorted(n for n, k in mod.named_modules() if isinstance(k, _NORMS))
    assert norms(lm.module) == norms(net)
    # A folded norm + activation keeps its activation (the same kind, under the same name).
    lowered_modules = dict(lm.module.named_modules())
    for _, b in report.folded:
        orig = dict(net.named_modules())[b]
        if hasattr(orig, "act"):
            assert isinstance(lowered_modules[b], NormTail)
            assert isinstance(lowered_modules[b + ".act"], type(orig.act))

    o64, g64 = logits_and_grad(float64(m), x.double())
    o, g = logits_and_grad(m, x)
    ol, gl = logits_and_grad(lm, x)
    assert rel(ol, o64) <= LOGIT_TOL, (rel(ol, o64), rel(o, o64))
    assert rel(gl, g64) <= GRAD_TOL, (rel(gl, g64), rel(g, g64))
    assert gl.abs().sum() > 0

    # The user's network as it came: weights, buffers, training flags, requires_grad, modules.
    snap.assert_unchanged()
    assert net.training
    now = net.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)


def test_a_copy_that_computes_something_else_is_refused(monkeypatch, snapshot):
    """The end-to-end check: with the norm + activation modules folded into plain Identities (the
    activation lost), the copy's output is off, and the loop runs the user's network, saying why."""
    import fastviz.lower.build as build

    monkeypatch.setattr(build, "after_fold", lambda bn: nn.Identity())
    m = _build("efficientnet_b0", {})
    snap = snapshot(m.module)
    with pytest.warns(RuntimeWarning, match="could not lower"):
        r = fv.class_model(m, [1], steps=2, size=64, param="pixel")
    assert r.info["lower"]["method"].startswith("not lowered (LoweringMismatch")
    assert "relative L2" in r.info["lower"]["method"] and r.info["lower"]["folded"] == 0
    assert r.history[-1, 0] != r.history[0, 0]
    snap.assert_unchanged()


def test_render_reports_the_fold_on_a_timm_network():
    m = _build("regnetx_002", {})
    r = fv.class_model(m, [1, 2], steps=2, size=64, param="pixel")
    lower = r.info["lower"]
    assert lower["folded"] == 44 and lower["method"] == "fx" and lower["activation_fused"] > 0
    a = fv.class_model(m, [1, 2], steps=2, size=64, param="pixel", lower=False)
    # Same start: the first step's scores agree to fp32 rounding.
    assert torch.allclose(a.history[0], r.history[0], rtol=1e-4, atol=1e-4)
