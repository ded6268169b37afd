"""The canonical copy LRP runs on: a frozen eval deep copy of the user's network with `inplace`
off, every conv -> BatchNorm pair the traced forward connects folded exactly (zennit's
MergeBatchNorm, but the pairs from the forward, not from the registration order), padding
modules folded into the convs and 1x1 convs as NHWC matmuls, channels_last.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..lower.fold import after_fold, fold_batchnorm, unfoldable
from ..lower.pairs import pairs_fx
from ..lower.rewrites import plain_conv, replace_module


class PointwiseConv(nn.Module):
    """A 1x1, stride-1, ungrouped conv as one matmul over the channels_last (NHWC) view: the
    lowering's measured rewrite (`fastviz.lower.fused.Pointwise`: PyTorch sends such convs at
    small batches to an im2col path that copies and zero-fills), without its fused backward,
    since the rules call this forward with other weights."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


def _pointwise(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def _rewrite_convs(net: nn.Module) -> None:
    """Each conv's zero-padding module folded into its own padding, and 1x1 convs as matmuls
    (`fastviz.lower.rewrites.plain_conv`, checked there). Exact for every rule: a kernel grown
    by a zero tap meets only padding, which holds no input and gets no relevance."""
    for _, conv in list(net.named_modules()):
        if not isinstance(conv, nn.Conv2d):
            continue
        plain = plain_conv(conv)
        if plain is None:
            continue
        new = PointwiseConv(plain) if _pointwise(plain) else plain
        if new is not conv:
            replace_module(net, conv, new)


def canonical_copy(net: nn.Module) -> tuple[nn.Module, list[tuple[str, str]]]:
    """A frozen eval deep copy with `inplace` off, every foldable conv -> BN pair folded and the
    convs rewritten for speed (`_rewrite_convs`)."""
    new = copy.deepcopy(net)
    new.eval()
    for p in new.parameters():
        p.requires_grad_(False)
    for m in new.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    modules = dict(new.named_modules())
    folded = []
    for c in pairs_fx(new):
        if c.conv is None or c.reason or unfoldable(modules[c.conv], modules[c.bn]):
            continue
        fold_batchnorm(modules[c.conv], modules[c.bn])
        replace_module(new, modules[c.bn], after_fold(modules[c.bn]))
        folded.append((c.conv, c.bn))
    _rewrite_convs(new)
    new.to(memory_format=torch.channels_last)  # 4-D weights; the input goes channels_last too
    return new, folded


