"""Long runs keep memory flat: a 10,000-step render on a tiny network, resident memory read at
step 1,000 and at step 10,000 from the progress callback (must agree within 2%).

A step that kept anything alive (a history list, a graph of earlier steps, a hook per step)
would grow the process by at least its activations every step; a 10,000-step run makes even
a few hundred bytes a step show as megabytes. Also records steps per second of the tiny loop
(the engine's own overhead: the network is a few thousand multiply-adds).

    .venv/bin/python -m pytest bench/test_bench_longrun.py --benchmark-disable -s
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn

import fastviz as fv

STEPS = 10_000
CHECK_AT = 1_000
TOLERANCE = 0.02


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where it is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def tiny_model() -> fv.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return fv.Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16)


def test_rss_flat_over_10000_steps(benchmark):
    if not rss_bytes():
        import pytest
        pytest.skip("no /proc/self/statm on this system")
    model = tiny_model()
    seen: dict[int, int] = {}

    def progress(done, total):
        if done in (CHECK_AT, STEPS):
            gc.collect()
            seen[done] = rss_bytes()

    def run():
        seen.clear()
        return fv.class_model(model, [1, 2], steps=STEPS, progress=progress, progress_every=100,
                              jitter=1)

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    assert r.history.shape == (STEPS, 2) and bool(r.images.isfinite().all())
    assert float(r.history[-1].mean()) > float(r.history[0].mean())  # it did ascend
    early, late = seen[CHECK_AT], seen[STEPS]
    growth = (late - early) / early
    benchmark.extra_info.update(steps=STEPS, rss_mb_at_1000=round(early / 2 ** 20, 2),
                                rss_mb_at_10000=round(late / 2 ** 20, 2), growth=round(growth, 5),
                                steps_per_s=round(r.info["steps_per_second"], 1))
    print(f"\nRSS at step {CHECK_AT}: {early / 2 ** 20:.1f} MiB, at {STEPS}: {late / 2 ** 20:.1f} MiB "
          f"({growth:+.3%}); {r.info['steps_per_second']:.0f} steps/s")
    assert abs(growth) <= TOLERANCE, f"resident memory grew {growth:+.2%} between steps {CHECK_AT} and {STEPS}"
