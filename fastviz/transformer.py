"""Explanations read from a vision transformer's attention: attention rollout (Abnar & Zuidema
2020) and gradient-weighted relevance rollout (Chefer, Gur & Wolf 2021, "Generic
Attention-model Explainability").

Both need each block's attention probabilities (B, heads, N, N). timm's `Attention` computes
them only on its unfused path, so the restoring session switches `fused_attn` off for the call
(and back after it, also when the call raises) and a forward hook on each block's `attn_drop`
(the identity in eval mode) reads them. The maps are read off the first (class) token's row,
over the patch tokens after the model's prefix tokens (class, distillation, register tokens:
timm's `num_prefix_tokens`), laid out on the patch grid and resized to the image.

Global attention only (ViT, DeiT, BEiT-like blocks): windowed attention (Swin) relates tokens
within windows that move between blocks, and no rollout through it is defined here. Attention
over patches unfolded into the batch (MobileViT: probabilities (B * 4, heads, N, N), each row a
set of pixels one per patch, not the image's tokens) is refused where its probabilities are
captured. Networks whose attention takes its softmax inline (LeViT, EfficientFormer) give no
module to capture the probabilities at, and are refused with the name of what they have.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from . import budget
from .errors import FastvizError
from .explain import check_class_target, check_logits, prepare, target_scores
from .hooks import session
from .image import minmax

__all__ = ["attention_rollout", "transformer_attribution"]


def _attention_modules(m) -> list:
    """The attention modules whose probabilities fastviz captures, as (name, module) in
    `named_modules` order, or a refusal that says why the network has none."""
    mods = [(name, mod) for name, mod in m.module.named_modules()
            if isinstance(getattr(mod, "fused_attn", None), bool) and hasattr(mod, "attn_drop")
            and hasattr(mod, "num_heads")]
    windowed = [type(mod).__name__ for _, mod in mods if "Window" in type(mod).__name__]
    if windowed:
        raise FastvizError(f"model: {m.name} uses windowed attention ({windowed[0]}); attention rollout "
                           f"needs global attention over every token (ViT, DeiT)")
    if not mods:
        raise FastvizError(_no_readable_attention(m))
    return mods


def _no_readable_attention(m) -> str:
    """Why a network without timm's ViT `Attention` is refused: it has no attention at all, or
    attention that computes its probabilities with no module boundary to capture them at
    (LeViT's and EfficientFormer's `Attention` add a position bias and take the softmax inline)."""
    other = [(name, type(mod).__name__) for name, mod in m.module.named_modules()
             if name and re.search("attention|attn", type(mod).__name__, re.IGNORECASE)]
    if other:
        name, kind = other[0]
        more = f", {len(other)} such modules in all" if len(other) > 1 else ""
        what = (f"its attention modules ({kind} at {name!r}{more}) compute their probabilities inline, "
                f"with no module at which fastviz could capture them")
    else:
        what = "none of its modules is an attention module"
    return (f"model: {m.name} has no attention module fastviz can read: {what}. Attention rollout and "
            f"transformer_attribution capture the attention probabilities (B, heads, N, N) of timm's ViT "
            f"Attention (at its attn_drop: ViT, DeiT, BEiT-like blocks); explain {m.name} with gradcam, "
            f"layercam or integrated_gradients")


def _grid(m, n_tokens: int, x: torch.Tensor) -> tuple[int, int, int]:
    """(prefix tokens, grid height, grid width) of the token sequence."""
    net = m.module
    prefix = int(getattr(net, "num_prefix_tokens", 1))
    patch = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    patches = n_tokens - prefix
    if patch is not None:
        gh, gw = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
    else:
        gh = gw = int(round(patches ** 0.5))
    if gh * gw != patches:
        raise FastvizError(f"model: {patches} patch tokens after {prefix} prefix tokens do not lay out "
                           f"on a {gh}x{gw} grid for a {tuple(x.shape[-2:])} image")
    return prefix, gh, gw


def _attentions(m, mods, x, target, with_grad: bool):
    """Each block's attention (B, heads, N, N), in forward order (`mods`: the (name, attention
    module) pairs); with its gradient of the target logit when `with_grad`; and the targets used.

    Raises:
        FastvizError: attention probabilities whose first dimension is not the batch (attention
            over patches unfolded into the batch, as MobileViT's: no rollout over the image).
    """
    probs: list[torch.Tensor] = []
    batch = x.shape[0]

    def capture(name):
        def hook(_m, _i, out):
            if out.shape[0] != batch:
                raise FastvizError(
                    f"model: {m.name}: the attention probabilities of {name!r} have shape {tuple(out.shape)} "
                    f"for a batch of {batch}, and their first dimension is not the batch: this attention "
                    f"runs over patches unfolded into the batch (as MobileViT's does), not over the image's "
                    f"tokens, so no rollout to the image is defined; explain {m.name} with gradcam, layercam "
                    f"or integrated_gradients")
            probs.append(out)
        return hook

    with session(m, unfused_attention=True) as s:
        for name, mod in mods:
            s.add_forward_hook(mod.attn_drop, capture(name))
        with torch.set_grad_enabled(with_grad):
            xi = x.detach().requires_grad_(with_grad)
            logits = check_logits(m(xi))
            score, used = target_scores(m, logits, target)
            grads = torch.autograd.grad(score.sum(), probs) if with_grad else [None] * len(probs)
    if len(probs) != len(mods):
        raise FastvizError(f"model: {len(mods)} attention modules ran {len(probs)} times in one forward")
    return [p.detach() for p in probs], [None if g is None else g.detach() for g in grads], used


def _to_map(m, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, N) relevance of every token for the class token -> (B, H, W) map in [0, 1]."""
    prefix, gh, gw = _grid(m, rows.shape[1], x)
    grid = rows[:, prefix:].reshape(-1, 1, gh, gw).float()
    # a grid equal to rounding (uniform attention) is constant: min-max would stretch the rounding
    flat = grid.flatten(1)
    spread = flat.amax(1) - flat.amin(1)
    grid = torch.where((spread <= 1e-5 * flat.abs().amax(1)).view(-1, 1, 1, 1), torch.zeros_like(grid), grid)
    up = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return minmax(up)


def attention_rollout(model, x, *, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each patch flows into the class token.

    Each block's attention, averaged over heads, mixed with the identity for the residual
    connection (A' = residual * I + (1 - residual) * A, rows renormalised), multiplied through
    the blocks in order; the class token's row over the patches is the map.

    Args:
        model: a `Model` of a timm vision transformer with global attention (ViT, DeiT, ...).
        x: (B, 3, H, W) images in [0, 1].
        residual: the identity's weight (0.5 in the paper).

    Returns:
        (B, H, W) in [0, 1] (class-agnostic: rollout reads no gradient).
    """
    from . import checks

    residual = checks.number(residual, "residual", 0, 1)
    m, x = prepare(model, x)
    mods = _attention_modules(m)

    def rows(xs, _):
        probs, _, _ = _attentions(m, mods, xs, None, with_grad=False)
        eye = torch.eye(probs[0].shape[-1], device=xs.device, dtype=probs[0].dtype)
        rollout = eye.expand(xs.shape[0], -1, -1)
        for a in probs:
            a = residual * eye + (1 - residual) * a.mean(1)
            a = a / a.sum(-1, keepdim=True)
            rollout = a @ rollout
        return _to_map(m, rollout[:, 0], xs)
    return budget.by_rows(rows, x, None, _step(m, mods, x, grad=False))


def transformer_attribution(model, x, target=None) -> torch.Tensor:
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, generic explainability):
    R = I; for each block in order, R = R + mean_heads((dS/dA * A)^+) R; the class token's row
    over the patches is the map.

    Args:
        model: a `Model` of a timm vision transformer with global attention (ViT, DeiT, ...).
        x: (B, 3, H, W) images in [0, 1].
        target: class per row (int, list, tensor) or None for each row's top-1.

    Returns:
        (B, H, W) in [0, 1], class-specific.
    """
    m, x = prepare(model, x)
    check_class_target(m, x, target, "transformer_attribution")
    mods = _attention_modules(m)

    def rows(xs, ts):
        probs, grads, _ = _attentions(m, mods, xs, ts, with_grad=True)
        n = probs[0].shape[-1]
        r = torch.eye(n, device=xs.device, dtype=probs[0].dtype).expand(xs.shape[0], -1, -1)
        for a, g in zip(probs, grads):
            cam = (g * a).clamp(min=0).mean(1)
            r = r + cam @ r
        return _to_map(m, r[:, 0], xs)
    return budget.by_rows(rows, x, target, _step(m, mods, x, grad=True))


def _step(m, mods, x, grad: bool) -> int:
    """Rows per forward within the memory budget, the maps and each row's attention included."""
    kept = x.shape[0] * x.shape[-2] * x.shape[-1] * 4
    budget.check_output(kept, x.device, "x", f"{x.shape[0]} maps of {tuple(x.shape[-2:])}")
    patch = getattr(getattr(m.module, "patch_embed", None), "patch_size", None) or (16, 16)
    tokens = int(getattr(m.module, "num_prefix_tokens", 1)) + (x.shape[-2] // patch[0]) * (x.shape[-1] // patch[1])
    per_row = sum(mod.num_heads for _, mod in mods) * tokens * tokens * 4 * (2 if grad else 1)
    return budget.rows(m, x, grad=grad, total=x.shape[0], fixed=kept, per_row_extra=per_row)
