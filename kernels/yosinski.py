"""The Yosinski regularizer step, fused in Triton.

Reference (the oracle the tests compare against, the CPU path, the definition of the maths):
``fastviz.regularizers.regularize_reference``. This file only makes it fast.

Passes over the image (N = B*C*H*W floats; maps are B*H*W):

- blur steps only, ``_update_hblur_kernel``: reads x and d, writes the horizontal blur of the
  update ``x + lr * d`` (the blur is linear, so the update is folded into its taps);
- ``_update_maps_kernel`` (pass A): the update (or the vertical blur of the above), the decay, and
  per pixel the squared norm over channels and ``|sum_c y * g|``; writes y into ``out``;
- thresholds: ``fastviz.kernels.radix_select.kth_smallest_rows`` on the (B, H*W) maps, an exact
  radix select in Triton (4 histogram passes of 8 bits over each map, many programs per image,
  then one program per image), on the device, no host sync; the contribution map is read masked
  by the norm threshold, never stored masked. Verified under the interpreter only, not yet timed
  on a GPU. Before it (``select="topk"``, kept for the benchmark): ``torch.topk`` via
  ``fastviz.regularizers.kth_smallest``, measured on an H200 at 8x50176: topk 0.10 ms, kthvalue
  0.19 ms, a one-program-per-image radix select (tried, removed; B programs likely left most
  of the GPU idle) 0.20 ms; at 64x3x224x224 without blur the step took 0.341 ms (0.285 in a
  graph) with the topk selects and 0.035 ms without the clips;
- ``_clip_clamp_kernel`` (pass B): zeroes the clipped pixels and clamps, in place in ``out``.

With both percentiles 0, pass A clamps and is the last pass. ``out`` may be ``x`` itself: pass A
reads x only pointwise (or not at all, on blur steps, where it reads the scratch blur).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastviz.errors import FastvizError
from fastviz.regularizers import (
    Lr,
    Yosinski,
    _check_blur_fits,
    _check_step_args,
    gaussian_taps,
    kth_smallest,
    percentile_rank,
)
from fastviz.kernels.radix_select import kth_smallest_rows, scratch_shape

__all__ = ["yosinski_step"]


@triton.jit
def _mirror(i, n):
    # Whole-sample mirror (d c b | a b c d), valid for -n < i < 2n - 1: the radius is < H, W.
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * n - 2 - i, i)


@triton.jit
def _update_hblur_kernel(
    x_ptr,  # (B, C, H, W) contiguous float32: the image before the step
    d_ptr,  # (B, C, H, W) contiguous float32: the ascent direction
    taps_ptr,  # (2R+1,) float32: normalised Gaussian taps
    lr_ptr,  # 0-dim float32 learning rate, read when LR_FROM_PTR
    hb_ptr,  # (B, C, H, W) contiguous float32, written: horizontal blur of x + lr * d
    lr,  # learning rate as a number, used when not LR_FROM_PTR
    H,  # image height
    W,  # image width
    R: tl.constexpr,  # blur radius
    LR_FROM_PTR: tl.constexpr,
    BLOCK: tl.constexpr,  # pixels per program
):
    pid = tl.program_id(0)  # block of pixels within one plane
    plane = tl.program_id(1)  # b * C + c
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    h = offs // W
    w = offs - h * W
    base = plane.to(tl.int64) * HW
    row = base + h * W
    if LR_FROM_PTR:
        lr = tl.load(lr_ptr)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(2 * R + 1):
        col = _mirror(w + (j - R), W)
        xv = tl.load(x_ptr + row + col, mask=mask, other=0.0)
        dv = tl.load(d_ptr + row + col, mask=mask, other=0.0)
        acc += tl.load(taps_ptr + j) * (xv + lr * dv)
    tl.store(hb_ptr + base + offs, acc, mask=mask)


@triton.jit
def _update_maps_kernel(
    src_ptr,  # (B, C, H, W) float32: BLUR: horizontal blur of the update; else the image x
    d_ptr,  # (B, C, H, W) float32: ascent direction (read when not BLUR)
    g_ptr,  # (B, C, H, W) float32: objective gradient (read when USE_CONTRIB)
    taps_ptr,  # (2R+1,) float32: Gaussian taps (read when BLUR)
    lr_ptr,  # 0-dim float32 learning rate, read when LR_FROM_PTR
    lo_ptr,  # (C,) float32: clamp lower bounds (read when FINAL)
    hi_ptr,  # (C,) float32: clamp upper bounds (read when FINAL)
    y_ptr,  # (B, C, H, W) float32, written: y before the clips (clamped when FINAL); may be x
    n2_ptr,  # (B, H*W) float32, written when USE_NORM: sum_c y^2
    c_ptr,  # (B, H*W) float32, written when USE_CONTRIB: |sum_c y * g|
    lr,  # learning rate as a number, used when not LR_FROM_PTR
    keep,  # 1 - decay
    H,  # image height
    W,  # image width
    C: tl.constexpr,  # channels
    R: tl.constexpr,  # blur radius
    BLUR: tl.constexpr,
    USE_NORM: tl.constexpr,
    USE_CONTRIB: tl.constexpr,
    FINAL: tl.constexpr,  # no clip follows: clamp here
    LR_FROM_PTR: tl.constexpr,
    BLOCK: tl.constexpr,  # pixels per program
):
    pid = tl.program_id(0)  # block of pixels within one image
    b = tl.program_id(1)  # image
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    if BLUR:
        h = offs // W
        w = offs - h * W
    else:
        if LR_FROM_PTR:
            lr = tl.load(lr_ptr)
    n2 = tl.zeros([BLOCK], dtype=tl.float32)
    cs = tl.zeros([BLOCK], dtype=tl.float32)
    for c in tl.static_range(C):
        base = (b * C + c).to(tl.int64) * HW
        if BLUR:
            y = tl.zeros([BLOCK], dtype=tl.float32)
            for i in tl.static_range(2 * R + 1):
                row = _mirror(h + (i - R), H)
                y += tl.load(taps_ptr + i) * tl.load(src_ptr + base + row * W + w, mask=mask, other=0.0)
        else:
            xv = tl.load(src_ptr + base + offs, mask=mask, other=0.0)
            dv = tl.load(d_ptr + base + offs, mask=mask, other=0.0)
            y = xv + lr * dv
        y = y * keep
        if USE_CONTRIB:
            # Loaded before y is stored: out may alias g.
            gv = tl.load(g_ptr + base + offs, mask=mask, other=0.0)
            cs += y * gv
        if USE_NORM:
            n2 += y * y
        if FINAL:
            y = tl.minimum(tl.maximum(y, tl.load(lo_ptr + c)), tl.load(hi_ptr + c))
        tl.store(y_ptr + base + offs, y, mask=mask)
    if USE_NORM:
        tl.store(n2_ptr + b.to(tl.int64) * HW + offs, n2, mask=mask)
    if USE_CONTRIB:
        tl.store(c_ptr + b.to(tl.int64) * HW + offs, tl.abs(cs), mask=mask)


@triton.jit
def _clip_clamp_kernel(
    y_ptr,  # (B, C, H, W) float32, read and written in place
    n2_ptr,  # (B, H*W) float32: squared norms (read when USE_NORM)
    c_ptr,  # (B, H*W) float32: |sum_c y * g| (read when USE_CONTRIB)
    t1_ptr,  # (B,) float32: squared-norm thresholds (read when USE_NORM)
    t2_ptr,  # (B,) float32: contribution thresholds (read when USE_CONTRIB)
    lo_ptr,  # (C,) float32: clamp lower bounds
    hi_ptr,  # (C,) float32: clamp upper bounds
    HW,  # pixels per image
    C: tl.constexpr,  # channels
    USE_NORM: tl.constexpr,
    USE_CONTRIB: tl.constexpr,
    BLOCK: tl.constexpr,  # pixels per program
):
    pid = tl.program_id(0)  # block of pixels within one image
    b = tl.program_id(1)  # image
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    map_offs = b.to(tl.int64) * HW + offs
    zero = offs < 0
    # Same rule as the reference: a pixel goes when its score is < the threshold.
    if USE_NORM:
        zero = zero | (tl.load(n2_ptr + map_offs, mask=mask, other=1.0) < tl.load(t1_ptr + b))
    if USE_CONTRIB:
        zero = zero | (tl.load(c_ptr + map_offs, mask=mask, other=1.0) < tl.load(t2_ptr + b))
    for c in tl.static_range(C):
        base = (b * C + c).to(tl.int64) * HW
        y = tl.load(y_ptr + base + offs, mask=mask, other=0.0)
        y = tl.where(zero, 0.0, y)
        y = tl.minimum(tl.maximum(y, tl.load(lo_ptr + c)), tl.load(hi_ptr + c))
        tl.store(y_ptr + base + offs, y, mask=mask)


def _check_tensor(name: str, t: Tensor, like: Tensor) -> None:
    if t.dtype != torch.float32 or t.device != like.device:
        raise FastvizError(
            f"{name} must be a float32 tensor on {like.device}, got {t.dtype} on {t.device}"
        )


def yosinski_step(
    x: Tensor,
    d: Tensor,
    g: Tensor,
    *,
    lr: Lr,
    reg: Yosinski,
    blur: bool,
    lo: Tensor,
    hi: Tensor,
    out: Optional[Tensor] = None,
    select: str = "radix",
) -> Tensor:
    """One Yosinski regularizer step, fused; same maths as ``regularize_reference``.

    Args:
        x: (B, C, H, W) float32 centred image.
        d: (B, C, H, W) float32 ascent direction.
        g: (B, C, H, W) float32 objective gradient.
        lr: Python float, or 0-dim float32 tensor on the device of x (read on the device).
        reg: the configuration.
        blur: whether this step blurs.
        lo, hi: (C,) float32 per-channel clamp bounds, on the device of x.
        out: (B, C, H, W) contiguous float32 tensor to write; may be x. Default: a new tensor.
        select: how the two percentile thresholds are found: "radix" (the Triton radix select,
            ``fastviz.kernels.radix_select``) or "topk" (``torch.topk``, the previous path, kept
            so the benchmark can time one against the other). Both are exact.
    Returns:
        ``out``.
    Raises:
        FastvizError: shapes, dtypes or devices disagree; ``out`` not contiguous; blur radius
            not smaller than H and W; unknown ``select``.
    """
    if select not in ("radix", "topk"):
        raise FastvizError(f'select must be "radix" or "topk", got {select!r}')
    _check_step_args(x, d, g, lo, hi)
    for name, t in (("x", x), ("d", d), ("g", g), ("lo", lo), ("hi", hi)):
        _check_tensor(name, t, x)
    B, C, H, W = x.shape
    HW = H * W
    x, d, g, lo, hi = (t.contiguous() for t in (x, d, g, lo, hi))
    if out is None:
        out = torch.empty_like(x)
    else:
        _check_tensor("out", out, x)
        if out.shape != x.shape or not out.is_contiguous():
            raise FastvizError(
                f"out must be a contiguous tensor of shape {tuple(x.shape)}, "
                f"got shape {tuple(out.shape)} (contiguous={out.is_contiguous()})"
            )
    if isinstance(lr, Tensor):
        if lr.dim() != 0:
            raise FastvizError(f"lr must be a number or a 0-dim tensor, got shape {tuple(lr.shape)}")
        lr_ptr, lr_value, lr_from_ptr = lr.to(device=x.device, dtype=torch.float32), 0.0, True
    else:
        lr_ptr, lr_value, lr_from_ptr = x, float(lr), False

    use_norm = reg.norm_percentile > 0
    use_contrib = reg.contribution_percentile > 0
    final = not (use_norm or use_contrib)
    R = _check_blur_fits(reg.blur_sigma, H, W) if blur else 0
    taps = gaussian_taps(reg.blur_sigma, device=x.device) if blur else x

    # The interpreter runs programs one after another in NumPy: few, wide programs are fastest.
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    BLOCK = min(triton.next_power_of_2(HW), 1 << 16) if interpreting else 1024
    num_warps = 4
    tiles = triton.cdiv(HW, BLOCK)

    n2 = torch.empty((B, HW), device=x.device, dtype=torch.float32) if use_norm else x
    cmap = torch.empty((B, HW), device=x.device, dtype=torch.float32) if use_contrib else x

    if blur:
        src = torch.empty_like(x)
        _update_hblur_kernel[(tiles, B * C)](
            x, d, taps, lr_ptr, src, lr_value, H, W,
            R=R, LR_FROM_PTR=lr_from_ptr, BLOCK=BLOCK, num_warps=num_warps,
        )
    else:
        src = x
    _update_maps_kernel[(tiles, B)](
        src, d, g, taps, lr_ptr, lo, hi, out, n2, cmap, lr_value, 1.0 - float(reg.decay), H, W,
        C=C, R=R, BLUR=blur, USE_NORM=use_norm, USE_CONTRIB=use_contrib, FINAL=final,
        LR_FROM_PTR=lr_from_ptr, BLOCK=BLOCK, num_warps=num_warps,
    )
    if final:
        return out

    t1 = t2 = x
    if select == "radix":
        # One zeroed scratch for both selects: (2, B, digits, bins + 2) int32 histograms + states.
        scratch = torch.zeros((2, *scratch_shape(B)), device=x.device, dtype=torch.int32)
        if use_norm:
            t1 = kth_smallest_rows(n2, percentile_rank(reg.norm_percentile, HW), scratch=scratch[0])
        if use_contrib:
            # Measured after the norm clip: the pixels it zeroes contribute 0 (masked as read).
            aux = dict(aux=n2, aux_threshold=t1) if use_norm else {}
            t2 = kth_smallest_rows(cmap, percentile_rank(reg.contribution_percentile, HW), scratch=scratch[1], **aux)
    else:
        if use_norm:
            t1 = kth_smallest(n2, percentile_rank(reg.norm_percentile, HW))
        if use_contrib:
            masked = torch.where(n2 < t1.unsqueeze(1), 0.0, cmap) if use_norm else cmap
            t2 = kth_smallest(masked, percentile_rank(reg.contribution_percentile, HW))
    _clip_clamp_kernel[(tiles, B)](
        out, n2, cmap, t1, t2, lo, hi, HW,
        C=C, USE_NORM=use_norm, USE_CONTRIB=use_contrib, BLOCK=BLOCK, num_warps=num_warps,
    )
    return out
