"""Integrated gradients, 200 points, torchvision DenseNet-201 (random weights), 8 images of 224x224,
inside a 2 GB memory budget on the CPU; and captum's IntegratedGradients with its defaults beside it.

    OMP_NUM_THREADS=1 python bench/budget_densenet201.py fastviz
    (ulimit -v 6000000; OMP_NUM_THREADS=1 python bench/budget_densenet201.py captum)

Each part runs in its own process and prints one line: seconds, the rows per chunk, the growth of
the process's peak resident set (VmHWM) over its resident set before the call, and the result or
the error. captum's default `internal_batch_size=None` puts all 8 x 200 path points in one
batch; run it under an address-space cap (`ulimit -v`, in KB) on a shared machine, so that the
allocation fails at the cap instead of pushing other processes out of memory.
"""

from __future__ import annotations

import sys
import time

import torch
import torchvision

import fastviz as fv
from fastviz import budget

POINTS, BATCH, BUDGET = 200, 8, 2 * 2 ** 30


def _status(field: str) -> int:
    value = budget.proc_bytes(field)  # the process's VmRSS / VmHWM (Linux)
    if value is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return value


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def main(which: str) -> None:
    torch.manual_seed(0)
    net = torchvision.models.densenet201().eval()
    m = fv.Model(net, mean=fv.models.IMAGENET_MEAN, std=fv.models.IMAGENET_STD, input_size=224)
    x = torch.rand(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if which == "fastviz":
        with fv.memory_budget(BUDGET):
            prof = budget.profile(m, x)
            rows = budget.rows(m, x, grad=True, total=32, fixed=6 * x.numel() * 4,
                               per_row_extra=2 * x[:1].numel() * 4)
            before = _reset_peak()
            t = time.time()
            r = fv.integrated_gradients(m, x, 0, points=POINTS, spacing="uniform")
            seconds = time.time() - t
        grew = _status("VmHWM") - before
        print(f"fastviz: {seconds:.0f} s, estimate {prof.row(True) / 2 ** 20:.0f} MB per row, {rows} rows per "
              f"chunk, peak RSS grew {grew / 2 ** 20:.0f} MB (budget {BUDGET / 2 ** 20:.0f} MB), "
              f"completeness error {r.completeness_error.max().item():.3g}, finite "
              f"{bool(r.attributions.isfinite().all())}", flush=True)
    else:
        from captum.attr import IntegratedGradients

        def forward(inp):
            return m(inp)
        before = _reset_peak()
        t = time.time()
        try:
            a = IntegratedGradients(forward).attribute(x, target=0, n_steps=POINTS)
            outcome = f"ran, finite {bool(a.isfinite().all())}"
        except (RuntimeError, MemoryError) as e:
            outcome = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        grew = _status("VmHWM") - before
        print(f"captum (n_steps={POINTS}, internal_batch_size=None): {time.time() - t:.0f} s, peak RSS grew "
              f"{grew / 2 ** 20:.0f} MB, {outcome}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fastviz")
