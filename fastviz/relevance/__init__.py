"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019), equal to zennit's.

`lrp(model, x, target)` explains the target logit of each row: the logit is the relevance at
the output, and every layer hands its relevance to its inputs by its rule (`fastviz.relevance.rules`),
chosen by a composite (`fastviz.relevance.composites`) or by the user per layer name. It runs on a
canonical copy of the network (`fastviz.relevance.graph`: BatchNorm folded, every operation given a
rule or refused by name), cached on the `Model`, in one forward and one backward per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .. import budget, checks
from ..errors import FastvizError
from ..explain import check_class_target, check_logits, prepare, target_scores
from ..lower.cache import _same, fingerprint
from ..models import Model
from . import rules
from .composites import COMPOSITES, Composite
from .graph import RelevanceNet, build
from .rules import Rule, ZBox

CACHED = 4  # relevance networks kept per model (one per composite and rules tried)

__all__ = ["lrp", "LRPResult", "COMPOSITES", "rules"]


@dataclass
class LRPResult:
    """What `lrp` returns.

    relevance: (B, C, H, W) signed relevance of each pixel of the [0, 1] image.
    targets: (B,) the class explained in each row.
    logits: (B,) that class's logit: the relevance the explanation starts from.
    conservation: (B,) sum of the input relevance / the logit (1 for a network whose biases
        take no relevance; less, or more, where biases and stabilisers absorb some).
    composite: the composite's name; rules: what each layer got (layer or node -> rule).
    """

    relevance: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    conservation: torch.Tensor
    composite: str
    rules: dict

    @property
    def maps(self) -> torch.Tensor:
        """(B, H, W) relevance summed over the colour channels (signed)."""
        return self.relevance.sum(1)


def lrp(model, x, target=None, *, composite: str = "epsilon_plus_flat",
        rules: Mapping[str, Rule] | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
        stabilizer: float = 1e-6, low: float | Sequence[float] = 0.0,
        high: float | Sequence[float] = 1.0) -> LRPResult:
    """Layer-wise relevance propagation of each row's class logit to its pixels.

    Args:
        model: `Model` or nn.Module (a CNN: convolutions, dense layers, BatchNorm, element-wise
            activations, pools, residual sums, sigmoid gates; anything else is refused by name).
        x: (B, C, H, W) images in [0, 1].
        target: class per row (int, list, tensor) or None for each row's top-1.
        composite: the rules by layer kind (`fastviz.relevance.composites`): "epsilon_plus_flat"
            (default), "epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "epsilon_plus",
            "epsilon_alpha2_beta1" or "epsilon".
        rules: {layer name: rule}, e.g. {"features.0": rules.ZBox(0, 1)}: wins over the composite
            for that layer (a container's name: for every layer inside it the rule applies to).
        epsilon: Epsilon's stabiliser on dense layers (0 gives LRP-0).
        gamma: Gamma's gamma (epsilon_gamma_box).
        stabilizer: the other rules' stabiliser.
        low, high: the bounds of the input for ZBox, in [0, 1] image units (a number or one per
            channel); mapped through the model's normalisation.

    Returns:
        `LRPResult`: relevance (B, C, H, W), targets, logits, conservation, composite, rules.

    Raises:
        FastvizError: bad images or target, an unknown composite or layer name, a rule that does
            not apply to the layer it is given, a layer or operation no rule covers.

    Example:
        >>> r = lrp(load_model(), load_images(sample_images()["chelsea"]), target=285)
        >>> r.relevance.shape, r.maps.shape
        (torch.Size([1, 3, 224, 224]), torch.Size([1, 224, 224]))
    """
    composite = checks.choice(composite, "composite", COMPOSITES)
    epsilon = checks.number(epsilon, "epsilon", 0)
    gamma = checks.number(gamma, "gamma", 0)
    stabilizer = checks.number(stabilizer, "stabilizer", 0)
    low = _bounds(low, "low")
    high = _bounds(high, "high")
    m, x = prepare(model, x)
    check_class_target(m, x, target, "lrp")
    user = _user_rules(m, rules)
    if any(lo >= hi for lo, hi in zip(_per_channel(low, x.shape[1]), _per_channel(high, x.shape[1]))):
        raise FastvizError(f"low, high: expected low < high for every channel, got {low} and {high}")
    spec = Composite(composite, epsilon, gamma, stabilizer, _normalised(m, low, x.shape[1]),
                     _normalised(m, high, x.shape[1]))
    user = {name: _in_network_units(m, rule, x.shape[1]) for name, rule in user.items()}
    n, kept = x.shape[0], x.numel() * x.element_size()
    budget.check_output(kept, x.device, "x", f"{n} relevance maps of {tuple(x.shape[1:])}")
    # Each rule keeps its layer's input and output for the backward: about twice what a
    # gradient keeps, so half the rows of a gradient's chunk (fastviz.budget).
    step = max(1, budget.rows(m, x, grad=True, total=n, fixed=kept) // 2)
    net = _relevance_net(m, x, spec, user)  # after the budget's refusals: the copy costs memory
    parts = [_explain(m, net, x[i:i + step], budget.row_slice(target, i, i + step))
             for i in range(0, n, step)]
    rel, score, used = (torch.cat(t) for t in zip(*parts))
    conservation = rel.flatten(1).sum(1) / score
    return LRPResult(rel, used, score, conservation, composite, dict(net.rules))


def _explain(m: Model, net: RelevanceNet, x: torch.Tensor, target):
    """One chunk: (relevance, explained logit, class) per row, one forward and one backward."""
    with torch.enable_grad():
        xn = m.normalize(x)
        if xn.dim() == 4:  # the copy's weights are channels_last (measured faster on the CPU)
            xn = xn.contiguous(memory_format=torch.channels_last)
        xn = xn.detach().requires_grad_(True)
        logits = check_logits(m.select(net.module(m.fit(xn))))
        score, used = target_scores(m, logits, target)
        (rel,) = torch.autograd.grad(score, xn, grad_outputs=score.detach())
    return rel.detach().contiguous(), score.detach(), used


def _bounds(value, name: str):
    if isinstance(value, (list, tuple, torch.Tensor)):
        return checks.floats(value, name)
    return checks.number(value, name)


def _per_channel(value, channels: int) -> tuple[float, ...]:
    if isinstance(value, tuple):
        if len(value) not in (1, channels):
            raise FastvizError(f"low / high: expected one number or {channels} (one per channel), "
                               f"got {len(value)}")
        return value if len(value) == channels else value * channels
    return (value,) * channels


def _normalised(m: Model, value, channels: int) -> tuple[float, ...]:
    """A bound in [0, 1] image units as the network sees it: (v - mean) / std per channel."""
    if m.mean is None:
        return value  # the network takes the image as it is: the bound as given
    v = _per_channel(value, channels)
    return tuple((b - mu) / sd for b, mu, sd in zip(v, m.mean, m.std))


def _in_network_units(m: Model, rule: Rule, channels: int) -> Rule:
    if isinstance(rule, ZBox):
        return ZBox(_normalised(m, _bounds(rule.low, "ZBox.low"), channels),
                    _normalised(m, _bounds(rule.high, "ZBox.high"), channels), rule.stabilizer)
    return rule


def _user_rules(m: Model, given) -> dict[str, Rule]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise FastvizError(f"rules: expected a mapping {{layer name: rule}}, got {type(given).__name__}")
    out = {}
    for name, rule in given.items():
        try:
            m.layer(name)
        except FastvizError as e:  # an unknown name: the nearest names, under the argument's name
            raise FastvizError(f"rules: {str(e).split(': ', 1)[-1]}") from None
        if not isinstance(rule, Rule):
            raise FastvizError(f"rules[{name!r}]: expected a rule from fastviz.relevance.rules "
                               f"(Epsilon, ZPlus, Gamma, AlphaBeta, ZBox, Flat, WSquare, Norm, Pass), "
                               f"got {type(rule).__name__}")
        out[name] = rule
    return out


def _assigner(spec: Composite, user: dict[str, Rule]):
    """(name, kind, module, first) -> Rule: the user's rule for the layer (or for the nearest
    container that names it, where the rule applies to the layer's kind), else the composite's."""
    kinds = {"conv": rules.AFFINE, "dense": rules.AFFINE, "pool": rules.LINEAR, "sum": rules.LINEAR,
             "activation": rules.ELEMENTWISE, "batchnorm": rules.ELEMENTWISE}
    used: set[str] = set()

    def assign(name: str, kind: str, module, first: bool) -> Rule:
        if module is not None:
            if name in user:
                used.add(name)
                return user[name]  # checked against the layer's kind by the builder
            parts = name.split(".")
            for i in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:i])
                if prefix in user and kinds[kind] in user[prefix].kinds:
                    used.add(prefix)
                    return user[prefix]
        return spec.rule(kind, first)

    assign.used = used
    return assign


def _relevance_net(m: Model, x: torch.Tensor, spec: Composite, user: dict[str, Rule]) -> RelevanceNet:
    """The relevance network from the Model's cache, built when the weights or rules changed."""
    cache = m.__dict__.setdefault("_lrp", {})
    key = (x.device, x.dtype, spec, tuple(sorted(user.items(), key=lambda kv: kv[0])))
    fp = fingerprint(m.module)
    hit = cache.get(key)
    if hit is not None and _same(hit[0], fp):
        return hit[1]
    assign = _assigner(spec, user)
    net = build(m.module, m.fit(m.normalize(x[:1])), assign)
    unused = sorted(set(user) - assign.used)
    if unused:
        folded = {bn: conv for conv, bn in net.folded}
        name = unused[0]
        if name in folded:
            raise FastvizError(f"rules: {name!r} is a BatchNorm folded into {folded[name]!r}; "
                               f"give the rule to {folded[name]!r}")
        raise FastvizError(f"rules: no layer the forward runs under {name!r} takes "
                           f"{user[name]} (convs and dense layers take Epsilon, ZPlus, Gamma, "
                           f"AlphaBeta, ZBox, Flat, WSquare, Norm; activations and BatchNorm Pass; "
                           f"pools Norm)")
    while len(cache) >= CACHED:  # the oldest copy goes first
        cache.pop(next(iter(cache)))
    cache[key] = (fp, net)
    return net
