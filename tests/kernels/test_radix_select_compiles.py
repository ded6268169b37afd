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
                PASS="constexpr", PASSES="constexpr", RADIX_BITS="constexpr", USE_AUX="constexpr",
                BLOCK="constexpr", ITERS="constexpr")
    for PASS, aux in ((0, False), (2, True)):
        consts = dict(PASS=PASS, PASSES=4, RADIX_BITS=rs.RADIX_BITS, USE_AUX=aux, BLOCK=1024, ITERS=4)
        triton.compile(ASTSource(fn=rs._radix_hist_kernel, signature=hist, constexprs=consts), target=target)
    thr = dict(scratch_ptr="*i32", out_ptr="*fp32", k="i32", PASSES="constexpr", RADIX_BITS="constexpr")
    triton.compile(ASTSource(fn=rs._radix_threshold_kernel, signature=thr,
                             constexprs=dict(PASSES=4, RADIX_BITS=rs.RADIX_BITS)), target=target)
    print("compiled")
    """
)


def test_radix_select_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if "ptxas" in run.stderr and ("not found" in run.stderr or "No such file" in run.stderr):
        pytest.skip("no ptxas in this triton install")
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
