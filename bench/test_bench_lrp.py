"""LRP (epsilon-plus-flat, the default) beside the floor and beside zennit, batch 8, one run.

The floor (bench/conftest.py) is one forward + one backward to the image with the parameters
frozen, on the user's network; it runs interleaved with `fv.lrp`, round by round. zennit runs
the same composite on the same photos in the same test (with the canonizers that make it
compute the same relevance: tests/zennit_helpers.py), so its ratio to the same floor is beside
ours. Target: `fv.lrp` at most 1.3x the floor.

    .venv/bin/python -m pytest bench/test_bench_lrp.py --benchmark-only \
        --benchmark-columns=median,iqr,ops
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

import fastviz as fv
from conftest import paired, sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
zh = pytest.importorskip("tests.zennit_helpers")

TARGET = 1.3
ROUNDS = 7
BATCH = 8


def _networks(model):
    torch.manual_seed(0)
    resnet = fv.Model(torchvision.models.resnet18().eval(), mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), name="resnet18")

    def resnet_canon():
        from zennit.torchvision import ResNetBasicBlockCanonizer
        return [zh.ExactNamedMerge(zh.conv_bn_pairs(resnet.module)), ResNetBasicBlockCanonizer()]

    def lite0_canon():
        return [zh.ExactNamedMerge(zh.conv_bn_pairs(model.module)), zh.Lite0Skip()]

    return {"lite0": (model, lite0_canon), "resnet18": (resnet, resnet_canon)}


@pytest.mark.parametrize("net", ["lite0", "resnet18"])
def test_lrp(benchmark, model, photos, floor, setting, device, net):
    if device.type != "cpu":
        pytest.skip("zennit beside it runs on the CPU here")
    m, canon = _networks(model)[net]
    x = photos[:BATCH]
    t = torch.full((BATCH,), 285)

    def run():
        out = fv.lrp(m, x, t)
        sync(device)
        return out

    timing = paired(benchmark, run, lambda: floor(m, x), rounds=ROUNDS)
    r = timing["fn"]
    assert r.relevance.shape == x.shape and torch.isfinite(r.relevance).all()
    z_times = []
    for i in range(4):  # zennit, the same composite, on the same photos, after ours
        t0 = time.perf_counter()
        z = zh.zennit_lrp(m, x, t, "epsilon_plus_flat", canon())
        if i:
            z_times.append(time.perf_counter() - t0)
    diff = float((r.relevance - z).norm() / z.norm())
    s, f, zs = timing["fn_s"], timing["floor_s"], statistics.median(z_times)
    benchmark.extra_info.update(setting, network=net, batch=BATCH, ms_per_image=round(s / BATCH * 1e3, 2),
                                floor_ms_per_image=round(f / BATCH * 1e3, 2),
                                zennit_ms_per_image=round(zs / BATCH * 1e3, 2),
                                ratio_to_floor=round(s / f, 3), zennit_ratio_to_floor=round(zs / f, 3),
                                relative_difference_to_zennit=diff, target=TARGET)
    print(f"\n{benchmark.name}: lrp {s / BATCH * 1e3:.1f} ms/image, floor {f / BATCH * 1e3:.1f}, "
          f"zennit {zs / BATCH * 1e3:.1f}; ratio {s / f:.3f} (target <= {TARGET}), zennit {zs / f:.3f}; "
          f"rel. difference {diff:.1e}")
