"""The nodes of the relevance network: small modules whose forward is the operation as it is
and whose backward is the operation's LRP rule, each through an autograd Function.

- `RuleOp`: a layer or a function with its rule (convs and dense layers, pools, activations);
  a rule that needs only the layer's own vector-Jacobian product keeps the forward's graph
  (`Recorded`) instead of running the layer again.
- `SumOp`: a + b, each branch keeping its share of the sum (Norm).
- `GateOp`: x * gate, the gate taking no relevance.
"""

from __future__ import annotations

import torch
from torch import nn

from .rules import LinearMap, Norm, Pass, Rule, stabilize

class _RuleFunction(torch.autograd.Function):
    """Forward: the op as it is. Backward: the op's rule applied to the incoming relevance.

    A rule that needs only the op's own vector-Jacobian product (Epsilon, Norm) keeps the
    forward's graph for it instead of running the op again in the backward."""

    @staticmethod
    def forward(ctx, x, op, args, kwargs):
        args = list(args)
        ctx.graph = None
        if op.rule.reuses(op.nonneg):
            with torch.enable_grad():
                xi = x.detach().requires_grad_(True)
                args[op.pos] = xi
                zg = op.fn(*args, **kwargs)
            ctx.graph = (xi, zg)
            z = zg.detach()
        else:
            args[op.pos] = x
            z = op.fn(*args, **kwargs)
            if z is x:
                z = z.clone()
        ctx.op, ctx.args, ctx.kwargs = op, args, kwargs
        if op.keeps:
            ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def backward(ctx, r):
        op = ctx.op
        x, z = ctx.saved_tensors if op.keeps else (None, None)
        layer = op.layer if op.layer is not None else op.linear_map(ctx.args, ctx.kwargs)
        if ctx.graph is not None:
            layer = Recorded(layer, *ctx.graph)
        out = op.rule.relevance(layer, x, z, r, op.nonneg)
        ctx.graph = None
        return out, None, None, None


class Recorded:
    """A layer whose vector-Jacobian product with its own weights comes from the recorded
    forward graph (one backward through it, no second forward)."""

    def __init__(self, layer, xi: torch.Tensor, z: torch.Tensor):
        self.layer, self.xi, self.z = layer, xi, z
        self.weight, self.bias = layer.weight, layer.bias

    def __getattr__(self, name):  # f, param, bias_like, ...: the layer's
        return getattr(self.layer, name)

    def vjp(self, x, weight, s):
        if weight is not self.layer.weight:
            return self.layer.vjp(x, weight, s)
        (g,) = torch.autograd.grad(self.z, self.xi, s)
        return g


class RuleOp(nn.Module):
    """One node of the relevance network: `fn(*args)` forward, `rule` backward to args[pos]."""

    def __init__(self, fn, rule: Rule, layer=None, nonneg: bool = False, name: str = "", pos: int = 0):
        super().__init__()
        self.fn, self.rule, self.layer, self.nonneg, self.name, self.pos = fn, rule, layer, nonneg, name, pos
        self.keeps = not isinstance(rule, Pass)
        if isinstance(fn, nn.Module):
            self.inner = fn  # registered, so that .to() and state_dict see the layer

    def linear_map(self, args, kwargs) -> LinearMap:
        """The op as a linear map of its tensor argument, the other arguments fixed (pools)."""
        def f(t):
            a = list(args)
            a[self.pos] = t
            return self.fn(*a, **kwargs)
        return LinearMap(f)

    def forward(self, *args, **kwargs):
        x = args[self.pos]
        if not x.requires_grad:
            return self.fn(*args, **kwargs)
        return _RuleFunction.apply(x, self, args, kwargs)

    def extra_repr(self) -> str:
        return f"{self.name}: {self.rule}"


class _SumFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, eps):
        z = a + b
        ctx.save_for_backward(a, b, z)
        ctx.eps = eps
        return z

    @staticmethod
    def backward(ctx, r):
        a, b, z = ctx.saved_tensors
        s = r / stabilize(z, ctx.eps)
        ra, rb = a * s, b * s
        return ra.sum_to_size(a.shape), rb.sum_to_size(b.shape), None


class SumOp(nn.Module):
    """a + b, relevance split in proportion to each branch's share (Norm)."""

    def __init__(self, rule: Norm, name: str = ""):
        super().__init__()
        self.rule, self.name = rule, name

    def forward(self, a, b):
        return _SumFunction.apply(a, b, self.rule.stabilizer)

    def extra_repr(self) -> str:
        return f"{self.name}: {self.rule} (sum of branches)"


class _GateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate):
        ctx.gate_shape = gate.shape
        ctx.gate_meta = (gate.dtype, gate.device)
        return x * gate

    @staticmethod
    def backward(ctx, r):
        dtype, device = ctx.gate_meta
        return r, torch.zeros(ctx.gate_shape, dtype=dtype, device=device)


class GateOp(nn.Module):
    """x * gate: the gated branch keeps all the relevance, the gate none (Arras et al. 2017)."""

    def __init__(self, gate_first: bool, name: str = ""):
        super().__init__()
        self.gate_first, self.name = gate_first, name

    def forward(self, a, b):
        x, gate = (b, a) if self.gate_first else (a, b)
        out = _GateFunction.apply(x, gate)
        return out

    def extra_repr(self) -> str:
        return f"{self.name}: gate"


