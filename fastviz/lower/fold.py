"""BatchNorm folded into the convolution before it, exactly (zennit's MergeBatchNorm canonizer):
W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), in float64."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


def unfoldable(conv: nn.Module, bn: nn.Module) -> str:
    """Why `bn` cannot be folded into `conv`, or "" when it can."""
    if getattr(conv, "transposed", False):
        return "the conv is transposed"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "the BN keeps no running statistics (batch statistics in eval mode)"
    if bn.num_features != conv.out_channels:
        return f"the BN has {bn.num_features} features for {conv.out_channels} conv channels"
    for m in (conv, bn):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return "a hook is registered on it"
        if torch.nn.utils.parametrize.is_parametrized(m):
            return "it is parametrized"
    if not isinstance(conv.weight, torch.Tensor) or conv.weight.dim() < 3:
        return "the conv has no plain weight tensor"
    return ""


@torch.no_grad()
def fold_batchnorm(conv: _ConvNd, bn: _BatchNorm) -> None:
    """Make `conv` compute bn(conv(x)) (eval mode), in place; `bn` is left as it was.

    W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), computed in float64
    and stored in the conv's dtype. Call `unfoldable(conv, bn)` first: it says why a pair
    cannot be folded (a transposed conv, a BN without running statistics, hooks, ...).
    """
    w = conv.weight
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    w.copy_((w.double() * s.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    bias = ((b - mean) * s + beta).to(w.dtype)
    if conv.bias is not None:
        conv.bias.copy_(bias)
    else:
        conv.bias = nn.Parameter(bias, requires_grad=False)
