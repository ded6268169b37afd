"""Speed on timm's zoo: the class-model step and saliency beside the floor, per network row.

Networks: resnet50, convnext_tiny, vit_small_patch16_224, swin_tiny_patch4_window7_224 (timm,
random weights, nothing downloaded), 224 x 224, 8 network rows, one torch thread.

- Class model at its defaults (`fv.class_model(model, classes, steps=STEPS)`: MACO, 4 random
  crops per image, so 2 classes x 4 views = 8 network rows a step). Time per step from
  `Render.info["loop_seconds"]`, the loop alone (as bench/test_bench_render.py).
- `fv.saliency` on 8 photos (8 rows).
- The floor (bench/conftest.py): one forward + one backward to the input of the user's network,
  parameters frozen, on 8 rows at 224, interleaved with the method round by round, in the
  same test. Both act on 8 rows, so ratio_to_floor is the ratio per network row.

`variant` in extra_info: "default" (the call as a user makes it: the class model through the
lowered copy, saliency on the exact network) and, on resnet50 where the lowered copy folds
BatchNorms, "lower=False" for the class model and "lower=True" for saliency. Target: the
default at most TARGET (1.10) x the floor per network row.

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=536870912 MALLOC_TRIM_THRESHOLD_=1073741824 \\
      .venv/bin/python -m pytest bench/test_bench_zoo.py --benchmark-only --fastviz-threads 1 \\
      --benchmark-columns=median,iqr,rounds

The smoke run (`make bench-smoke`: `--benchmark-disable`, each benchmark once, output checked)
uses small stand-ins at 64 x 64 (resnet18, convnext_atto, vit_tiny, a 2-token-window swin),
since the four networks take minutes on a CPU: FASTVIZ_BENCH_ZOO_FULL=1 runs the real four there
too. FASTVIZ_BENCH_ZOO=name,name picks networks by timm name.
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

import fastviz as fv
from conftest import paired, sync

timm = pytest.importorskip("timm")

TARGET = 1.10
ROWS = 8  # network rows per step / per saliency call
STEPS = 4
ROUNDS = 5
FLOORS = 2  # floor samples a round: one is noisy on a shared machine

# bench name -> (timm name, create_model kwargs, input side): the real ones, and their stand-ins.
ZOO = {"resnet50": ("resnet50", {}, 224), "convnext_tiny": ("convnext_tiny", {}, 224),
       "vit_small": ("vit_small_patch16_224", {}, 224), "swin_tiny": ("swin_tiny_patch4_window7_224", {}, 224)}
STAND_INS = {"resnet50": ("resnet18", {}, 64), "convnext_tiny": ("convnext_atto", {}, 64),
             "vit_small": ("vit_tiny_patch16_224", {"img_size": 64}, 64),
             "swin_tiny": ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 64)}
_PICKED = os.environ.get("FASTVIZ_BENCH_ZOO", "").split(",")
NETS = [n for n in ZOO if n in _PICKED or ZOO[n][0] in _PICKED] if any(_PICKED) else list(ZOO)
CLASSES = [285, 967]


@pytest.fixture(scope="session")
def zoo(pytestconfig, device):
    """bench name -> fv.Model, built once per session (random weights, timm's own init)."""
    smoke = pytestconfig.getoption("benchmark_disable") and os.environ.get("FASTVIZ_BENCH_ZOO_FULL") != "1"
    built = {}

    def get(name: str) -> fv.Model:
        if name not in built:
            timm_name, kwargs, side = (STAND_INS if smoke else ZOO)[name]
            torch.manual_seed(0)
            net = timm.create_model(timm_name, pretrained=False, **kwargs).eval().to(device)
            m = fv.Model.from_timm(net)
            built[name] = fv.Model(net, m.mean, m.std, side, m.labels, name=timm_name)
        return built[name]

    return get


def _setting(setting: dict, m: fv.Model) -> dict:
    return {**setting, "model": m.name, "input": list(m.input_size), "rows": ROWS}


def _record(benchmark, setting, m, variant, method_s, floor_s, **extra):
    ratio = method_s / floor_s
    benchmark.extra_info.update(
        _setting(setting, m), variant=variant, **extra,
        ms_per_row=round(method_s / ROWS * 1e3, 2), floor_ms_per_row=round(floor_s / ROWS * 1e3, 2),
        ratio_to_floor=round(ratio, 4), target=TARGET if variant == "default" else None)
    print(f"\n{benchmark.name}: {method_s / ROWS * 1e3:.1f} ms per row, floor {floor_s / ROWS * 1e3:.1f}, "
          f"ratio {ratio:.3f} (target <= {TARGET} for the default)")


CLASS_VARIANTS = [(n, "default") for n in NETS] + [(n, "lower=False") for n in NETS if n == "resnet50"]
SALIENCY_VARIANTS = [(n, "default") for n in NETS] + [(n, "lower=True") for n in NETS if n == "resnet50"]


@pytest.mark.parametrize("net,variant", CLASS_VARIANTS, ids=[f"{n}-{v}" for n, v in CLASS_VARIANTS])
def test_zoo_class_model(benchmark, zoo, floor, setting, device, net, variant):
    m = zoo(net)
    x = torch.rand(ROWS, 3, *m.input_size, generator=torch.Generator().manual_seed(0)).to(device)
    kw = {"lower": False} if variant == "lower=False" else {}
    loop_seconds: list[float] = []

    def run():
        r = fv.class_model(m, CLASSES, steps=STEPS, seed=0, device=device, **kw)
        loop_seconds.append(r.info["loop_seconds"])
        return r

    timing = paired(benchmark, run, lambda: floor(m, x), rounds=ROUNDS, floors_per_round=FLOORS)
    r = timing["fn"]
    rows = len(CLASSES) * r.info["views"]
    assert rows == ROWS, f"the default class model runs {r.info['views']} views per image, not {ROWS // len(CLASSES)}"
    assert r.images.shape[0] == len(CLASSES) and r.history.shape == (STEPS, len(CLASSES))
    assert bool(r.images.isfinite().all()) and float(r.images.std()) > 0  # a picture, not a blank
    step = statistics.median(loop_seconds[-ROUNDS:]) / STEPS
    _record(benchmark, setting, m, variant, step, timing["floor_s"], steps=STEPS,
            param=r.info["param"], views=r.info["views"], lower=r.info["lower"],
            ratio_to_floor_whole_call=round(timing["fn_s"] / STEPS / timing["floor_s"], 4))


@pytest.mark.parametrize("net,variant", SALIENCY_VARIANTS, ids=[f"{n}-{v}" for n, v in SALIENCY_VARIANTS])
def test_zoo_saliency(benchmark, zoo, floor, setting, device, net, variant):
    m = zoo(net)
    x = fv.load_images(list(fv.sample_images().values()), size=m.input_size[0])
    x = x.repeat(-(-ROWS // x.shape[0]), 1, 1, 1)[:ROWS].contiguous().to(device)
    lower = variant == "lower=True"

    def run():
        out = fv.saliency(m, x, lower=lower)
        sync(device)
        return out

    timing = paired(benchmark, run, lambda: floor(m, x), rounds=ROUNDS, floors_per_round=FLOORS)
    out = timing["fn"]
    assert out.shape == (ROWS, *m.input_size) and torch.isfinite(out).all() and out.abs().amax() > 0
    _record(benchmark, setting, m, variant, timing["fn_s"], timing["floor_s"], lower=lower)
