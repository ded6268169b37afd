"""`lower_module`: the lowered deep copy of a network, the rewrites applied in order (BN fold,
conv rewrites, fused activations), and the fusion dropped whole when the end-to-end check fails."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .activations import backward_fails, fuse_activations
from .fold import fold_batchnorm, unfoldable
from .pairs import pairs_fx, pairs_recorded
from .report import LowerReport
from .rewrites import replace_module, rewrite_convs


def lower_module(net: nn.Module, x: torch.Tensor, *, keep=(), channels_last: bool = True,
                 activations: bool = True) -> tuple[nn.Module, LowerReport]:
    """A lowered deep copy of `net` (which is only read): eval, frozen, BN folded, channels_last.

    Args:
        net: the network.
        x: (B, C, H, W) an input the network takes: recorded where fx cannot trace the network,
            and run forward + backward once to check the fused activations (`backward_fails`).
        keep: module names whose own output must stay as it is (a conv named here is not folded).
        channels_last: put 4-D weights in channels_last.
        activations: on the CPU in channels_last, let convs apply the ReLU / ReLU6 after them
            (`fuse_activations`). Off for backward rules that replace the activation's own
            backward (deconvnet).

    Returns:
        (the copy, LowerReport).
    """
    keep = set(keep)
    cpu_nhwc = channels_last and x.device.type == "cpu"
    new, report = _rewritten_copy(net, x, keep, matmul=cpu_nhwc)
    if cpu_nhwc and activations:
        fuse_activations(new, report, keep)
        why = backward_fails(new, x) if report.activation_fused else ""
        if why:
            # e.g. an in-place change of a fused output that fx did not see: start again from
            # the user's network (the failed copy's modules are already rewritten) without fusion.
            new, report = _rewritten_copy(net, x, keep, matmul=cpu_nhwc)
            report.skipped.append(("activations", f"not fused: with them the backward failed ({why})"))
    if channels_last:
        new.to(memory_format=torch.channels_last)
        report.channels_last = True
    report.copy_bytes = sum(t.numel() * t.element_size() for t in [*new.parameters(), *new.buffers()])
    return new, report


def _rewritten_copy(net: nn.Module, x: torch.Tensor, keep: set, matmul: bool) -> tuple[nn.Module, LowerReport]:
    """A frozen eval copy of `net` with its foldable BNs folded and its convs rewritten."""
    new = copy.deepcopy(net)
    new.eval()
    for p in new.parameters():
        p.requires_grad_(False)
        p.grad = None
    report = LowerReport()
    try:
        cands = pairs_fx(new)
        report.method = "fx"
    except Exception as e:  # fx cannot trace it (data-dependent control flow, ...): record a forward
        why = str(e).splitlines()[0][:120] if str(e) else ""
        report.method = f"recorded forward (fx: {type(e).__name__}: {why})"
        cands = pairs_recorded(new, x)
    modules = dict(new.named_modules())
    for c in cands:
        reason = c.reason
        if not reason and c.conv in keep:
            reason = f"the conv {c.conv!r} is a layer the objective reads"
        if not reason:
            reason = unfoldable(modules[c.conv], modules[c.bn])
        if reason:
            report.skipped.append((c.bn, reason))
            continue
        fold_batchnorm(modules[c.conv], modules[c.bn])
        replace_module(new, modules[c.bn], nn.Identity())
        report.folded.append((c.conv, c.bn))
    rewrite_convs(new, report, matmul=matmul)
    return new, report
