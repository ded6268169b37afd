"""Per-row k-th smallest value of a (B, N) float32 map: an exact radix select in Triton.

Reference (the oracle the tests compare against, the definition): ``fastviz.regularizers.
kth_smallest`` (NumPy's introselect on CPU, ``torch.kthvalue`` / ``torch.topk`` elsewhere). The
Yosinski step (``fastviz.kernels.yosinski``) takes its two percentile thresholds from here.

Each float is mapped to a 32-bit signed key with the same order (positive floats keep their
bits, negative ones flip all but the sign bit), so the k-th smallest value is the
float of the k-th smallest key, found a digit of ``RADIX_BITS`` bits at a time, top digit first:

- ``_radix_hist_kernel`` (one launch per digit, ``ceil(32 / RADIX_BITS)`` launches): many programs per
  row; each first resolves which keys are still in the running (those whose higher digits equal
  the k-th key's) and the rank left among them, from the last digit's histogram and the state
  the last launch's program 0 stored beside it (this launch's program 0 stores the new state),
  then histograms its tile's current digit of those keys (``tl.histogram``) and adds it to the
  row's histogram with atomics (integer adds: their order cannot change the counts);
- ``_radix_threshold_kernel`` (one program per row): resolves the last digit, writes the float.

Counts are exact integers, so ties are exact: the result is the same value as ``kthvalue``'s
(``-0.0`` and ``+0.0`` are two keys but compare equal, so a threshold made of either zeroes the
same pixels). NaN is not supported. No host sync and a grid fixed by the shape: a select can be
captured in a CUDA graph. Scratch: (B, digits, 2**RADIX_BITS + 2) int32, per digit its
histogram then the (prefix, rank) state before it; zeroed by the launcher, or given zeroed.

With ``aux`` (the contribution clip after the norm clip): the values of the row are
``where(aux < aux_threshold[b], 0, v)``, computed as the map is read, never stored.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastviz.errors import FastvizError

__all__ = ["kth_smallest_rows", "scratch_shape", "RADIX_BITS"]

RADIX_BITS = 8  # the default: 4 digits of 256 bins (11: 3 digits of 2048, 2048, 1024 bins)


@triton.jit
def _resolve_digit(
    slot_ptr,  # int32 slot of one row and digit: RADIX bin counts (then the state, not read here)
    prefix,  # the k-th key's digits above this one (signed, the key >> the bits below them)
    rank,  # the k-th key's rank among the keys with that prefix
    FIRST: tl.constexpr,  # this is the top digit (signed: bin 0 is -RADIX / 2)
    RADIX_BITS: tl.constexpr,  # bins: 2 ** RADIX_BITS
    WIDTH: tl.constexpr,  # bits of this digit: RADIX_BITS, or fewer for the last digit
):
    # The k-th key's digit is the bin where the running count reaches the rank: returns the
    # prefix with that digit appended, and the rank left among the keys in that bin.
    RADIX: tl.constexpr = 1 << RADIX_BITS
    h = tl.load(slot_ptr + tl.arange(0, RADIX))
    below = tl.cumsum(h, 0) < rank  # bins wholly below the rank-th key
    digit = tl.sum(below.to(tl.int32), 0)
    rank = rank - tl.sum(tl.where(below, h, 0), 0)
    if FIRST:
        prefix = digit - RADIX // 2
    else:
        prefix = (prefix << WIDTH) | digit
    return prefix, rank


@triton.jit
def _radix_hist_kernel(
    v_ptr,  # (B, N) float32 values, contiguous
    aux_ptr,  # (B, N) float32, read when USE_AUX: a value counts as 0 where aux < aux_t[b]
    aux_t_ptr,  # (B,) float32 thresholds of aux, read when USE_AUX
    scratch_ptr,  # (B, PASSES, RADIX + 2) int32, zero before the first digit (see the launcher)
    N,  # values per row
    k,  # 1-based rank
    PASS: tl.constexpr,  # which digit, 0 = top
    PASSES: tl.constexpr,
    RADIX_BITS: tl.constexpr,  # bits of every digit but the last
    WIDTH: tl.constexpr,  # bits of this digit: RADIX_BITS, or fewer for the last digit
    USE_AUX: tl.constexpr,
    BLOCK: tl.constexpr,  # values per iteration
    ITERS: tl.constexpr,  # iterations per program: a program reads BLOCK * ITERS values
):
    pid = tl.program_id(0)  # tile within the row
    b = tl.program_id(1)  # row
    RADIX: tl.constexpr = 1 << RADIX_BITS
    SLOT: tl.constexpr = RADIX + 2
    SHIFT: tl.constexpr = 32 - RADIX_BITS * PASS - WIDTH  # this digit's lowest bit
    rows = scratch_ptr + b.to(tl.int64) * (PASSES * SLOT)
    # Which keys are still in the running: the k-th key's digits above this one, from the last
    # digit's histogram and the state the program 0 of the last launch left beside it.
    prefix = k * 0
    rank = k
    if PASS >= 2:
        prefix = tl.load(rows + (PASS - 1) * SLOT + RADIX)
        rank = tl.load(rows + (PASS - 1) * SLOT + RADIX + 1)
    if PASS >= 1:
        prefix, rank = _resolve_digit(rows + (PASS - 1) * SLOT, prefix, rank, PASS == 1, RADIX_BITS, RADIX_BITS)
        tl.store(rows + PASS * SLOT + RADIX, prefix, mask=pid == 0)
        tl.store(rows + PASS * SLOT + RADIX + 1, rank, mask=pid == 0)
    row = b.to(tl.int64) * N
    if USE_AUX:
        aux_t = tl.load(aux_t_ptr + b)
    counts = tl.zeros([RADIX], dtype=tl.int32)
    for i in range(ITERS):  # a loop, not unrolled: ITERS may be 16
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < N
        v = tl.load(v_ptr + row + offs, mask=valid, other=0.0)
        if USE_AUX:
            a = tl.load(aux_ptr + row + offs, mask=valid, other=0.0)
            v = tl.where(a < aux_t, 0.0, v)
        # float32 -> int32 with the same order: positive floats keep their bits; negative ones
        # are mirrored (the 31 low bits flipped), below them in reverse order of magnitude.
        key = v.to(tl.int32, bitcast=True)
        key = key ^ ((key >> 31) & 0x7FFFFFFF)
        if PASS == 0:
            digit = (key >> SHIFT) + RADIX // 2
        else:
            valid = valid & ((key >> (SHIFT + WIDTH)) == prefix)
            digit = (key >> SHIFT) & ((1 << WIDTH) - 1)
        digit = tl.where(valid, digit, 0)
        counts += tl.histogram(digit, RADIX, mask=valid)
    tl.atomic_add(rows + PASS * SLOT + tl.arange(0, RADIX), counts, mask=counts > 0)


@triton.jit
def _radix_threshold_kernel(
    scratch_ptr,  # (B, PASSES, RADIX + 2) int32: every digit's histogram, complete
    out_ptr,  # (B,) float32, written: the k-th smallest value of each row
    k,  # 1-based rank
    PASSES: tl.constexpr,
    RADIX_BITS: tl.constexpr,
    LAST_WIDTH: tl.constexpr,  # bits of the last digit
):
    b = tl.program_id(0)
    RADIX: tl.constexpr = 1 << RADIX_BITS
    SLOT: tl.constexpr = RADIX + 2
    last = scratch_ptr + b.to(tl.int64) * (PASSES * SLOT) + (PASSES - 1) * SLOT
    prefix = tl.load(last + RADIX)
    rank = tl.load(last + RADIX + 1)
    key, rank = _resolve_digit(last, prefix, rank, False, RADIX_BITS, LAST_WIDTH)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)  # the order key is its own inverse
    tl.store(out_ptr + b, bits.to(tl.float32, bitcast=True))


def _tiling(B: int, N: int) -> tuple:
    """(BLOCK, ITERS, num_warps): few wide programs in the interpreter; on a GPU about 1000
    programs in all, 1 to 16 iterations of 1024 values each (chosen, not measured)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return min(triton.next_power_of_2(N), 1 << 16), 1, 4
    BLOCK = 1024
    tiles_needed = triton.cdiv(B * N, BLOCK)
    iters = min(16, max(1, triton.next_power_of_2(triton.cdiv(tiles_needed, 1024))))
    iters = min(iters, triton.next_power_of_2(triton.cdiv(N, BLOCK)))
    return BLOCK, iters, 4


def scratch_shape(B: int, radix_bits: int = RADIX_BITS) -> tuple:
    """Shape of one select's int32 scratch: (B, digits, 2 ** radix_bits bins + 2 state ints)."""
    return (B, -(-32 // radix_bits), (1 << radix_bits) + 2)


def kth_smallest_rows(
    v: Tensor,
    k: int,
    *,
    aux: Optional[Tensor] = None,
    aux_threshold: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    scratch: Optional[Tensor] = None,
    radix_bits: int = RADIX_BITS,
) -> Tensor:
    """Per-row k-th smallest value (1-based k), exact, by a radix select in Triton.

    Same value as ``fastviz.regularizers.kth_smallest(v, k)`` (ties included) for values
    without NaN; with ``aux``, as ``kth_smallest(torch.where(aux < aux_threshold[:, None], 0,
    v), k)``.

    Args:
        v: (B, N) float32 contiguous values, on CUDA (or the CPU under ``TRITON_INTERPRET=1``).
        k: rank in [1, N], a Python int (the same for every row).
        aux: optional (B, N) float32 contiguous map: where ``aux < aux_threshold[b]`` the value
            counts as 0.
        aux_threshold: (B,) float32, with ``aux``.
        out: optional (B,) float32 tensor to write.
        scratch: optional int32 tensor of ``scratch_shape(B, radix_bits)``; must be zero (it is
            left holding the histograms and states). Default: allocated and zeroed here.
        radix_bits: bits a digit, 4 to 12: ``ceil(32 / radix_bits)`` passes over the map of
            ``2 ** radix_bits`` bins each (8: 4 passes, the default; 11: 3 passes).
    Returns:
        (B,) float32 k-th smallest value of each row (``out`` if given).
    Raises:
        FastvizError: shapes, dtypes or devices disagree, k out of [1, N], radix_bits out of
            [4, 12].

    Example:
        >>> kth_smallest_rows(torch.arange(10.0).view(1, 10), 3)  # doctest: +SKIP
        tensor([2.])
    """
    if v.dim() != 2 or v.dtype != torch.float32:
        raise FastvizError(f"v must be a (B, N) float32 tensor, got {v.dtype} of shape {tuple(v.shape)}")
    B, N = v.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= N:
        raise FastvizError(f"k must be an int in [1, {N}], got {k!r}")
    if isinstance(radix_bits, bool) or not isinstance(radix_bits, int) or not 4 <= radix_bits <= 12:
        raise FastvizError(f"radix_bits must be an int in [4, 12], got {radix_bits!r}")
    v = v.contiguous()
    shape = scratch_shape(B, radix_bits)
    passes = shape[1]
    last_width = 32 - radix_bits * (passes - 1)
    if (aux is None) != (aux_threshold is None):
        raise FastvizError("aux and aux_threshold go together: give both or neither")
    if aux is not None:
        if aux.shape != v.shape or aux.dtype != torch.float32 or aux.device != v.device:
            raise FastvizError(f"aux must be float32 of shape {tuple(v.shape)} on {v.device}, got "
                               f"{aux.dtype} of shape {tuple(aux.shape)} on {aux.device}")
        if aux_threshold.shape != (B,) or aux_threshold.dtype != torch.float32:
            raise FastvizError(f"aux_threshold must be float32 of shape ({B},), got "
                               f"{aux_threshold.dtype} of shape {tuple(aux_threshold.shape)}")
        aux, aux_threshold = aux.contiguous(), aux_threshold.contiguous()
    if scratch is None:
        scratch = torch.zeros(shape, device=v.device, dtype=torch.int32)
    elif scratch.shape != shape or scratch.dtype != torch.int32 or not scratch.is_contiguous():
        raise FastvizError(f"scratch must be a contiguous int32 tensor of shape {shape}, "
                           f"got {scratch.dtype} of shape {tuple(scratch.shape)}")
    if out is None:
        out = torch.empty(B, device=v.device, dtype=torch.float32)
    elif out.shape != (B,) or out.dtype != torch.float32 or out.device != v.device or not out.is_contiguous():
        raise FastvizError(f"out must be a contiguous float32 tensor of shape ({B},) on {v.device}, "
                           f"got {out.dtype} of shape {tuple(out.shape)} on {out.device}")
    BLOCK, ITERS, num_warps = _tiling(B, N)
    grid = (triton.cdiv(N, BLOCK * ITERS), B)
    use_aux = aux is not None
    for p in range(passes):
        _radix_hist_kernel[grid](
            v, aux if use_aux else v, aux_threshold if use_aux else v, scratch, N, k,
            PASS=p, PASSES=passes, RADIX_BITS=radix_bits,
            WIDTH=radix_bits if p < passes - 1 else last_width, USE_AUX=use_aux,
            BLOCK=BLOCK, ITERS=ITERS, num_warps=num_warps,
        )
    _radix_threshold_kernel[(B,)](
        scratch, out, k, PASSES=passes, RADIX_BITS=radix_bits, LAST_WIDTH=last_width, num_warps=4
    )
    return out
