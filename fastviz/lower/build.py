"""`lower_module`: the lowered deep copy of a network, the rewrites applied in order (BN fold,
conv rewrites, fused activations), the fusion dropped whole when the end-to-end backward fails,
and the copy refused (`LoweringMismatch`) when its output is not the network's."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .activations import backward_fails, fuse_activations
from .fold import after_fold, fold_batchnorm, unfoldable
from .pairs import pairs_fx, pairs_recorded
from .report import LowerReport
from .rewrites import replace_module, rewrite_convs
from .trace import tensors

# The lowered copy's output against the network's, relative L2 over all outputs. What lowering
# may change is fp32 rounding: folded weights rounded once, sums reordered by other kernels
# (the lowered logits within 3e-7 to 9e-7 of float64 on twelve timm families,
# tests/test_lower_zoo.py); a rewrite that changed the function (an activation lost with its
# BN, a wrong pad) is off by O(1).
OUTPUT_TOL = 1e-3


class LoweringMismatch(RuntimeError):
    """The lowered copy does not compute what the network computes (the message says by how much)."""


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

    Raises:
        LoweringMismatch: the copy's output on `x` is more than `OUTPUT_TOL` (relative L2) from
            the network's own (in eval mode): a rewrite changed the function, so no copy is made.
    """
    keep = set(keep)
    cpu_nhwc = channels_last and x.device.type == "cpu"
    new, report = _rewritten_copy(net, x, keep, matmul=cpu_nhwc)
    want = _outputs(_frozen_copy(net), x)  # the reference, freed before the copy is finished
    if cpu_nhwc and activations:
        fuse_activations(new, report, keep)
        why = backward_fails(new, x) if report.activation_fused else ""
        if why:
            # e.g. an in-place change of a fused output that fx did not see: start again from
            # the user's network (the failed copy's modules are already rewritten) without fusion.
            new, report = _rewritten_copy(net, x, keep, matmul=cpu_nhwc)
            report.skipped.append(("activations", f"not fused: with them the backward failed ({why})"))
    if channels_last and not (report.folded or report.matmul or report.activation_fused
                              or report.padding_folded):
        # A copy with nothing folded or rewritten (LayerNorm families: ConvNeXt, ViT, Swin) gains
        # nothing from the layout alone, and it cost convnext_tiny 3-5% (forward + backward,
        # batch 8, 1 CPU thread, two interleaved runs): keep the network's own layout.
        report.skipped.append(("channels_last", "not applied: nothing was folded or rewritten"))
    elif channels_last:
        new.to(memory_format=torch.channels_last)
        report.channels_last = True
    report.copy_bytes = sum(t.numel() * t.element_size() for t in [*new.parameters(), *new.buffers()])
    nhwc = report.channels_last and x.dim() == 4
    got = _outputs(new, x.contiguous(memory_format=torch.channels_last) if nhwc else x)
    err = _relative_error(got, want)
    if not err <= OUTPUT_TOL:
        raise LoweringMismatch(f"the lowered copy's output is {err:.2g} (relative L2) from the network's "
                               f"(tolerance {OUTPUT_TOL:g}); folded {len(report.folded)} BN, "
                               f"fused {len(report.activation_fused)} activations")
    return new, report


@torch.no_grad()
def _outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().double() for t in tensors(net(x))]


def _relative_error(got: list, want: list) -> float:
    """Relative L2 over the finite values; non-finite values must sit at the same places (a
    network that already gives inf or NaN on the example gives them in the copy too)."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return float("inf")
    num = den = 0.0
    for g, w in zip(got, want):
        finite = torch.isfinite(w)
        if not torch.equal(finite, torch.isfinite(g)):
            return float("inf")
        num += float((g[finite] - w[finite]).pow(2).sum())
        den += float(w[finite].pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))


def _frozen_copy(net: nn.Module) -> nn.Module:
    """A deep copy of `net` in eval mode with its parameters frozen (the user's is only read)."""
    new = copy.deepcopy(net)
    new.eval()
    for p in new.parameters():
        p.requires_grad_(False)
        p.grad = None
    return new


def _rewritten_copy(net: nn.Module, x: torch.Tensor, keep: set, matmul: bool) -> tuple[nn.Module, LowerReport]:
    """A frozen eval copy of `net` with its foldable BNs folded and its convs rewritten."""
    new = _frozen_copy(net)
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
        replace_module(new, modules[c.bn], after_fold(modules[c.bn]))
        report.folded.append((c.conv, c.bn))
    rewrite_convs(new, report, matmul=matmul)
    return new, report
