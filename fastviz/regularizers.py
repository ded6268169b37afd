"""The Yosinski (2015) regularizer step: its configuration and the plain torch reference.

One step, given the centred image ``x``, the ascent direction ``d`` and the objective gradient
``g`` (all (B, C, H, W) float32):

1. update ``y = x + lr * d``;
2. L2 decay ``y = y * (1 - decay)``;
3. on a blur step, a separable Gaussian blur (radius ``int(4 * sigma + 0.5)``, whole-sample
   mirror border ``d c b | a b c d``);
4. small-norm clip: pixels whose norm over channels is below the per-image k-th smallest norm
   are set to 0 (``k = ceil(p / 100 * H * W)`` clamped to ``[1, H * W]``);
5. small-contribution clip: the same on ``|sum_c y * g|``, measured after step 4;
6. per-channel clamp to ``[lo_c, hi_c]``.

The functions here are the CPU path and the oracle for the fused Triton kernel in
``fastviz.kernels.yosinski``; ``regularize`` picks between the two. Nothing in a step syncs with
the host: thresholds come from ``kth_smallest`` (kthvalue / topk) on the device and every branch
is on Python values, so a step can be captured in a CUDA graph.

The norm clip thresholds the squared norm: sqrt is monotonic, so the pixels kept are the same
(up to fp32 rounding ties) and the sqrt pass is saved.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastviz.errors import FastvizError

__all__ = [
    "Yosinski",
    "NONE",
    "gaussian_radius",
    "gaussian_taps",
    "gaussian_blur",
    "percentile_rank",
    "percentile_threshold",
    "kth_smallest",
    "clip_small",
    "regularize_reference",
    "regularize",
]

Lr = Union[float, Tensor]
_NUMPY_SELECT = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Yosinski:
    """The four regularizers of Yosinski et al. 2015, as one step's configuration.

    Args:
        decay: fraction of the image removed per step (L2 decay), in [0, 1).
        blur_every: blur on steps where ``step % blur_every == 0``; 0 never blurs.
        blur_sigma: Gaussian sigma in pixels, > 0.
        norm_percentile: percent of pixels (smallest norm) set to 0 each step, in [0, 100);
            0 skips the clip.
        contribution_percentile: percent of pixels (smallest ``|sum_c y * g|``) set to 0,
            in [0, 100); 0 skips the clip.

    Raises:
        FastvizError: a field out of range; the message names the field.

    Example:
        >>> Yosinski(blur_every=2).blur_at(4)
        True
    """

    decay: float = 1e-4
    blur_every: int = 4
    blur_sigma: float = 1.0
    norm_percentile: float = 30.0
    contribution_percentile: float = 30.0

    def __post_init__(self) -> None:
        if not (isinstance(self.decay, (int, float)) and 0.0 <= self.decay < 1.0):
            raise FastvizError(f"decay must be in [0, 1), got {self.decay!r}")
        if isinstance(self.blur_every, bool) or not isinstance(self.blur_every, int) or self.blur_every < 0:
            raise FastvizError(f"blur_every must be an int >= 0, got {self.blur_every!r}")
        if not (isinstance(self.blur_sigma, (int, float)) and 0.0 < self.blur_sigma < math.inf):
            raise FastvizError(f"blur_sigma must be a finite number > 0, got {self.blur_sigma!r}")
        for name in ("norm_percentile", "contribution_percentile"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p < 100.0):
                raise FastvizError(f"{name} must be in [0, 100), got {p!r}")

    def blur_at(self, step: int) -> bool:
        """Whether step ``step`` blurs (a Python bool, decided on the host)."""
        return self.blur_every > 0 and step % self.blur_every == 0


NONE = Yosinski(decay=0.0, blur_every=0, norm_percentile=0.0, contribution_percentile=0.0)
"""The configuration that regularizes nothing (the step is update + clamp)."""


def gaussian_radius(sigma: float) -> int:
    """Radius of the Gaussian taps: ``int(4 * sigma + 0.5)`` (scipy's ``truncate=4`` rule)."""
    return int(4.0 * float(sigma) + 0.5)


def gaussian_taps(sigma: float, *, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian taps.

    Computed on ``device`` with device ops (no host copy), in float64, then cast.

    Args:
        sigma: standard deviation in pixels, > 0.
    Returns:
        (2r + 1,) taps summing to 1, ``r = gaussian_radius(sigma)``.

    Example:
        >>> gaussian_taps(1.0).shape
        torch.Size([9])
    """
    if not sigma > 0:
        raise FastvizError(f"sigma must be > 0, got {sigma!r}")
    r = gaussian_radius(sigma)
    i = torch.arange(-r, r + 1, device=device, dtype=torch.float64)
    w = torch.exp(i.square_().mul_(-0.5 / (float(sigma) ** 2)))
    return w.div_(w.sum()).to(dtype)


def _check_blur_fits(sigma: float, H: int, W: int) -> int:
    r = gaussian_radius(sigma)
    if r >= H or r >= W:
        raise FastvizError(
            f"blur_sigma={sigma} needs a radius {r} smaller than the image height and width, "
            f"got H={H}, W={W}"
        )
    return r


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of each channel, whole-sample mirror border.

    Equal to ``scipy.ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="mirror",
    truncate=4.0)``.

    Args:
        x: (B, C, H, W) float image.
        sigma: standard deviation in pixels, > 0.
    Returns:
        (B, C, H, W) blurred image (a new tensor).
    Raises:
        FastvizError: the radius ``int(4 * sigma + 0.5)`` is not smaller than H and W.

    Example:
        >>> gaussian_blur(torch.rand(2, 3, 32, 32), 1.0).shape
        torch.Size([2, 3, 32, 32])
    """
    B, C, H, W = x.shape
    r = _check_blur_fits(sigma, H, W)
    taps = _taps_list(sigma)
    if r == 0:
        return x.clone()
    # Shifted slices of one padded copy with Python-float weights: on CPU this is ~5x faster
    # than conv2d (groups=C) and, the weights being host numbers, it never syncs on CUDA.
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    rows = padded[..., 0:W] * taps[0]
    for j in range(1, 2 * r + 1):
        rows.add_(padded[..., j : j + W], alpha=taps[j])
    out = rows[..., 0:H, :] * taps[0]
    for i in range(1, 2 * r + 1):
        out.add_(rows[..., i : i + H, :], alpha=taps[i])
    return out


def _taps_list(sigma: float) -> list:
    """``gaussian_taps`` as Python floats (float64 maths, no tensor)."""
    r = gaussian_radius(sigma)
    w = [math.exp(-0.5 * (i / float(sigma)) ** 2) for i in range(-r, r + 1)]
    total = math.fsum(w)
    return [v / total for v in w]


def percentile_rank(percentile: float, n: int) -> int:
    """The rank k (1-based) of the threshold: ``ceil(percentile / 100 * n)`` clamped to [1, n]."""
    return min(max(math.ceil(percentile / 100.0 * n), 1), n)


def percentile_threshold(v: Tensor, percentile: float) -> Tensor:
    """Per-row k-th smallest value, ``k = percentile_rank(percentile, N)``.

    Args:
        v: (B, N) scores.
        percentile: in [0, 100].
    Returns:
        (B, 1) thresholds, on the device of ``v`` (no host sync).

    Example:
        >>> percentile_threshold(torch.arange(10.0).view(1, 10), 30.0)
        tensor([[2.]])
    """
    return kth_smallest(v, percentile_rank(percentile, v.shape[1])).unsqueeze(1)


def kth_smallest(v: Tensor, k: int) -> Tensor:
    """Per-row k-th smallest value (1-based k), exact, on the device of ``v``.

    On CPU NumPy's introselect (``np.partition``); elsewhere ``torch.kthvalue``; on CUDA the max of the k smallest by ``torch.topk`` (or the min of
    the N-k+1 largest), which measured twice as fast as CUDA's kthvalue at 8x50176 (H200).
    The oracle of the Triton radix select ``fastviz.kernels.radix_select.kth_smallest_rows``,
    which the fused step uses instead.

    Args:
        v: (B, N) values.
        k: rank in [1, N].
    Returns:
        (B,) k-th smallest value of each row.
    """
    if v.is_cuda:
        return _kth_smallest_topk(v, k)
    if v.device.type == "cpu" and not v.requires_grad and v.dtype in _NUMPY_SELECT:
        # NumPy's introselect on a zero-copy view: 9x faster than torch.kthvalue here (1.5 vs
        # 13.4 ms at 8 x 50176, one thread). A CPU tensor has no device to sync with.
        return torch.from_numpy(np.partition(v.numpy(), k - 1, axis=1)[:, k - 1].copy())
    return torch.kthvalue(v, k, dim=1).values


def _kth_smallest_topk(v: Tensor, k: int) -> Tensor:
    n = v.shape[1]
    if k <= n - k + 1:
        return torch.topk(v, k, dim=1, largest=False, sorted=False).values.amax(dim=1)
    return torch.topk(v, n - k + 1, dim=1, largest=True, sorted=False).values.amin(dim=1)


def _keep_mask(score: Tensor, percentile: float) -> Tensor:
    """(B, H, W) bool: True where ``score`` >= its per-image percentile threshold."""
    B = score.shape[0]
    t = percentile_threshold(score.reshape(B, -1), percentile)
    return score >= t.view(B, *([1] * (score.dim() - 1)))


def clip_small(y: Tensor, score: Tensor, percentile: float) -> Tensor:
    """Set to 0 (all channels) the pixels whose score is below the per-image threshold.

    Args:
        y: (B, C, H, W) image.
        score: (B, H, W) per-pixel score (norm, squared norm, contribution, ...).
        percentile: in [0, 100); 0 returns ``y`` unchanged (a copy).
    Returns:
        (B, C, H, W) new tensor, ``y`` where ``score >= percentile_threshold(score)``, else 0.

    Example:
        >>> y = torch.rand(1, 3, 4, 4)
        >>> (clip_small(y, y.square().sum(1), 50.0) == 0).all(1).sum().item()
        7
    """
    if percentile <= 0:
        return y.clone()
    return y * _keep_mask(score, percentile).unsqueeze(1)


def _check_step_args(x: Tensor, d: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> None:
    if x.dim() != 4:
        raise FastvizError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    for name, t in (("d", d), ("g", g)):
        if t.shape != x.shape:
            raise FastvizError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    C = x.shape[1]
    for name, t in (("lo", lo), ("hi", hi)):
        if t.shape != (C,):
            raise FastvizError(f"{name} must have shape ({C},), one bound per channel, got {tuple(t.shape)}")


def regularize_reference(
    x: Tensor, d: Tensor, g: Tensor, *, lr: Lr, reg: Yosinski, blur: bool, lo: Tensor, hi: Tensor
) -> Tensor:
    """One regularizer step (update, decay, blur, norm clip, contribution clip, clamp) in torch.

    The CPU path and the oracle of ``fastviz.kernels.yosinski.yosinski_step``.

    Args:
        x: (B, C, H, W) float32 centred image.
        d: (B, C, H, W) ascent direction.
        g: (B, C, H, W) objective gradient (for the contribution clip).
        lr: learning rate, a Python float or a 0-dim tensor on the device of ``x``.
        reg: the configuration.
        blur: whether this step blurs (``reg.blur_at(step)``).
        lo, hi: (C,) per-channel bounds of the clamp.
    Returns:
        (B, C, H, W) new tensor.
    Raises:
        FastvizError: shapes disagree, or the blur radius does not fit the image.
    """
    _check_step_args(x, d, g, lo, hi)
    B, C, H, W = x.shape
    if isinstance(lr, Tensor):
        y = torch.addcmul(x, d, lr)
    else:
        y = torch.add(x, d, alpha=lr)
    if reg.decay:
        y.mul_(1.0 - reg.decay)
    if blur:
        y = gaussian_blur(y, reg.blur_sigma)

    keep = None
    if reg.norm_percentile > 0:
        keep = _keep_mask(y.square().sum(1), reg.norm_percentile)
    if reg.contribution_percentile > 0:
        # sum_c (y * keep) * g == keep * sum_c y * g: the zeroed image is never built.
        contribution = (y * g).sum(1).abs_()
        if keep is not None:
            contribution.mul_(keep)
        keep_c = _keep_mask(contribution, reg.contribution_percentile)
        keep = keep_c if keep is None else keep.logical_and_(keep_c)
    if keep is not None:
        y.mul_(keep.unsqueeze(1))
    lo = lo.to(y.dtype).view(1, C, 1, 1)
    hi = hi.to(y.dtype).view(1, C, 1, 1)
    return y.clamp_(min=lo, max=hi)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def regularize(
    x: Tensor,
    d: Tensor,
    g: Tensor,
    *,
    lr: Lr,
    reg: Yosinski,
    blur: bool,
    lo: Tensor,
    hi: Tensor,
    impl: str = "auto",
    out: Optional[Tensor] = None,
) -> Tensor:
    """One regularizer step, by the fused Triton kernel or the torch reference.

    Args:
        x, d, g, lr, reg, blur, lo, hi: as in ``regularize_reference``.
        impl: "auto" (Triton on CUDA tensors when triton imports, else torch), "triton" or
            "torch". "triton" on CPU tensors is an error unless ``TRITON_INTERPRET=1``.
        out: (B, C, H, W) contiguous float32 tensor to write into; may be ``x`` itself.
    Returns:
        ``out`` if given, else a new (B, C, H, W) tensor.
    Raises:
        FastvizError: unknown ``impl``, Triton asked for where it cannot run, bad shapes.
    """
    if impl == "auto":
        impl = "triton" if x.is_cuda and _triton_importable() else "torch"
    if impl == "torch":
        y = regularize_reference(x, d, g, lr=lr, reg=reg, blur=blur, lo=lo, hi=hi)
        if out is None:
            return y
        if out.shape != y.shape:
            raise FastvizError(f"out must have the shape of x {tuple(y.shape)}, got {tuple(out.shape)}")
        return out.copy_(y)
    if impl != "triton":
        raise FastvizError(f'impl must be "auto", "triton" or "torch", got {impl!r}')
    if not x.is_cuda and not _interpreting():
        raise FastvizError(
            f'impl="triton" needs CUDA tensors (or TRITON_INTERPRET=1), got x on {x.device}'
        )
    if not _triton_importable():
        raise FastvizError('impl="triton" needs the triton package, which does not import')
    from fastviz.kernels.yosinski import yosinski_step

    return yosinski_step(x, d, g, lr=lr, reg=reg, blur=blur, lo=lo, hi=hi, out=out)
