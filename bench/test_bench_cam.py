"""Time per image of the CAM family, SmoothGrad and IG beside the floor, measured in the same run.

floor = one forward + one backward to the input, parameters frozen, at the same batch size.
Each method's extra_info holds `ms_per_image` and `ratio` (time per image / the floor it is
judged against: 1 floor for Grad-CAM / LayerCAM, 2 for guided Grad-CAM (two passes), n floors
for SmoothGrad, steps floors for IG, K forward-only floors for Score-CAM with K channels).

Sizes: FASTVIZ_BENCH_BATCH images (default 8 on CUDA, 2 on the CPU, where IG n=50 at batch 8
is 400 gradient evaluations, ~10 s a round); SmoothGrad and IG rows run in chunks of
5 x batch (n=25 -> 5 chunks, n=50 -> 10 chunks), the floor for them is taken at that chunk size.
Score-CAM uses `_blocks.15` (320 channels) on CUDA, `_blocks.0` (16) on the CPU.

    MALLOC_MMAP_THRESHOLD_=536870912 MALLOC_TRIM_THRESHOLD_=1073741824 \
        python -m pytest bench/test_bench_cam.py --benchmark-only --benchmark-columns=median,iqr
"""

from __future__ import annotations

import os

import pytest
import torch

import fastviz as fv
from fastviz.averaged import integrated_gradients, smoothgrad
from fastviz.cam import gradcam, guided_gradcam, layercam, scorecam
from fastviz.hooks import session
from conftest import median_seconds, timed

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = int(os.environ.get("FASTVIZ_BENCH_BATCH", 8 if DEVICE.type == "cuda" else 2))
CHUNK = 5 * BATCH
SCORECAM_LAYER = "_blocks.15" if DEVICE.type == "cuda" else "_blocks.0"
ROUNDS = 3 if DEVICE.type == "cuda" else 1
FLOORS: dict[str, float] = {}
TIMES: dict[str, list[float]] = {}  # our own call times: the medians under --benchmark-disable


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def model():
    return fv.load_model(device=DEVICE)


@pytest.fixture(scope="module")
def images():
    photos = fv.sample_images()
    x = fv.load_images(list(photos.values()))
    return x.repeat(-(-CHUNK // x.shape[0]), 1, 1, 1)[:CHUNK].to(DEVICE)


def floor(model, x):
    with session(model):
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi).amax(1).sum(), xi)
    sync()
    return g


@torch.no_grad()
def forward_floor(model, x):
    with session(model):
        y = model(x)
    sync()
    return y


def run(benchmark, fn, *args, **kwargs):
    def call():
        out = fn(*args, **kwargs)
        sync()
        return out

    call()  # warm-up: one-time layer checks, allocator, cuDNN choices
    times = TIMES[benchmark.name] = []
    out = benchmark.pedantic(timed(call, times), rounds=ROUNDS, iterations=1)
    maps = out.attributions if isinstance(out, fv.IGResult) else out
    assert bool(torch.isfinite(maps).all()) and float(maps.abs().amax()) > 0, "an empty or broken map"
    return out


def seconds(benchmark) -> float:
    return median_seconds(benchmark, TIMES[benchmark.name])


def record(benchmark, images: int, against: float, floors: float):
    ms = seconds(benchmark) / images * 1e3
    benchmark.extra_info.update(ms_per_image=round(ms, 3), device=str(DEVICE), batch=BATCH,
                                floor_ms_per_image=round(against, 3), floors=floors,
                                ratio=round(ms / (against * floors), 3))


@pytest.mark.parametrize("rows", ["batch", "chunk"])
def test_floor(benchmark, model, images, rows):
    x = images[:BATCH] if rows == "batch" else images
    run(benchmark, floor, model, x)
    FLOORS[rows] = seconds(benchmark) / x.shape[0] * 1e3
    benchmark.extra_info.update(ms_per_image=round(FLOORS[rows], 3), rows=x.shape[0], device=str(DEVICE))


def test_forward_floor(benchmark, model, images):
    run(benchmark, forward_floor, model, images)
    FLOORS["forward"] = seconds(benchmark) / images.shape[0] * 1e3
    benchmark.extra_info.update(ms_per_image=round(FLOORS["forward"], 3), rows=images.shape[0])


@pytest.mark.parametrize("method, floors", [(gradcam, 1), (layercam, 1), (guided_gradcam, 2)],
                         ids=["gradcam", "layercam", "guided_gradcam"])
def test_cam(benchmark, model, images, method, floors):
    run(benchmark, method, model, images[:BATCH])
    record(benchmark, BATCH, FLOORS["batch"], floors)


def test_scorecam(benchmark, model, images):
    x = images[:BATCH]
    channels = dict(model.module.named_modules())[SCORECAM_LAYER]._bn2.num_features
    run(benchmark, scorecam, model, x, layer=SCORECAM_LAYER, batch_size=CHUNK)
    record(benchmark, BATCH, FLOORS["forward"], channels)
    benchmark.extra_info["layer"] = SCORECAM_LAYER


def test_smoothgrad_n25(benchmark, model, images):
    run(benchmark, smoothgrad, model, images[:BATCH], n=25, batch_size=CHUNK, seed=0)
    record(benchmark, BATCH, FLOORS["chunk"], 25)


def test_ig_n50(benchmark, model, images):
    r = run(benchmark, integrated_gradients, model, images[:BATCH], points=50, batch_size=CHUNK)
    record(benchmark, BATCH, FLOORS["chunk"], 50)
    rel = (r.completeness_error / r.score_difference.abs()).tolist()
    benchmark.extra_info["completeness_relative"] = [round(v, 4) for v in rel]
