"""The radix select's kernels lower to GPU code: compiled ahead of time for sm_90, no GPU needed.

The interpreter accepts code the compiler refuses (types, a masked ``tl.histogram``, scalar masked
stores); this compiles the kernels as a GPU run would (Triton's bundled ptxas, target sm_90) in a
fresh process without ``TRITON_INTERPRET``. It says nothing of speed or of results on a device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastviz.kernels import radix_select as rs

    target = GPUTarget("cuda", 90, 32)
    hist = dict(v_ptr="*fp32", aux_ptr="*fp32", aux_t_ptr="*fp32", scratch_ptr="*i32", N="i32", k="i32",
                PASS="constexpr", PASSES="constexpr", RADIX_BITS="constexpr", WIDTH="constexpr",
                USE_AUX="constexpr", BLOCK="constexpr", ITERS="constexpr")
    thr = dict(scratch_ptr="*i32", out_ptr="*fp32", k="i32", PASSES="constexpr", RADIX_BITS="constexpr",
               LAST_WIDTH="constexpr")
    # 8-bit digits (the default): the first and a middle digit; 11-bit: the short last digit
    for bits, PASS, width, aux in ((8, 0, 8, False), (8, 2, 8, True), (11, 2, 10, True)):
        passes = -(-32 // bits)
        consts = dict(PASS=PASS, PASSES=passes, RADIX_BITS=bits, WIDTH=width, USE_AUX=aux, BLOCK=1024, ITERS=4)
        triton.compile(ASTSource(fn=rs._radix_hist_kernel, signature=hist, constexprs=consts), target=target)
    for bits in (8, 11):
        passes = -(-32 // bits)
        consts = dict(PASSES=passes, RADIX_BITS=bits, LAST_WIDTH=32 - bits * (passes - 1))
        triton.compile(ASTSource(fn=rs._radix_threshold_kernel, signature=thr, constexprs=consts), target=target)
    print("compiled")
    """
)


@pytest.mark.slow  # compiles the kernels through Triton to PTX
def test_radix_select_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if "ptxas" in run.stderr and ("not found" in run.stderr or "No such file" in run.stderr):
        pytest.skip("no ptxas in this triton install")
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
