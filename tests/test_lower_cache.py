"""The lowered copy's cache (fastviz/lower/cache.py): reused while the weights are unchanged."""

from __future__ import annotations


import torch

import fastviz as fv
from fastviz.regularizers import NONE
from fastviz.lower import fingerprint, lowered, release
from lower_helpers import LOGIT_TOL, logits_and_grad, rel, torchvision_model


def test_cache_and_weights_changed_between_calls():
    m = torchvision_model("resnet18")
    x = torch.rand(1, 3, 64, 64)
    a = lowered(m, x)
    assert lowered(m, x) is a  # cached: same weights
    changes = [
        lambda: m.module.bn1.running_var.mul_(2),            # in place (version counter)
        lambda: m.module.layer1[0].conv1.weight.data.mul_(0.5),  # through .data (no version bump)
        lambda: m.module.load_state_dict(torchvision_model("resnet18").module.state_dict()),
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
