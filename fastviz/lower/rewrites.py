"""Conv rewrites that keep each module's name: a zero-padding module folded into the conv's own
padding (TensorFlow "SAME" ports), and 1x1 stride-1 convs as one NHWC matmul on the CPU
(`Pointwise`). Each rewrite is checked on a random input; any doubt keeps the original."""

from __future__ import annotations

import torch
from torch import nn

from .fused import PadConv2d, Pointwise
from .report import LowerReport


def _identity_like(m) -> bool:
    """nn.Identity, or a package's own `Identity` module (EfficientNet's static padding of 0)."""
    return m is None or isinstance(m, nn.Identity) or (type(m).__name__ == "Identity" and not list(m.parameters()))


def plain_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """A plain nn.Conv2d computing what `conv` computes, sharing its weights; None if unsure.

    `conv` is a plain Conv2d already, or a subclass that pads with a `static_padding` module
    first (TensorFlow "SAME" padding in EfficientNet ports). The pad becomes the conv's own
    padding, which saves a zero-filled, padded copy of the activation forward and a slice of the
    gradient backward:
    - a symmetric pad (p, p) is the conv's padding p;
    - a one-sided "SAME" pad (p, p + 1), as at stride 2, of a depthwise conv is padding p + 1
      with one zero row and column prepended to the kernel: the extra tap meets only the extra
      padding, and the larger kernel costs less than the padded copy (Lite0, batch 8, forward +
      backward: 0.6x the time at 96 x 112 x 112, 0.8x at 672 x 14 x 14);
    - any other one-sided pad stays an explicit pad in a `PadConv2d` (a dense conv's grown kernel
      costs more than the copy: Lite0's stem, 3 -> 32 channels, 1.5x the time of pad + 3x3).
    The result is checked on a random input; any doubt keeps the original.
    """
    if type(conv) is nn.Conv2d:
        return conv
    pad = getattr(conv, "static_padding", None)
    if conv.padding_mode != "zeros" or any(conv.padding) or "forward" not in type(conv).__dict__:
        return None
    weight = conv.weight
    if _identity_like(pad):
        p = (0, 0)
    elif not isinstance(pad, nn.ZeroPad2d):
        return None
    elif pad.padding[0] == pad.padding[1] and pad.padding[2] == pad.padding[3]:
        p = (pad.padding[2], pad.padding[0])
    elif pad.padding[1] == pad.padding[0] + 1 and pad.padding[3] == pad.padding[2] + 1 \
            and conv.dilation == (1, 1) and conv.groups == conv.in_channels:
        p = (pad.padding[3], pad.padding[1])
        weight = nn.Parameter(nn.functional.pad(conv.weight.detach(), (1, 0, 1, 0)), requires_grad=False)
    else:
        p = (0, 0)
    cls = nn.Conv2d if _identity_like(pad) or p != (0, 0) else PadConv2d
    new = cls(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride, p, conv.dilation,
              conv.groups, conv.bias is not None)
    new.weight, new.bias = weight, conv.bias
    if cls is PadConv2d:
        new.pre_pad = tuple(pad.padding)
    kh, kw = conv.kernel_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, conv.in_channels, 2 * kh + 4, 2 * kw + 4, generator=g).to(conv.weight)
    with torch.no_grad():
        want, got = conv(x), new(x)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
        return None
    return new


def rewrite_convs(net: nn.Module, report: LowerReport, matmul: bool) -> None:
    """Padding folded into convs (every device) and 1x1 convs as matmuls (`matmul`: CPU, NHWC)."""
    for name, conv in list(net.named_modules()):
        if not isinstance(conv, nn.Conv2d) or conv._forward_hooks or conv._forward_pre_hooks \
                or torch.nn.utils.parametrize.is_parametrized(conv):
            continue
        plain = plain_conv(conv)
        if plain is None:
            continue
        if matmul and plain.kernel_size == (1, 1) and plain.stride == (1, 1) and plain.padding == (0, 0) \
                and plain.dilation == (1, 1) and plain.groups == 1:
            replace_module(net, conv, Pointwise(plain))
            report.matmul.append(name)
        elif plain is not conv and (plain.padding != (0, 0) or type(plain) is PadConv2d):
            replace_module(net, conv, plain)
            if type(plain) is not PadConv2d:
                report.padding_folded.append(name)


def replace_module(net: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put `new` in every place `target` is registered (a module may be registered under two
    names). The places are found first, so `new` may hold `target` inside it."""
    places = [(parent, k) for _, parent in net.named_modules(remove_duplicate=False)
              for k, child in parent._modules.items() if child is target]
    for parent, k in places:
        parent._modules[k] = new
