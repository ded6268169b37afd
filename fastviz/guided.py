"""Guided backpropagation (Springenberg et al. 2015) through a guided-ReLU autograd function.

`GuidedReLU` computes the activation forward and, backward, lets a gradient through only where
the activation's own derivative is 1 (ReLU: x > 0; ReLU6: 0 < x < 6) *and* the incoming gradient
is positive. `guided(session)` routes every `nn.ReLU` and `nn.ReLU6` module of the network
through it with forward hooks: inplace modules and one module object called several times in a
forward (EfficientNet-Lite0's `_swish`, torchvision ResNet's `relu`) are covered, because the
hook acts on each call's output.

Not covered: activations applied functionally inside a `forward` (`F.relu`, `torch.relu`,
`x.clamp(min=0)`), which no module hook can see. torchvision's DenseNet applies `F.relu` after
its last block: guided maps there are guided everywhere but at that one activation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .hooks import Session

GUIDED_MODULES = (nn.ReLU, nn.ReLU6)


class GuidedReLU(torch.autograd.Function):
    """clamp(x, 0, upper) forward; backward grad * (0 < x < upper) * (grad > 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0.0, upper) if math.isfinite(upper) else x.clamp(min=0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x > 0) & (grad > 0)
        if math.isfinite(ctx.upper):
            passes &= x < ctx.upper
        return grad * passes, None


def _upper(module: nn.Module) -> float:
    return float(module.max_val) if isinstance(module, nn.ReLU6) else math.inf


def _guide(module: nn.Module, inputs, output):
    # For an inplace module `inputs[0]` is already the clamped output; clamping it again is the
    # identity and (0 < y < upper) <=> (0 < x < upper), so the guided mask is the same.
    x = inputs[0]
    if not x.requires_grad:
        return output
    return GuidedReLU.apply(x, _upper(module))


def guided(session: Session) -> int:
    """Route every ReLU / ReLU6 module through `GuidedReLU` until the session ends.

    Returns the number of modules guided (0 means guided backprop equals the plain gradient:
    callers warn about that).
    """
    n = 0
    for module in session.model.module.modules():
        if isinstance(module, GUIDED_MODULES):
            session.add_forward_hook(module, _guide)
            n += 1
    return n
