"""The fused Triton Yosinski step against the torch reference, in the Triton interpreter on CPU.

Fresh random inputs every run (the seed is in every assert message); the output is poisoned with
NaN before each call so that an element the kernel does not write fails.

Thresholds are exact order statistics of fp32 maps that the kernel and the reference compute in
different summation orders (the blur) and with or without FMA. When two pixels' scores lie within
rounding of each other at a threshold rank, they can swap between the two, and a swap in the norm
clip shifts the contribution clip's rank by one. Such pixels are the only ones allowed to differ,
and only in an image whose maps show such a near-tie (see ``assert_matches``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import pytest
import torch

from fastviz.errors import FastvizError
from fastviz.regularizers import (
    NONE,
    Yosinski,
    percentile_rank,
    percentile_threshold,
    regularize,
    regularize_reference,
)
from fastviz.kernels import yosinski

TOL = 1e-5  # max abs error, relative to the image scale
TIE_EPS = 1e-5  # a near-tie: two scores within this fraction of the largest score, at the threshold
RANK_SLACK = 2  # pixels this many ranks from a threshold may swap at a near-tie
MEAN = torch.tensor([0.485, 0.456, 0.406])


def test_runs_in_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    # triton.jit read the variable when the kernels were decorated: they must be interpreted.
    assert type(yosinski._update_maps_kernel).__name__ == "InterpretedFunction", (
        "fastviz.kernels.yosinski was imported before tests/kernels/conftest.py set TRITON_INTERPRET"
    )


def draw(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 0.5
    d = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    mean = MEAN.repeat(math.ceil(shape[1] / 3))[: shape[1]]
    return x, d, g, -mean, 1.0 - mean


def near_tie_pixels(x, d, g, *, lr, reg, blur):
    """(B, H*W) bool: pixels allowed to differ (near a threshold rank, in an image with a near-tie)."""
    plain = replace(reg, norm_percentile=0.0, contribution_percentile=0.0)
    inf = torch.full((x.shape[1],), math.inf)
    y = regularize_reference(x, d, g, lr=lr, reg=plain, blur=blur, lo=-inf, hi=inf)
    B, HW = y.shape[0], y.shape[2] * y.shape[3]
    n2 = y.square().sum(1).reshape(B, HW)
    contrib = (y * g).sum(1).abs().reshape(B, HW)
    maps = []
    if reg.norm_percentile > 0:
        maps.append((n2, reg.norm_percentile))
        contrib = torch.where(n2 < percentile_threshold(n2, reg.norm_percentile), 0.0, contrib)
    if reg.contribution_percentile > 0:
        maps.append((contrib, reg.contribution_percentile))
    allowed = torch.zeros(B, HW, dtype=torch.bool)
    tie = torch.zeros(B, dtype=torch.bool)
    for score, p in maps:
        k = percentile_rank(p, HW) - 1  # 0-based
        values, order = score.sort(dim=1, stable=True)
        lo_r, hi_r = max(k - RANK_SLACK, 0), min(k + RANK_SLACK, HW - 1)
        window = values[:, lo_r : hi_r + 1]
        gaps = window.diff(dim=1)
        # exact ties (the zeros of clipped pixels) are exact in both implementations
        tie |= ((gaps > 0) & (gaps <= TIE_EPS * values[:, -1:])).any(dim=1)
        allowed.scatter_(1, order[:, lo_r : hi_r + 1], True)
    return allowed & tie.unsqueeze(1)


def assert_matches(out, want, inputs, *, lr, reg, blur, seed):
    x, d, g = inputs
    B, C, H, W = out.shape
    tol = TOL * max(1.0, float(x.abs().max()))
    err = (out - want).abs().amax(dim=1).reshape(B, H * W)
    bad = ~(err <= tol)  # NaN counts as bad
    where = f"seed {seed}, shape {tuple(out.shape)}, {reg}, blur={blur}"
    if not bad.any():
        return
    assert not out.isnan().any(), f"kernel left {int(out.isnan().sum())} elements unwritten (NaN), {where}"
    allowed = near_tie_pixels(x, d, g, lr=lr, reg=reg, blur=blur)
    unexplained = bad & ~allowed
    assert not unexplained.any(), (
        f"{int(unexplained.sum())} pixels differ by up to {float(err.max())} (tol {tol}) "
        f"and are not near-ties at a threshold; {where}"
    )
    assert int(bad.sum()) <= 4 * B, f"{int(bad.sum())} near-tie pixels differ, too many; {where}"


def run_case(shape, reg, blur, *, lr=0.1, in_place=False, lr_tensor=False):
    seed = torch.seed()
    x, d, g, lo, hi = draw(shape, seed)
    lr_arg = torch.tensor(lr) if lr_tensor else lr
    want = regularize_reference(x, d, g, lr=lr_arg, reg=reg, blur=blur, lo=lo, hi=hi)
    if in_place:
        out = x.clone()
        x_in = out
    else:
        out = torch.full_like(x, math.nan)
        x_in = x
    got = yosinski.yosinski_step(x_in, d, g, lr=lr_arg, reg=reg, blur=blur, lo=lo, hi=hi, out=out)
    assert got is out
    assert_matches(out, want, (x, d, g), lr=lr_arg, reg=reg, blur=blur, seed=seed)
    assert want.abs().sum() > 0
    return out


def config(p, sigma=1.0):
    return Yosinski(decay=0.01, blur_sigma=sigma, norm_percentile=p, contribution_percentile=p)


@pytest.mark.parametrize("p", [0.0, 30.0, 90.0])
@pytest.mark.parametrize("blur", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 17, 31), (3, 3, 223, 225)])
def test_kernel_matches_reference(shape, blur, p):
    run_case(shape, config(p), blur)


@pytest.mark.parametrize("blur, p", [(True, 30.0), (False, 90.0)])
def test_kernel_matches_reference_at_batch_8_224(blur, p):
    started = time.perf_counter()
    run_case((8, 3, 224, 224), config(p), blur)
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("blur", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 17, 31), (3, 3, 223, 225)])
def test_kernel_in_place(shape, blur):
    run_case(shape, config(30.0), blur, in_place=True)


@pytest.mark.parametrize(
    "reg",
    [
        Yosinski(decay=0.0, norm_percentile=0.0, contribution_percentile=50.0),
        Yosinski(decay=0.0, norm_percentile=50.0, contribution_percentile=0.0),
        Yosinski(decay=0.05, norm_percentile=20.0, contribution_percentile=60.0),
        NONE,
    ],
)
def test_kernel_one_clip_or_other(reg):
    run_case((2, 3, 33, 47), reg, blur=True)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_kernel_other_sigmas(sigma):
    run_case((2, 3, 31, 29), config(30.0, sigma), blur=True)


@pytest.mark.parametrize("channels", [1, 4])
def test_kernel_other_channel_counts(channels):
    run_case((2, channels, 19, 23), config(30.0), blur=True)


@pytest.mark.parametrize("blur", [False, True])
def test_kernel_lr_as_tensor(blur):
    run_case((2, 3, 17, 31), config(30.0), blur, lr_tensor=True)


def test_regularize_dispatches_to_the_kernel():
    seed = torch.seed()
    x, d, g, lo, hi = draw((2, 3, 20, 24), seed)
    kw = dict(lr=0.1, reg=Yosinski(), blur=True, lo=lo, hi=hi)
    out = torch.full_like(x, math.nan)
    assert regularize(x, d, g, impl="triton", out=out, **kw) is out
    assert_matches(out, regularize_reference(x, d, g, **kw), (x, d, g), lr=0.1, reg=Yosinski(), blur=True, seed=seed)
    fresh = regularize(x, d, g, impl="triton", **kw)
    assert fresh.shape == x.shape and not fresh.isnan().any()


def test_kernel_blur_radius_not_smaller_than_image_raises():
    x = torch.rand(1, 3, 4, 30)
    with pytest.raises(FastvizError, match="blur_sigma"):
        yosinski.yosinski_step(x, x, x, lr=0.1, reg=Yosinski(), blur=True, lo=torch.zeros(3), hi=torch.ones(3))


def test_kernel_bad_out_raises():
    x = torch.rand(1, 3, 8, 10)
    lo, hi = torch.zeros(3), torch.ones(3)
    with pytest.raises(FastvizError, match="out must be"):
        yosinski.yosinski_step(x, x, x, lr=0.1, reg=Yosinski(), blur=False, lo=lo, hi=hi, out=torch.empty(1, 3, 10, 8).transpose(2, 3))
    with pytest.raises(FastvizError, match="out must be"):
        yosinski.yosinski_step(x, x, x, lr=0.1, reg=Yosinski(), blur=False, lo=lo, hi=hi, out=x.double())
