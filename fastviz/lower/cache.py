"""The lowered copy cached on the user's `Model` per (device, dtype, layout, fusion), made again
when the weights change (the fingerprint), and `release` to drop it."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..models import Model
from .build import LoweringMismatch, lower_module
from .report import LowerReport, LoweredModel


def fingerprint(net: nn.Module) -> tuple:
    """Identity, shape, dtype, version and sum of every parameter and buffer (one pass, one sync)."""
    tensors = [*net.parameters(), *net.buffers()]
    meta = tuple((id(t), tuple(t.shape), t.dtype, t.device, t._version) for t in tensors)
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float64) for t in floats]).cpu() if floats else None
    return meta, sums


def _same(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    return (a[1] is None and b[1] is None) or (a[1] is not None and b[1] is not None
                                                and torch.equal(a[1], b[1]))


def lowered(model: Model, x: torch.Tensor, *, keep=(), channels_last: bool = True,
            activations: bool = True) -> LoweredModel:
    """The lowered copy of `model` for inputs like `x`, from the cache when the weights are unchanged.

    Args:
        model: the user's `Model` (read only; the cache lives in `model._lowered`).
        x: (B, C, H, W) an input in [0, 1] on the device the copy is for.
        keep: layer names the caller reads whose own output must not change (see module doc).
        channels_last: put weights and input in channels_last (4-D inputs).
        activations: let convs apply the activation after them (see `lower_module`).

    Returns:
        LoweredModel on x's device. If the copy cannot be made (a module that cannot be deep-copied),
        a RuntimeWarning says why and the LoweredModel wraps the user's own network unchanged
        (`report.method` starts with "not lowered"; the caller's session restores it as usual).
    """
    if isinstance(model, LoweredModel):
        return model
    cache = model.__dict__.setdefault("_lowered", {})
    key = (x.device, x.dtype, channels_last, activations)
    fp = fingerprint(model.module)
    hit = cache.get(key)
    convs = frozenset(keep)
    if hit is not None and _same(hit[0], fp):
        lm = hit[1]
        if not lm.report.shows_other_values(convs):
            return lm
    try:
        new, report = lower_module(model.module, model.fit(model.normalize(x[:1])), keep=convs,
                                   channels_last=channels_last, activations=activations)
    except Exception as e:  # e.g. a module that cannot be deep-copied: run the network as it is, and say so
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        warnings.warn(f"fastviz: could not lower {model.name} ({why}); running it as it is",
                      RuntimeWarning, stacklevel=3)
        report = LowerReport(method=f"not lowered ({why})")
        lm = LoweredModel(model, model.module, report)
        if isinstance(e, LoweringMismatch):  # the same weights fail the same way: remember it
            cache[key] = (fp, lm)
        return lm  # other failures are not cached: tried again next call
    new.to(x.device)
    lm = LoweredModel(model, new, report)
    cache[key] = (fp, lm)
    return lm


def release(model: Model) -> None:
    """Drop the lowered copies cached on `model` (their memory goes back)."""
    model.__dict__.pop("_lowered", None)
