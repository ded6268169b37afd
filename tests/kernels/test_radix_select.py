"""The Triton radix select against ``fastviz.regularizers.kth_smallest``, in the interpreter on CPU.

Both are exact order statistics of the same float32 values, so the tests ask for equality (``==``,
under which -0.0 equals +0.0), not a tolerance: on fresh random maps of the real and irregular
shapes, with ties (all zeros, constant rows, a few distinct values, mostly zeros), at the ranks of
percentiles 0, 1, 30, 99 and 100, with negative, subnormal and infinite values, and in the masked
mode the contribution clip uses. The whole fused step is then checked bit for bit against the same
step with ``torch.topk`` thresholds, and against the reference on inputs whose maps are exact.
Outputs are poisoned with NaN before each call so that an unwritten element fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastviz.errors import FastvizError
from fastviz.kernels import radix_select, yosinski
from fastviz.regularizers import Yosinski, kth_smallest, percentile_rank, regularize_reference

PERCENTILES = [0.0, 1.0, 30.0, 99.0, 100.0]


def select(v, k, **kw):
    out = torch.full((v.shape[0],), math.nan)
    got = radix_select.kth_smallest_rows(v, k, out=out, **kw)
    assert got is out
    return got


def assert_same(got, want, where):
    assert got.shape == want.shape, where
    assert torch.equal(got, want), f"{where}: got {got.tolist()}, want {want.tolist()}"


def norm_like(B, N, gen):
    """Squared norms over 3 channels, as pass A writes them: non-negative, continuous."""
    return torch.randn(B, 3, N, generator=gen).square().sum(1)


@pytest.mark.parametrize("p", PERCENTILES)
@pytest.mark.parametrize("B, N", [(1, 17 * 31), (3, 223 * 225)])
def test_select_equals_reference(B, N, p):
    seed = torch.seed()
    v = norm_like(B, N, torch.Generator().manual_seed(seed))
    k = percentile_rank(p, N)
    assert_same(select(v, k), kth_smallest(v, k), f"seed {seed}, ({B}, {N}), p={p}, k={k}")


@pytest.mark.parametrize("p", [30.0])
def test_select_equals_reference_at_batch_8_224(p):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    # a contribution-like map: |sum_c y * g|, 30% exact zeros as after the norm clip
    v = torch.randn(8, 3, 224 * 224, generator=gen).mul(torch.randn(8, 3, 224 * 224, generator=gen)).sum(1).abs()
    v[torch.rand(v.shape, generator=gen) < 0.3] = 0.0
    k = percentile_rank(p, v.shape[1])
    assert_same(select(v, k), kth_smallest(v, k), f"seed {seed}, p={p}, k={k}")


def tie_rows(N, gen):
    rows = [
        torch.zeros(N),  # all zeros
        torch.full((N,), 0.37),  # a constant image
        torch.randint(0, 3, (N,), generator=gen).float() / 8,  # three values, many ties each
        torch.where(torch.rand(N, generator=gen) < 0.7, 0.0, torch.rand(N, generator=gen)),  # mostly zeros
        torch.where(torch.rand(N, generator=gen) < 0.5, 2.0 ** -140, 1e38),  # subnormal and huge
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("p", PERCENTILES)
def test_select_ties(p):
    seed = torch.seed()
    v = tie_rows(2003, torch.Generator().manual_seed(seed))
    k = percentile_rank(p, v.shape[1])
    got = select(v, k)
    assert_same(got, kth_smallest(v, k), f"seed {seed}, p={p}, k={k}")
    assert got[0] == 0 and got[1] == torch.tensor(0.37)  # a tie's value, not a neighbour's


@pytest.mark.parametrize("k", [1, 333, 501, 1000])
def test_select_signed_and_special_values(k):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(5, 1000, generator=gen)
    v[1] = -v[1].abs()  # all negative
    v[2, ::3] = math.inf
    v[2, 1::3] = -math.inf
    v[3, :500] = -0.0  # signed zeros: -0.0 and +0.0 are one value to kthvalue
    v[3, 500:] = 0.0
    v[4] = torch.randn(1000, generator=gen) * 1e-42  # subnormals of both signs
    assert_same(select(v, k), kth_smallest(v, k), f"seed {seed}, k={k}")


@pytest.mark.parametrize("p", [30.0, 99.0])
def test_select_masked_by_aux_equals_masking_first(p):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    B, N = 3, 4001
    aux = norm_like(B, N, gen)
    aux[0] = 0.5  # a constant aux: its threshold is its value, nothing is masked
    aux[1, ::2] = 0.0
    v = torch.rand(B, N, generator=gen)
    t = kth_smallest(aux, percentile_rank(30.0, N))
    k = percentile_rank(p, N)
    want = kth_smallest(torch.where(aux < t.unsqueeze(1), 0.0, v), k)
    got = select(v, k, aux=aux, aux_threshold=t)
    assert_same(got, want, f"seed {seed}, p={p}")
    if p == 30.0:
        # k - 1 pixels masked to 0 (no ties in row 2's aux): the k-th is the least one kept
        assert got[2] == v[2][aux[2] >= t[2]].min()
        assert got[0] == v[0].kthvalue(k).values  # a constant aux masks nothing


def test_select_many_programs_per_row(monkeypatch):
    """The GPU tiling: several programs per row (here 4, of 2 iterations of 256 values), each
    adding its tile's counts with atomics and reading the state the last launch's program 0
    stored (the interpreter otherwise runs one program per row)."""
    monkeypatch.setattr(radix_select, "_tiling", lambda B, N: (256, 2, 4))
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    N = 2001
    v = torch.cat([norm_like(1, N, gen), tie_rows(N, gen)[2:4]])
    for k in (1, 700, N):
        assert_same(select(v, k), kth_smallest(v, k), f"seed {seed}, k={k}")
    aux = torch.rand(v.shape, generator=gen)
    t = kth_smallest(aux, 600)
    want = kth_smallest(torch.where(aux < t.unsqueeze(1), 0.0, v), 700)
    assert_same(select(v, 700, aux=aux, aux_threshold=t), want, f"seed {seed}, masked")


@pytest.mark.parametrize("bits", [11, 12])
def test_select_other_digit_widths(bits):
    """Digits of other widths, a shorter last digit included (11: 11 + 11 + 10 bits)."""
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    N = 1001
    v = torch.cat([tie_rows(N, gen), torch.randn(1, N, generator=gen), norm_like(1, N, gen)])
    for k in (1, 333, N):
        got = select(v, k, radix_bits=bits)
        assert_same(got, kth_smallest(v, k), f"seed {seed}, {bits} bits, k={k}")


def test_select_fills_a_given_scratch():
    v = torch.rand(2, 300)
    scratch = torch.zeros(radix_select.scratch_shape(2), dtype=torch.int32)
    assert_same(select(v, 100, scratch=scratch), kth_smallest(v, 100), "given scratch")
    assert (scratch[:, 0, :-2].sum(1) == 300).all()  # the top digit's histogram counts every value


def test_select_bad_arguments_raise():
    v = torch.rand(2, 10)
    with pytest.raises(FastvizError, match="k must be"):
        radix_select.kth_smallest_rows(v, 0)
    with pytest.raises(FastvizError, match="k must be"):
        radix_select.kth_smallest_rows(v, 11)
    with pytest.raises(FastvizError, match="v must be"):
        radix_select.kth_smallest_rows(v.double(), 1)
    with pytest.raises(FastvizError, match="aux"):
        radix_select.kth_smallest_rows(v, 1, aux=v)
    with pytest.raises(FastvizError, match="out must be"):
        radix_select.kth_smallest_rows(v, 1, out=torch.empty(3))
    with pytest.raises(FastvizError, match="radix_bits"):
        radix_select.kth_smallest_rows(v, 1, radix_bits=16)
    with pytest.raises(FastvizError, match="scratch"):
        radix_select.kth_smallest_rows(v, 1, scratch=torch.zeros(2, 3, 3, dtype=torch.int32))


def _draw(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 0.5
    d = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    mean = torch.tensor([0.485, 0.456, 0.406])
    return x, d, g, -mean, 1.0 - mean


@pytest.mark.parametrize("shape, blur, p", [((3, 3, 223, 225), False, 30.0), ((2, 3, 17, 31), False, 99.0)])
def test_step_radix_equals_step_topk_bit_for_bit(shape, blur, p):
    """Same maps, so the thresholds must agree exactly: no near-tie slack here."""
    seed = torch.seed()
    x, d, g, lo, hi = _draw(shape, seed)
    kw = dict(lr=0.1, reg=Yosinski(decay=0.01, norm_percentile=p, contribution_percentile=p), blur=blur, lo=lo, hi=hi)
    radix = torch.full_like(x, math.nan)
    topk = torch.full_like(x, math.nan)
    yosinski.yosinski_step(x, d, g, out=radix, select="radix", **kw)
    yosinski.yosinski_step(x, d, g, out=topk, select="topk", **kw)
    assert torch.equal(radix, topk), f"seed {seed}: {int((radix != topk).sum())} elements differ"
    assert (radix == 0).all(1).float().mean() >= p / 100 * 0.99  # the clips did zero pixels


@pytest.mark.parametrize("image", ["quantised", "constant", "zeros"])
@pytest.mark.parametrize("p", [1.0, 30.0, 99.0])
def test_step_with_ties_equals_reference_exactly(image, p):
    """Inputs on a 1/8 grid, no decay, no blur: both maps are exact, full of ties, and the
    kernel's step must equal the reference element for element."""
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 17, 31)
    if image == "quantised":
        x = torch.randint(-3, 4, shape, generator=gen).float() / 8
    elif image == "constant":
        x = torch.full(shape, 0.25)
    else:
        x = torch.zeros(shape)
    d = torch.randint(-1, 2, shape, generator=gen).float() / 8 if image == "quantised" else torch.zeros(shape)
    g = torch.randint(-2, 3, shape, generator=gen).float() / 4 if image != "constant" else torch.full(shape, 0.5)
    lo, hi = torch.full((3,), -0.375), torch.full((3,), 0.375)
    kw = dict(lr=0.5, reg=Yosinski(decay=0.0, norm_percentile=p, contribution_percentile=p), blur=False, lo=lo, hi=hi)
    want = regularize_reference(x, d, g, **kw)
    out = torch.full_like(x, math.nan)
    yosinski.yosinski_step(x, d, g, out=out, **kw)
    assert torch.equal(out, want), f"seed {seed}, {image}, p={p}: {int((out != want).sum())} elements differ"
    if image == "constant":
        assert torch.equal(out, x)  # every pixel ties at the threshold: none is below it
