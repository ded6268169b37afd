"""Guided backpropagation (Springenberg et al. 2015) through a guided-ReLU autograd function.

Guided backprop lets a gradient through an activation only where the activation's own
derivative is 1 (ReLU: x > 0; ReLU6: 0 < x < 6) *and* the incoming gradient is positive.
The first factor is the activation's ordinary backward; `GuidedReLU` supplies the second: it
is the identity forward and clamps the incoming gradient at 0 backward. `guided(session)`
applies it to the output of every `nn.ReLU` and `nn.ReLU6` module with forward hooks, so the
module's own backward multiplies by its mask right after: grad * (0 < x < upper) * (grad > 0),
in one extra elementwise pass (measured: guided backprop at the floor of a plain gradient,
where a function recomputing the activation and its mask cost 1.35x). Inplace modules and one
module object called several times in a forward (EfficientNet-Lite0's `_swish`, torchvision
ResNet's `relu`) are covered, because the hook acts on each call's output.

Deconvnet (Zeiler & Fergus 2014) is the other rule on the same modules: the backward of each
ReLU / ReLU6 passes relu(incoming gradient) whatever the forward input was. `deconvnet(session)`
hooks `DeconvReLU`, which takes the module's input and output and sends the clamped gradient
straight to the input, so the module's own backward (and its mask) never runs. It needs
`session(..., no_inplace=True)`: an inplace activation overwrites the input it would route to.

Every element-wise activation module takes part (`GUIDED_MODULES`, and timm's own activation
modules, `TIMM_ACTIVATIONS`): on GELU, SiLU, Hardswish, ELU, ... guided backprop passes only
positive incoming gradients at each of them, and deconvnet sends relu(incoming gradient) to each
one's input; a network with none of them is warned about.

Not covered: activations applied functionally inside a `forward` (`F.relu`, `torch.relu`,
`x.clamp(min=0)`), which no module hook can see. torchvision's DenseNet applies `F.relu` after
its last block: guided maps there are guided everywhere but at that one activation.
"""

from __future__ import annotations

import torch
from torch import nn

from .hooks import Session

# ReLU and ReLU6 give guided backprop as Springenberg et al. define it. On the smooth and
# piecewise activations of newer networks the same rule applies: only positive incoming gradients
# pass each activation, whose own backward then multiplies by its derivative (SiLU's and GELU's
# dip below zero, so there the map is "positive gradients at every non-linearity", not a mask).
GUIDED_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
                  nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus)
# timm's own activation modules are not subclasses of torch's (ConvNeXt's GELU is
# timm.layers.activations.GELU; the *Me ones are memory-efficient autograd Functions): without
# them a ConvNeXt's guided map would be its plain gradient. Matched by module and class name, so
# timm, an optional extra, is never imported here. Gates (Sigmoid, HardSigmoid) and Tanh are not
# rectifiers and stay out, as torch's do.
TIMM_ACTIVATIONS = frozenset({"GELU", "GELUTanh", "QuickGELU", "Swish", "SwishMe", "Mish", "MishMe",
                              "HardSwish", "HardSwishMe", "HardMish", "HardMishMe", "PReLU"})


def is_activation(module: nn.Module) -> bool:
    """Whether guided backprop and deconvnet route their gradient through `module`."""
    kind = type(module)
    return isinstance(module, GUIDED_MODULES) or (
        kind.__module__.startswith("timm.layers.activations") and kind.__name__ in TIMM_ACTIVATIONS)


class GuidedReLU(torch.autograd.Function):
    """Identity forward; backward keeps only the positive part of the incoming gradient.

    Applied to the output of a ReLU / ReLU6 module, whose own backward then zeroes the gradient
    where the activation is flat: together, guided backprop's rule.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _guide(module: nn.Module, inputs, output):
    if not output.requires_grad:
        return output
    return GuidedReLU.apply(output)


def guided(session: Session) -> int:
    """Route every activation module (`GUIDED_MODULES`) through `GuidedReLU` until the session ends.

    Returns the number of modules guided (0 means guided backprop equals the plain gradient:
    callers warn about that).
    """
    return _hook_activations(session, _guide)


def _hook_activations(session: Session, hook) -> int:
    """Add `hook` as a forward hook of every activation module for the session; how many."""
    modules = [m for m in session.model.module.modules() if is_activation(m)]
    for module in modules:
        session.add_forward_hook(module, hook)
    return len(modules)


class DeconvReLU(torch.autograd.Function):
    """Forward: the activation's output as it is. Backward: relu(grad) to the activation's *input*.

    The output argument gets no gradient, so the activation's own backward (its x > 0 mask) is
    skipped: the deconvnet rule, independent of the forward input.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.clamp(min=0), None


def _deconv(module: nn.Module, inputs, output):
    x = inputs[0]
    if not x.requires_grad:
        return output
    if x is output:
        raise RuntimeError("deconvnet: an inplace activation reached the hook; open the session "
                           "with no_inplace=True")
    return DeconvReLU.apply(x, output)


def deconvnet(session: Session) -> int:
    """Route every activation module's backward through `DeconvReLU` until the session ends.

    The session must have been opened with ``no_inplace=True``. Returns the number of modules.
    """
    return _hook_activations(session, _deconv)
