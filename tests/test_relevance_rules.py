"""Each LRP rule against zennit's rule of the same name, on one conv and one dense layer, with a
signed input and with a non-negative one (the rules skip the negative input's terms there), and
the rules' own argument checks."""

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.relevance import rules

zennit_rules = pytest.importorskip("zennit.rules")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import NameMapComposite  # noqa: E402

LOW, HIGH = -1.0, 2.0  # the input's bounds, for z-box (the model takes its input as is)

PAIRS = {  # fastviz rule, zennit rule
    "epsilon": (rules.Epsilon(1e-3), lambda: zennit_rules.Epsilon(1e-3)),
    "lrp0": (rules.Epsilon(0.0), lambda: zennit_rules.Epsilon(0.0)),
    "zplus": (rules.ZPlus(), lambda: zennit_rules.ZPlus()),
    "alpha2beta1": (rules.AlphaBeta(2.0, 1.0), lambda: zennit_rules.AlphaBeta(2.0, 1.0)),
    "alpha1beta0": (rules.AlphaBeta(1.0, 0.0), lambda: zennit_rules.AlphaBeta(1.0, 0.0)),
    "gamma": (rules.Gamma(0.5), lambda: zennit_rules.Gamma(0.5)),
    "zbox": (rules.ZBox(LOW, HIGH), lambda: zennit_rules.ZBox(LOW, HIGH)),
    "flat": (rules.Flat(), lambda: zennit_rules.Flat()),
    "wsquare": (rules.WSquare(), lambda: zennit_rules.WSquare()),
    "norm": (rules.Norm(), lambda: zennit_rules.Norm()),
}


def net(first_relu: bool, dense: bool):
    torch.manual_seed(0)
    layer = nn.Linear(48, 6) if dense else nn.Conv2d(3, 6, 3, padding=1)
    mods = ([nn.ReLU()] if first_relu else []) + ([nn.Flatten(), layer] if dense else [layer, nn.Flatten()])
    mods += [nn.Linear(6 if dense else 6 * 4 * 4, 5)]
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize("dense", [False, True], ids=["conv", "dense"])
@pytest.mark.parametrize("first_relu", [False, True], ids=["signed input", "non-negative input"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_rule_equals_zennit(name, first_relu, dense):
    m = net(first_relu, dense)
    names = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    mine, theirs = PAIRS[name]
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * (HIGH - LOW) + LOW
    t = torch.tensor([0, 2, 4])
    r = _lrp_unchecked(m, x, t, {names[0]: mine, names[1]: rules.Epsilon(1e-6)})
    relus = tuple(n for n, mod in m.named_modules() if isinstance(mod, nn.ReLU))
    comp = NameMapComposite([((names[0],), theirs()), ((names[1],), zennit_rules.Epsilon(1e-6)),
                             (relus, zennit_rules.Pass())])  # as fastviz's composites pass a ReLU
    with Gradient(model=m, composite=comp) as attributor:
        _, z = attributor(x, lambda o: torch.nn.functional.one_hot(t, 5) * o)
    torch.testing.assert_close(r, z, rtol=1e-5, atol=1e-6 * float(z.abs().max()))


def _lrp_unchecked(m, x, t, given):
    """fv.lrp on inputs outside [0, 1]: a bare nn.Module takes its input as is (no range check)."""
    return fv.lrp(m, x, t, rules=given).relevance


def test_zplus_signed_input_split_is_exact_for_each_sign_case():
    """W+x+ + W-x- = (Wx + |W||x|)/2 in each of the four sign cases of w and x."""
    w = torch.tensor([2.0, 2.0, -3.0, -3.0])
    x = torch.tensor([1.5, -1.5, 1.5, -1.5])
    direct = w.clamp(min=0) * x.clamp(min=0) + w.clamp(max=0) * x.clamp(max=0)
    torch.testing.assert_close((w * x + w.abs() * x.abs()) / 2, direct)


@pytest.mark.parametrize("make,match", [
    (lambda: rules.AlphaBeta(2.0, 2.0), "alpha - beta = 1"),
    (lambda: rules.AlphaBeta(-1.0, -2.0), r"AlphaBeta.alpha: expected a number in \[0"),
    (lambda: rules.Epsilon(-1.0), r"Epsilon.epsilon: expected a number in \[0"),
    (lambda: rules.Gamma("big"), "Gamma.gamma: expected a number"),
    (lambda: rules.ZBox(0.0, float("nan")), "ZBox.high: expected a finite number"),
])
def test_rule_arguments_are_checked(make, match):
    with pytest.raises(fv.FastvizError, match=match):
        make()


def test_rules_say_what_they_apply_to():
    assert rules.AFFINE in rules.ZPlus.kinds and rules.ELEMENTWISE in rules.Pass.kinds
    assert rules.LINEAR in rules.Norm.kinds and rules.AFFINE in rules.Norm.kinds
