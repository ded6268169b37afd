"""The network alone, forward + backward to the input: the eager floor beside lowered copies.

Interleaved rounds in one process, medians; the lowered copies with and without the activations
in the convs' epilogues (`activations=` of `fastviz.lower.lowered`), and the default copy with
its backward's masks written to fresh tensors instead of in place (`grad_owned` off), so the
effect of each rewrite is measured beside the same floor. Not a pytest benchmark: the loops' own benchmarks
(bench/test_bench_render.py) are the targets; this says where a change in them comes from.

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=536870912 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        .venv/bin/python bench/lower_parts.py --batch 8 --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

import fastviz as fv
from fastviz.hooks import session
from fastviz.lower import lowered


def forward_backward(net, x: torch.Tensor) -> torch.Tensor:
    xi = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xi).sum(), xi)
    return g


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = fv.load_model()
    x = torch.rand(a.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    default = lowered(model, x)
    fresh_masks = copy.deepcopy(default)
    for m in fresh_masks.module.modules():
        if getattr(m, "grad_owned", False):
            m.grad_owned = False
    nets = {"eager floor": model,
            "lowered, activations apart": lowered(model, x, activations=False),
            "lowered, masks not in place": fresh_masks,
            "lowered (default)": default}
    times: dict[str, list[float]] = {k: [] for k in nets}
    with contextlib.ExitStack() as stack:
        for net in nets.values():
            stack.enter_context(session(net))
        for net in nets.values():
            forward_backward(net, x)
        for _ in range(a.rounds):
            for k, net in nets.items():
                t = time.perf_counter()
                forward_backward(net, x)
                times[k].append(time.perf_counter() - t)
    floor = statistics.median(times["eager floor"])
    print(f"batch {a.batch}, {a.threads} thread(s), {a.rounds} interleaved rounds, medians")
    for k, v in times.items():
        print(f"  {k:28s} {statistics.median(v) * 1e3:8.1f} ms   {statistics.median(v) / floor:.3f}x the floor")


if __name__ == "__main__":
    main()
