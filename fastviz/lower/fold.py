"""BatchNorm folded into the convolution before it, exactly (zennit's MergeBatchNorm canonizer):
W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), in float64.

What takes the BN's place once folded (`after_fold`): `nn.Identity` for a plain BatchNorm; for
timm's norm + activation modules (`BatchNormAct2d`, `SyncBatchNormAct`: normalise, then their own
`drop` and `act`) a `NormTail` that still runs those two, under the same names. Any other
BatchNorm subclass with a forward of its own is not folded: what it does beside normalising is
not known.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


# timm's norm + activation BatchNorms: forward = batch_norm, then self.drop, then self.act.
_NORM_ACT = ("BatchNormAct2d", "SyncBatchNormAct")


class NormTail(nn.Module):
    """What is left of a norm + activation module (timm's `BatchNormAct2d`) once its
    normalisation is folded into the conv before it: its `drop`, then its `act`, the same
    module objects under the same names."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _plain(bn: nn.Module) -> bool:
    return type(bn).forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward)


def _norm_act(bn: nn.Module) -> bool:
    return (type(bn).__name__ in _NORM_ACT and type(bn).__module__.startswith("timm.")
            and list(bn._modules) == ["drop", "act"])


def after_fold(bn: nn.Module) -> nn.Module:
    """The module that takes folded `bn`'s place: nn.Identity, or a `NormTail` for timm's norm +
    activation modules (call `unfoldable` first: it refuses every other BatchNorm subclass)."""
    return NormTail(bn.drop, bn.act) if _norm_act(bn) else nn.Identity()


def unfoldable(conv: nn.Module, bn: nn.Module) -> str:
    """Why `bn` cannot be folded into `conv`, or "" when it can."""
    if not (_plain(bn) or _norm_act(bn)):
        return (f"the BN is a {type(bn).__name__}, a BatchNorm with a forward of its own: what it "
                f"does beside normalising is not known")
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
