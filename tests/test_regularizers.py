"""fastviz.regularizers against an independent NumPy / SciPy implementation of each op.

Inputs are fresh random draws; the seed is in every assert message. Thresholds are exact order
statistics, so a draw in which some score lies within fp32 rounding of a threshold could flip one
pixel between two correct implementations: such draws (about 1 in 10^3 here) are redrawn, never
hidden by a tolerance.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from fastviz.errors import FastvizError
from fastviz.regularizers import (
    NONE,
    Yosinski,
    clip_small,
    gaussian_blur,
    _kth_smallest_topk,
    gaussian_taps,
    kth_smallest,
    percentile_threshold,
    regularize,
    regularize_reference,
)

MEAN = np.array([0.485, 0.456, 0.406])
TIE_EPS = 1e-5  # scores within this fraction of the largest score of a threshold are ambiguous


# ---------------------------------------------------------------- the NumPy implementation
def np_blur(y: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(y, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)


def np_kth(v: np.ndarray, p: float) -> np.ndarray:
    """(B, N) -> (B,) k-th smallest per row, k = ceil(p/100 N) clamped to [1, N]."""
    n = v.shape[1]
    k = min(max(math.ceil(p / 100.0 * n), 1), n)
    return np.partition(v, k - 1, axis=1)[:, k - 1]


def np_clip(y: np.ndarray, score: np.ndarray, p: float):
    """Zero the pixels whose (B, H, W) score is below the threshold; also say if a near-tie."""
    B = y.shape[0]
    t = np_kth(score.reshape(B, -1), p)[:, None, None]
    gap = np.abs(score - t)
    ambiguous = bool(np.any((gap > 0) & (gap <= TIE_EPS * max(score.max(), 1e-30))))
    return y * (score >= t)[:, None], ambiguous


def np_step(x, d, g, lr, reg: Yosinski, blur: bool, lo, hi):
    """Steps 1-6 in float64: returns (y, ambiguous)."""
    x, d, g = (a.astype(np.float64) for a in (x, d, g))
    y = (x + lr * d) * (1.0 - reg.decay)
    if blur:
        y = np_blur(y, reg.blur_sigma)
    ambiguous = False
    if reg.norm_percentile > 0:
        y, amb = np_clip(y, np.sqrt((y**2).sum(1)), reg.norm_percentile)
        ambiguous |= amb
    if reg.contribution_percentile > 0:
        y, amb = np_clip(y, np.abs((y * g).sum(1)), reg.contribution_percentile)
        ambiguous |= amb
    return np.clip(y, lo[None, :, None, None], hi[None, :, None, None]), ambiguous


# ---------------------------------------------------------------- helpers
def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63))


def draw(rng, shape):
    x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    d = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    mean = np.resize(MEAN, C)
    return x, d, g, (-mean).astype(np.float32), (1.0 - mean).astype(np.float32)


def torch_step(x, d, g, lo, hi, **kw):
    t = [torch.from_numpy(a) for a in (x, d, g, lo, hi)]
    return regularize_reference(t[0], t[1], t[2], lo=t[3], hi=t[4], **kw).numpy()


def check_step(shape, reg, blur, lr=0.1, tries=20):
    """Compare regularize_reference with np_step on a fresh draw without near-ties."""
    for _ in range(tries):
        seed = fresh_seed()
        rng = np.random.default_rng(seed)
        x, d, g, lo, hi = draw(rng, shape)
        want, ambiguous = np_step(x, d, g, lr, reg, blur, lo, hi)
        if not ambiguous:
            break
    else:
        pytest.fail(f"{tries} draws in a row had near-ties at a threshold (last seed {seed})")
    got = torch_step(x, d, g, lo, hi, lr=lr, reg=reg, blur=blur)
    err = np.abs(got - want).max()
    assert err <= 1e-5, f"max abs error {err} for {shape} {reg} blur={blur}, seed {seed}"
    return got, want


# ---------------------------------------------------------------- blur
@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.0])
@pytest.mark.parametrize("shape", [(2, 3, 17, 31), (1, 2, 29, 26), (3, 1, 50, 64)])
def test_gaussian_blur_matches_scipy(shape, sigma):
    seed = fresh_seed()
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    got = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    want = np_blur(x.astype(np.float64), sigma)
    assert got.shape == shape
    err = np.abs(got - want).max()
    assert err <= 1e-6, f"max abs error {err}, seed {seed}"


def test_gaussian_blur_largest_radius_uses_whole_sample_mirror():
    # sigma 1 -> radius 4, the most a 5-pixel side allows: the mirror reaches the far border.
    seed = fresh_seed()
    x = np.random.default_rng(seed).random((2, 3, 5, 6), dtype=np.float32)
    got = gaussian_blur(torch.from_numpy(x), 1.0).numpy()
    assert np.abs(got - np_blur(x.astype(np.float64), 1.0)).max() <= 1e-6, f"seed {seed}"


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.2])
def test_gaussian_taps_match_scipy_impulse_response(sigma):
    r = int(4.0 * sigma + 0.5)
    impulse = np.zeros(4 * r + 3)
    impulse[2 * r + 1] = 1.0
    want = ndi.gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0)[r + 1 : 3 * r + 2]
    got = gaussian_taps(sigma, dtype=torch.float64).numpy()
    assert got.shape == (2 * r + 1,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3, 4, 30), (1, 3, 30, 4)])
def test_blur_radius_not_smaller_than_image_raises(shape):
    x = torch.rand(shape)
    with pytest.raises(FastvizError, match="blur_sigma"):
        gaussian_blur(x, 1.0)
    with pytest.raises(FastvizError, match="radius 4"):
        regularize_reference(x, x, x, lr=0.1, reg=Yosinski(), blur=True, lo=torch.zeros(3), hi=torch.ones(3))


# ---------------------------------------------------------------- thresholds and clips
@pytest.mark.parametrize("p", [0.0, 0.01, 30.0, 50.0, 99.99])
@pytest.mark.parametrize("n", [1, 7, 527, 50176])
def test_percentile_threshold_matches_partition(p, n):
    seed = fresh_seed()
    v = np.random.default_rng(seed).standard_normal((3, n)).astype(np.float32)
    got = percentile_threshold(torch.from_numpy(v), p).numpy()
    assert got.shape == (3, 1)
    np.testing.assert_array_equal(got[:, 0], np_kth(v, p), err_msg=f"seed {seed}")


def _kth_cases(rng):
    u = lambda *s: rng.random(s, dtype=np.float32)  # noqa: E731
    return {
        "uniform": u(3, 1000),
        "same exponent": 1.0 + u(2, 777),  # only the mantissa bits differ
        "ties": np.floor(u(2, 500) * 5),  # many exact ties, zeros among them
        "all equal": np.full((2, 64), 0.3, dtype=np.float32),
        "subnormals": np.where(u(2, 300) < 0.5, 0.0, u(2, 300) * 1e-40).astype(np.float32),
        "with inf": np.concatenate([u(1, 50), np.full((1, 3), np.inf, dtype=np.float32)], axis=1),
        "one value": u(4, 1),
    }


@pytest.mark.parametrize("case", list(_kth_cases(np.random.default_rng(0))))
def test_kth_smallest_both_methods_match_partition(case):
    # kth_smallest uses kthvalue on CPU and topk on CUDA: both are checked here, on CPU.
    seed = fresh_seed()
    v = _kth_cases(np.random.default_rng(seed))[case]
    n = v.shape[1]
    for k in sorted({k for k in (1, 2, n // 3 + 1, (n + 1) // 2, n - 1, n) if 1 <= k <= n}):
        want = np.partition(v, k - 1, axis=1)[:, k - 1]
        for got in (kth_smallest(torch.from_numpy(v), k), _kth_smallest_topk(torch.from_numpy(v), k)):
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{case} k={k}, seed {seed}")


@pytest.mark.parametrize("p", [0.0, 30.0, 90.0])
def test_clip_small_matches_numpy(p):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((2, 3, 17, 31)).astype(np.float32)
    score = rng.random((2, 17, 31)).astype(np.float32)
    got = clip_small(torch.from_numpy(y), torch.from_numpy(score), p).numpy()
    want = y if p == 0 else np_clip(y, score, p)[0]
    np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
    zeroed = (got == 0).all(1).sum(axis=(1, 2))
    assert (zeroed == math.ceil(p / 100 * 17 * 31) - (p > 0)).all(), f"seed {seed}"


# ---------------------------------------------------------------- each op of the step
SHAPE = (2, 3, 23, 37)


def test_update_and_decay_match_numpy():
    check_step(SHAPE, replace(NONE, decay=0.05), blur=False)


def test_norm_clip_matches_numpy():
    got, _ = check_step(SHAPE, replace(NONE, norm_percentile=30.0), blur=False)
    # Clamp bounds contain 0, so the clipped pixels are exactly 0: 30% of them, minus the k-th.
    assert (got == 0).all(1).sum() == 2 * (math.ceil(0.3 * 23 * 37) - 1)


def test_contribution_clip_matches_numpy():
    check_step(SHAPE, replace(NONE, contribution_percentile=60.0), blur=False)


def test_clamp_matches_numpy():
    got, _ = check_step(SHAPE, NONE, blur=False, lr=2.0)
    assert (got == (1 - MEAN).astype(np.float32)[None, :, None, None]).any()


def test_blur_step_matches_numpy():
    check_step(SHAPE, replace(NONE, blur_sigma=1.3), blur=True)


# ---------------------------------------------------------------- the whole step
@pytest.mark.parametrize(
    "reg",
    [
        Yosinski(),
        Yosinski(decay=0.01, blur_sigma=0.8, norm_percentile=50.0, contribution_percentile=20.0),
        Yosinski(decay=0.001, blur_sigma=2.0, norm_percentile=10.0, contribution_percentile=80.0),
    ],
)
@pytest.mark.parametrize("blur", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 29, 37), (1, 3, 40, 17)])
def test_reference_step_matches_numpy_composition(shape, reg, blur):
    check_step(shape, reg, blur)


def test_lr_as_device_tensor_equals_float():
    x, d, g = torch.randn(3, 2, 3, 16, 16).unbind(0)
    lo, hi = torch.full((3,), -0.5), torch.full((3,), 0.5)
    kw = dict(reg=Yosinski(), blur=True, lo=lo, hi=hi)
    a = regularize_reference(x, d, g, lr=0.25, **kw)
    b = regularize_reference(x, d, g, lr=torch.tensor(0.25), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a.abs().sum() > 0


def test_reference_does_not_modify_inputs():
    x, d, g = torch.randn(3, 1, 3, 12, 12).unbind(0)
    before = [t.clone() for t in (x, d, g)]
    regularize_reference(x, d, g, lr=0.1, reg=Yosinski(), blur=True, lo=-torch.ones(3), hi=torch.ones(3))
    for a, b in zip((x, d, g), before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "field, value",
    [
        ("decay", -0.1),
        ("decay", 1.0),
        ("blur_every", -1),
        ("blur_every", 2.5),
        ("blur_sigma", 0.0),
        ("blur_sigma", float("nan")),
        ("norm_percentile", 130),
        ("norm_percentile", -1),
        ("contribution_percentile", 100),
    ],
)
def test_yosinski_validation_names_the_field(field, value):
    with pytest.raises(FastvizError, match=field):
        Yosinski(**{field: value})


def test_yosinski_message_shows_range_and_value():
    with pytest.raises(FastvizError, match=r"norm_percentile must be in \[0, 100\), got 130"):
        Yosinski(norm_percentile=130)


def test_blur_at():
    assert [Yosinski(blur_every=3).blur_at(s) for s in range(5)] == [True, False, False, True, False]
    assert not any(NONE.blur_at(s) for s in range(5))
    assert NONE.decay == 0 and NONE.norm_percentile == 0 and NONE.contribution_percentile == 0


# ---------------------------------------------------------------- dispatch
def _args():
    x, d, g = torch.randn(3, 2, 3, 12, 14).unbind(0)
    return (x, d, g), dict(lr=0.1, reg=Yosinski(), blur=True, lo=torch.full((3,), -0.4), hi=torch.full((3,), 0.6))


def test_auto_and_torch_on_cpu_are_the_reference():
    args, kw = _args()
    want = regularize_reference(*args, **kw)
    assert torch.equal(regularize(*args, **kw), want)
    out = torch.full_like(args[0], float("nan"))
    assert regularize(*args, **kw, impl="torch", out=out) is out
    assert torch.equal(out, want)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args, kw = _args()
    with pytest.raises(FastvizError, match='impl="triton" needs CUDA tensors'):
        regularize(*args, **kw, impl="triton")


def test_triton_on_cpu_without_interpreter_raises_in_a_fresh_process():
    code = (
        "import torch\n"
        "from fastviz.errors import FastvizError\n"
        "from fastviz.regularizers import Yosinski, regularize\n"
        "x = torch.zeros(1, 3, 8, 8)\n"
        "try:\n"
        "    regularize(x, x, x, lr=0.1, reg=Yosinski(), blur=False, lo=-torch.ones(3), hi=torch.ones(3), impl='triton')\n"
        "except FastvizError as e:\n"
        "    print('raised', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("raised"), done.stdout + done.stderr


def test_unknown_impl_raises():
    args, kw = _args()
    with pytest.raises(FastvizError, match="impl must be"):
        regularize(*args, **kw, impl="cuda")
