"""What explanations share (fastviz/explain.py): inputs, target checks, logits, the top-1 rule."""

import pytest
import torch

import fastviz as fv
from fastviz.explain import check_class_target, check_logits, prepare, resolve_targets, target_scores
from tiny_net import tiny


def test_prepare_checks_and_moves_the_images():
    m, x = prepare(tiny(), torch.rand(2, 3, 32, 32, dtype=torch.float64))
    assert isinstance(m, fv.Model) and x.dtype == torch.float32
    with pytest.raises(fv.FastvizError, match="photo"):
        prepare(tiny(), torch.rand(2, 3, 32), "photo")
    with pytest.raises(fv.FastvizError, match="x"):
        prepare(tiny(), 2 * torch.ones(1, 3, 32, 32))  # outside [0, 1] for a normalising model


def test_targets_given_or_top1():
    m = tiny()
    logits = torch.tensor([[0.0, 3.0, 1.0] + [0.0] * 7, [5.0, 0.0, 1.0] + [0.0] * 7])
    assert resolve_targets(m, logits, None).tolist() == [1, 0]
    assert resolve_targets(m, logits, 2).tolist() == [2, 2]
    assert resolve_targets(m, logits, [4, 7]).tolist() == [4, 7]
    scores, t = target_scores(m, logits, None)
    assert scores.tolist() == [3.0, 5.0] and t.tolist() == [1, 0]
    with pytest.raises(fv.FastvizError, match="target"):
        resolve_targets(m, logits, [1, 2, 3])
    with pytest.raises(fv.FastvizError, match="target"):
        resolve_targets(m, logits, 10)


def test_class_targets_are_refused_before_any_forward():
    m, x = tiny(), torch.rand(2, 3, 32, 32)
    calls = []
    m.module.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(fv.FastvizError, match="Neuron"):
        check_class_target(m, x, fv.Neuron("features.0", 1), "Grad-CAM")
    with pytest.raises(fv.FastvizError, match="target"):
        check_class_target(m, x, 11)
    assert check_class_target(m, x, [1, 2]) == [1, 2] and calls == []


def test_logits_must_be_two_dimensional():
    assert check_logits(torch.zeros(2, 5)).shape == (2, 5)
    with pytest.raises(fv.FastvizError, match=r"logits \(B, classes\), got \(2, 5, 3\)"):
        check_logits(torch.zeros(2, 5, 3))
    with pytest.raises(fv.FastvizError, match="tuple"):
        check_logits((torch.zeros(2, 5),))
