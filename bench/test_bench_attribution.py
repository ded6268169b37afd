"""Saliency and guided backprop: images per second beside the floor, at batch 1 and 8.

The floor (bench/conftest.py) is one forward + one backward to the image with the parameters
frozen; it runs interleaved with the method, round by round, in the same test. Target: each
method within 3% of its floor (`extra_info["ratio_to_floor"]` <= 1.03).

    .venv/bin/python -m pytest bench/test_bench_attribution.py --benchmark-only \
        --benchmark-columns=median,iqr,ops
"""

from __future__ import annotations

import pytest
import torch

import fastviz as fv
from conftest import paired, sync

TARGET = 1.03
# Rounds sized so the file takes about half a minute on 2 CPU cores at 1 thread.
ROUNDS = {1: 25, 8: 9}


def _record(benchmark, setting, timing, batch):
    s = timing["fn_s"]
    ratio = s / timing["floor_s"]
    benchmark.extra_info.update(setting, batch=batch, images_per_s=round(batch / s, 2),
                                floor_images_per_s=round(batch / timing["floor_s"], 2),
                                ms_per_image=round(s / batch * 1e3, 3),
                                floor_ms_per_image=round(timing["floor_s"] / batch * 1e3, 3),
                                ratio_to_floor=round(ratio, 4), target=TARGET)
    print(f"\n{benchmark.name}: {batch / s:.2f} images/s, floor {batch / timing['floor_s']:.2f}, "
          f"ratio {ratio:.3f} (target <= {TARGET})")


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("method", [fv.saliency, fv.guided_backprop], ids=["saliency", "guided_backprop"])
def test_attribution(benchmark, model, photos, floor, setting, device, method, batch):
    x = photos[:batch]

    def run():
        out = method(model, x)
        sync(device)
        return out

    timing = paired(benchmark, run, lambda: floor(model, x), rounds=ROUNDS[batch])
    out = timing["fn"]
    assert out.shape[0] == batch and torch.isfinite(out).all() and out.abs().amax() > 0
    _record(benchmark, setting, timing, batch)
