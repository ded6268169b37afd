"""Faithfulness metrics: the cost per image of each, beside the floor, at batch 2.

The floor (bench/conftest.py) is one forward + one backward to the image with the parameters
frozen. A metric is many forwards per image by construction (deletion and insertion: steps + 1
no-grad forwards; ROAD: 2 x percentiles forwards plus as many sparse solves on the CPU; the
randomisation check: one map per stage), so the ratio says how many floors a metric costs, and
`forwards_per_image` what it must cost at the least.

    .venv/bin/python -m pytest bench/test_bench_metrics.py --benchmark-only \
        --benchmark-columns=median,iqr,ops
"""

from __future__ import annotations

import pytest
import torch

import fastviz as fv
from conftest import paired, sync

BATCH = 2
ROUNDS = 3
STEPS = 50
PERCENTILES = [10, 30, 50]  # each is 2 sparse solves per image: 0.1-3 s here; 90% took up to 11 s

CASES = {
    # name: (call, forwards per image it needs at the least)
    "deletion": (lambda m, x, s: fv.deletion(m, x, s, points=STEPS), STEPS + 1),
    "insertion": (lambda m, x, s: fv.insertion(m, x, s, points=STEPS), STEPS + 1),
    "road": (lambda m, x, s: fv.road(m, x, s, percentiles=PERCENTILES), 2 * len(PERCENTILES)),
    "randomization_saliency": (lambda m, x, s: fv.randomization_check(m, x, "saliency"), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_metric(benchmark, model, photos, floor, setting, device, name):
    x = photos[:BATCH]
    maps = fv.saliency(model, x)
    call, forwards = CASES[name]

    def run():
        out = call(model, x, maps)
        sync(device)
        return out

    timing = paired(benchmark, run, lambda: floor(model, x), rounds=ROUNDS, floors_per_round=3)
    out = timing["fn"]
    numbers = out.similarity if name.startswith("random") else getattr(out, "auc", None)
    if numbers is None:
        numbers = out.combined
    assert torch.isfinite(numbers).all() and numbers.abs().amax() > 0
    # Under --benchmark-disable (a smoke run) there are no stats: the output check above is the test.
    s = benchmark.stats.stats.median if benchmark.stats is not None else timing["floor_s"]
    ratio = s / timing["floor_s"]
    benchmark.extra_info.update(setting, batch=BATCH, ms_per_image=round(s / BATCH * 1e3, 1),
                                floor_ms_per_image=round(timing["floor_s"] / BATCH * 1e3, 2),
                                ratio_to_floor=round(ratio, 2), forwards_per_image=forwards)
    print(f"\n{name}: {s / BATCH * 1e3:.0f} ms/image, floor {timing['floor_s'] / BATCH * 1e3:.1f} ms/image, "
          f"ratio {ratio:.1f} (forwards per image: {forwards})")
