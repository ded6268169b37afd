"""GPU checks of the Triton radix select (skipped without CUDA; `bench/gpu_check.sh` runs them).

The interpreter tests (tests/kernels) check the maths on the CPU; these check the compiled
kernels on a device: exact equality with ``torch.kthvalue`` (ties included), the fused step with
radix thresholds equal bit for bit to the step with ``topk`` thresholds, and a CUDA-graph replay
equal to the eager call. ``fastviz.kernels`` is imported inside the tests: tests/kernels needs
triton to decorate the kernels only after its conftest has set ``TRITON_INTERPRET``.
"""

import pytest
import torch

from fastviz.regularizers import Yosinski, percentile_rank

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

N = 224 * 224


def _maps(B=8):
    gen = torch.Generator(device="cuda").manual_seed(3)
    v = torch.randn(B, 3, N, device="cuda", generator=gen).square().sum(1)
    v[1] = 0.0
    v[2] = 0.37
    v[3] = torch.randint(0, 3, (N,), device="cuda", generator=gen).float() / 8
    v[4, : N // 3] = 0.0
    v[5] = torch.randn(N, device="cuda", generator=gen)
    return v


@pytest.mark.parametrize("bits", [8, 11])
@pytest.mark.parametrize("p", [0.0, 1.0, 30.0, 99.0, 100.0])
def test_radix_select_equals_kthvalue_on_cuda(p, bits):
    from fastviz.kernels.radix_select import kth_smallest_rows

    v = _maps()
    k = percentile_rank(p, N)
    got = kth_smallest_rows(v, k, radix_bits=bits)
    want = torch.kthvalue(v, k, dim=1).values
    assert torch.equal(got, want), (got, want)


def test_radix_select_replays_in_a_cuda_graph():
    from fastviz.kernels.radix_select import kth_smallest_rows

    v = _maps()
    k = percentile_rank(30.0, N)
    out = torch.empty(v.shape[0], device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kth_smallest_rows(v, k, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kth_smallest_rows(v, k, out=out)
    v.copy_(_maps().flip(1))  # new values in the same buffer: the replay must see them
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.kthvalue(v, k, dim=1).values)


@pytest.mark.parametrize("blur", [False, True])
def test_step_radix_equals_step_topk_on_cuda(blur):
    from fastviz.kernels.yosinski import yosinski_step

    gen = torch.Generator(device="cuda").manual_seed(11)
    shape = (8, 3, 224, 224)
    x, d, g = (torch.randn(shape, device="cuda", generator=gen) for _ in range(3))
    lo, hi = torch.full((3,), -0.5, device="cuda"), torch.full((3,), 0.5, device="cuda")
    kw = dict(lr=0.1, reg=Yosinski(), blur=blur, lo=lo, hi=hi)
    radix = yosinski_step(x, d, g, select="radix", **kw)
    topk = yosinski_step(x, d, g, select="topk", **kw)
    assert torch.equal(radix, topk)
    assert (radix == 0).all(1).float().mean() >= 0.3  # the clips zeroed pixels
