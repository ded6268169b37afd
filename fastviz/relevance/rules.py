"""LRP rules: how relevance crosses one layer (Montavon et al. 2019, "Layer-Wise Relevance
Propagation: An Overview"; the conventions of zennit, the overview authors' implementation).

A rule is a small frozen object. `relevance(layer, x, z, r)` takes the layer, its input `x`,
its output `z` (as the forward computed it) and the relevance `r` arriving at the output, and
returns the relevance at the input. With s = r / stab(denominator):

| rule | relevance at the input | for |
|---|---|---|
| `Epsilon(eps)` | x * W^T s,  s = r / stab_eps(z) (eps = 0: LRP-0) | dense layers |
| `ZPlus()` | x+ W+^T s + x- W-^T s,  s = r / stab(W+ x+ + b+ + W- x-) | convolutions |
| `AlphaBeta(a, b)` | a * (positive part as ZPlus) - b * (negative part, mirrored) | convolutions |
| `Gamma(g)` | the positive and negative outputs each spread by W + g W+- (generalised) | convolutions |
| `ZBox(low, high)` | x W^T s - low W+^T s - high W-^T s,  s = r / stab(z - W+ low - W- high) | first layer, bounded input |
| `Flat()` | 1^T s over the receptive field,  s = r / stab(1 * 1) | first layer |
| `WSquare()` | (W^2)^T s,  s = r / stab(W^2 1 + b^2) | first layer, unbounded input |
| `Norm()` | x * f^T s, s = r / stab(f(x)) for a linear f without parameters | sums, average pools |
| `Pass()` | r unchanged | element-wise layers (activations, BN left unfolded) |

stab(v) = v + stabilizer * sign(v), with sign(0) = +1 (zennit's `Stabilizer`); a rule's
stabilizer defaults to 1e-6, Epsilon's epsilon too. Where a rule clamps weights the bias is
clamped with them on the term that sees the positive input (x+ or the bound) and left out of
the term that sees the negative input, exactly as zennit's `ClampMod` / `GammaMod` do, so that
relevance equals zennit's to float rounding.

`nonneg` (from the graph: the input is the output of a ReLU, a pool of one, ...) lets a rule
skip the terms of the negative input part, which are exactly zero then.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from .. import checks
from ..errors import FastvizError

AFFINE = "affine"      # convolutions and dense layers: weights and maybe a bias
LINEAR = "linear map"  # parameter-free linear maps: sums, average pools
ELEMENTWISE = "element-wise"


def stabilize(v: torch.Tensor, eps: float) -> torch.Tensor:
    """v + eps * sign(v), sign(0) = +1: a denominator that is never 0 and keeps v's sign.

    (copysign gives -eps at -0.0 where zennit's sign gives +eps; a -0.0 output has only zero
    contributions below it, which get 0 relevance either way.)"""
    return v + torch.copysign(torch.full((), eps, dtype=v.dtype, device=v.device), v)  # no host copy


class Affine:
    """A conv or dense module seen by a rule: its weight and bias, its forward with other
    parameters (`f(x, weight, bias)`, the module's own forward, padding modules included) and
    the vector-Jacobian product of that forward with respect to x."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.weight = module.weight
        self.bias = getattr(module, "bias", None)
        self._made: dict = {}

    def param(self, key: str, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """A modified weight or bias (W+, W + gamma W-, ...), made once: the relevance network
        is rebuilt when the weights change, so the cache can never be stale."""
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def f(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        params = {"weight": weight}
        if self.bias is not None:
            if bias is None and weight.shape[0] != self.weight.shape[0]:
                bias = weight.new_zeros(weight.shape[0])  # a weight with other output channels
            params["bias"] = bias if bias is not None else torch.zeros_like(self.bias)
        return torch.func.functional_call(self.module, params, (x,))

    def bias_like(self, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The bias b shaped to broadcast over the layer's output z (channels on dim 1)."""
        return b.view(1, -1, *([1] * (z.dim() - 2))) if z.dim() > 2 else b

    def without_bias(self, z: torch.Tensor) -> torch.Tensor:
        """W x from the output z = W x + b."""
        return z if self.bias is None else z - self.bias_like(self.bias, z)

    def outputs_and_vjp(self, pairs, stab: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor):
        """One modified forward per (input, weight, bias) term, summed into z'; s = r / stab(z');
        returns ([input * d<z', s>/d input for each term], z') in one backward."""
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x, _, _ in pairs]
            z = _total(self.f(x, w, b) for x, (_, w, b) in zip(leaves, pairs))
            s = r / stab(z.detach())
            grads = torch.autograd.grad(z, leaves, s)
        return grads, leaves

    def vjp(self, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """d<f(x, weight, .), s>/dx: the transposed layer applied to s."""
        if type(self.module) is torch.nn.Linear:
            return s @ weight
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.f(xi, weight, None), xi, s)
        return g


class LinearMap:
    """A parameter-free linear map seen by `Norm` (a sum of branches, an average pool): its
    forward `fn` and the vector-Jacobian product by autograd."""

    weight = None
    bias = None

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def vjp(self, x: torch.Tensor, weight, s: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(xi), xi, s)
        return g


def _total(tensors):
    """sum() without its 0 + first (a whole extra pass over the first tensor)."""
    it = iter(tensors)
    out = next(it)
    for t in it:
        out = out + t
    return out


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


def _positive(t):
    return None if t is None else t.clamp(min=0)


def _negative(t):
    return None if t is None else t.clamp(max=0)


@dataclass(frozen=True)
class Rule:
    """Base of the LRP rules: which layer kinds it applies to, and `relevance`."""

    kinds = (AFFINE,)

    def __post_init__(self):
        """Every parameter a finite number >= 0 (z-box's bounds: any number, or one per channel)."""
        for f in fields(self):
            value, name = getattr(self, f.name), f"{type(self).__name__}.{f.name}"
            if f.name in ("low", "high"):
                value = (checks.floats(value, name) if isinstance(value, (list, tuple, torch.Tensor))
                         else checks.number(value, name))
            else:
                value = checks.number(value, name, 0)
            object.__setattr__(self, f.name, value)

    reuses_forward = False  # True: needs the layer's own vjp (kept from the forward's graph)

    def reuses(self, nonneg: bool) -> bool:
        """Whether the forward should keep its graph for this rule (see `reuses_forward`)."""
        return self.reuses_forward

    def relevance(self, layer, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor,
                  nonneg: bool = False) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): R_in = x * W^T (r / stab_eps(z)); epsilon=0 is LRP-0."""

    epsilon: float = 1e-6
    reuses_forward = True

    def relevance(self, layer, x, z, r, nonneg=False):
        return x * layer.vjp(x, layer.weight, r / stabilize(z, self.epsilon))


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z+ (alpha=1, beta=0): relevance follows the positive contributions x_i w_ij > 0."""

    stabilizer: float = 1e-6

    def reuses(self, nonneg: bool) -> bool:
        return not nonneg  # a signed input uses W^T s, which the forward's graph gives

    def relevance(self, layer, x, z, r, nonneg=False):
        # z+ >= 0 (a sum of non-negative terms), so stab(z+) = z+ + eps
        stab = lambda v: v.clamp(min=0) + self.stabilizer  # noqa: E731
        if nonneg:  # x = x+: one modified forward and its vjp; z+ = W+ x + b+ is >= 0 exactly
            wp, bp, _ = _plus_minus(layer)
            grads, leaves = layer.outputs_and_vjp([(x, wp, bp)], lambda v: v.add_(self.stabilizer), r)
            return x * grads[0]
        # W+ x+ + W- x- = (W x + |W| |x|) / 2 (check the four sign cases), with W x = z - b
        # from the forward: one modified forward instead of two. The vjp splits the same way:
        # x+ W+^T s + x- W-^T s = (x W^T s + |x| |W|^T s) / 2.
        absw = layer.param("|w|", lambda: layer.weight.abs())
        with torch.enable_grad():
            xa = x.abs().requires_grad_(True)
            za = layer.f(xa, absw, None)
            zp = (za.detach() + layer.without_bias(z)) * 0.5
            bp = _plus_minus(layer)[1]
            if bp is not None:
                zp = zp + layer.bias_like(bp, zp)
            s = r / stab(zp)
            (gabs,) = torch.autograd.grad(za, xa, s)
        return (x * layer.vjp(x, layer.weight, s) + xa.detach() * gabs) * 0.5


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: alpha times the positive contributions' share minus beta times the
    negative ones' (alpha - beta = 1; alpha=2, beta=1 is the common choice)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise FastvizError(f"AlphaBeta: expected alpha, beta >= 0 with alpha - beta = 1, "
                               f"got alpha={self.alpha}, beta={self.beta}")

    def relevance(self, layer, x, z, r, nonneg=False):
        wp, bp, wn = _plus_minus(layer)
        bn = layer.param("b-", lambda: _negative(layer.bias))
        stab = lambda v: stabilize(v, self.stabilizer)  # noqa: E731
        xp = x if nonneg else _pos(x)
        pos = [(xp, wp, bp)] + ([] if nonneg else [(_neg(x), wn, None)])
        neg = [(xp, wn, bn)] + ([] if nonneg else [(_neg(x), wp, None)])
        gp, lp = layer.outputs_and_vjp(pos, stab, r)
        gn, ln = layer.outputs_and_vjp(neg, stab, r)
        return (self.alpha * _total(xi * g for xi, g in zip(lp, gp))
                - self.beta * _total(xi * g for xi, g in zip(ln, gn)))


@dataclass(frozen=True)
class Gamma(Rule):
    """Generalised LRP-gamma (Montavon 2019; Andeol 2021): positive outputs spread by
    W + gamma W+ over x+ (and W + gamma W- over x-), negative outputs mirrored."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def relevance(self, layer, x, z, r, nonneg=False):
        w, b, g = layer.weight, layer.bias, self.gamma
        stab = lambda v: stabilize(v, self.stabilizer)  # noqa: E731
        up_w = layer.param(("up", g), lambda: w + g * _pos(w))
        down_w = layer.param(("down", g), lambda: w + g * _neg(w))
        up_b = layer.param(("up b", g), lambda: None if b is None else b + g * _pos(b))
        down_b = layer.param(("down b", g), lambda: None if b is None else b + g * _neg(b))
        xp = x if nonneg else _pos(x)
        # positive outputs: x+ through W + g W+ (bias too), x- through W + g W- (no bias)
        pos = [(xp, up_w, up_b)] + ([] if nonneg else [(_neg(x), down_w, None)])
        # negative outputs: x+ through W + g W- (bias too), x- through W + g W+ (no bias)
        neg = [(xp, down_w, down_b)] + ([] if nonneg else [(_neg(x), up_w, None)])
        gp, lp = layer.outputs_and_vjp(pos, stab, r * (z > 0))
        gn, ln = layer.outputs_and_vjp(neg, stab, r * (z < 0))
        return _total(xi * gi for xi, gi in zip(lp + ln, gp + gn))


@dataclass(frozen=True)
class ZBox(Rule):
    """LRP-z^B (Montavon 2017) for the first layer of a bounded input, low <= x <= high, given in
    the units of the image in [0, 1] (`lrp` maps them through the model's normalisation)."""

    low: float | tuple = 0.0
    high: float | tuple = 1.0
    stabilizer: float = 1e-6

    def relevance(self, layer, x, z, r, nonneg=False):
        wp, bp, wn = _plus_minus(layer)
        bn = layer.param("b-", lambda: _negative(layer.bias))
        low = _bound(self.low, x)
        high = _bound(self.high, x)
        # z = f(x; W, b) - f(low; W+, b+) - f(high; W-, b-), the three terms' vjps by one backward
        terms = [(x, layer.weight, layer.bias), (low, wp, bp), (high, wn, bn)]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t, _, _ in terms]
            outs = [layer.f(t, wi, bi) for t, (_, wi, bi) in zip(leaves, terms)]
            den = outs[0] - outs[1] - outs[2]
            s = r / stabilize(den.detach(), self.stabilizer)
            grads = torch.autograd.grad(outs, leaves, [s, s, s])
        return leaves[0] * grads[0] - leaves[1] * grads[1] - leaves[2] * grads[2]


def _plus_minus(layer) -> tuple:
    """(W+, b+, W-) of the layer, made once."""
    return (layer.param("w+", lambda: _pos(layer.weight)), layer.param("b+", lambda: _positive(layer.bias)),
            layer.param("w-", lambda: _neg(layer.weight)))


def _bound(value, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and x.dim() == 2:  # one value per channel of a flattened (B, C*H*W) image
        if x.shape[1] % t.numel():
            raise FastvizError(f"ZBox: {t.numel()} bounds (one per channel) for a dense first layer "
                               f"of {x.shape[1]} inputs")
        t = t.repeat_interleave(x.shape[1] // t.numel())
    elif t.dim() == 1:  # one value per channel
        t = t.view(1, -1, *([1] * (x.dim() - 2)))
    return t.expand_as(x)


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat (Lapuschkin 2019): relevance spread uniformly over the receptive field,
    whatever the input and the weights."""

    stabilizer: float = 1e-6

    def relevance(self, layer, x, z, r, nonneg=False):
        if getattr(layer.module, "groups", 1) == 1:
            # Every output channel has the same denominator (the count of its receptive field), so
            # the channels add first and one single-channel transposed pass spreads them: the same
            # sum in another order, at 1/C_out of the cost (resnet18's stem: 64 channels).
            one = layer.param("ones1", lambda: torch.ones_like(layer.weight[:1]))
            return _shared(layer, torch.ones_like(x), one, None, self.stabilizer, r.sum(1, keepdim=True))
        ones = layer.param("ones", lambda: torch.ones_like(layer.weight))
        return _shared(layer, torch.ones_like(x), ones, None, self.stabilizer, r)


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w^2 (Montavon 2017): relevance spread in proportion to the squared weights (first
    layer of an unbounded input)."""

    stabilizer: float = 1e-6

    def relevance(self, layer, x, z, r, nonneg=False):
        w2 = layer.param("w2", lambda: layer.weight ** 2)
        b2 = layer.param("b2", lambda: None if layer.bias is None else layer.bias ** 2)
        return _shared(layer, torch.ones_like(x), w2, b2, self.stabilizer, r)


def _shared(layer, ones, weight, bias, eps, r):
    """The vjp of f(ones; weight, bias) with s = r / stab(f(ones; weight, bias)): the input
    is not a factor (Flat, WSquare)."""
    with torch.enable_grad():
        xi = ones.requires_grad_(True)
        z = layer.f(xi, weight, bias)
        (g,) = torch.autograd.grad(z, xi, r / stabilize(z.detach(), eps))
    return g


@dataclass(frozen=True)
class Norm(Rule):
    """Relevance in proportion to each input's share of the output: R_in = x * f^T(r / stab(z)),
    f linear without parameters (a sum of branches, an average pool); also valid on an affine
    layer, where it is Epsilon with the stabilizer as epsilon."""

    stabilizer: float = 1e-6
    kinds = (LINEAR, AFFINE)
    reuses_forward = True

    def relevance(self, layer, x, z, r, nonneg=False):
        return x * layer.vjp(x, layer.weight, r / stabilize(z, self.stabilizer))


@dataclass(frozen=True)
class Pass(Rule):
    """The relevance at the output passes to the input unchanged (element-wise layers)."""

    kinds = (ELEMENTWISE,)

    def relevance(self, layer, x, z, r, nonneg=False):
        return r


RULES = (Epsilon, ZPlus, AlphaBeta, Gamma, ZBox, Flat, WSquare, Norm, Pass)
