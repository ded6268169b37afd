"""Synthesis loops: steps per second of class models and of a channel objective, beside the floor.

Each round is one call rendering STEPS steps (a multiple of the default blur period, 4, so the
mix of blurring and plain steps is the long-run one) with the full default regularizer,
`fv.Yosinski()`. The floor (bench/conftest.py) runs 3 times between rounds, in the same test:
- class models: forward + backward to the image through the whole network;
- channel objective: the same, truncated at the layer (the forward stops there, as the loop's).

Recorded in extra_info, per benchmark:
- steps_per_s: STEPS / median time of the whole call (setup, one validating forward, the loop,
  the copy of the images to the host);
- loop_steps_per_s: from `Render.info["loop_seconds"]`, the loop alone, which is what a 200-step
  render spends its time in;
- ratio_to_floor: loop time per step / floor time, and ratio_to_floor_whole_call: the same
  with the whole call.

Each loop runs in three variants (`variant` in extra_info), all beside the same eager floor:
- "eager": `lower=False`, the network as loaded (target <= 1.05);
- "lowered": the default, `fastviz.lower` (BN folded, channels_last; target on the CPU <= 0.80
  at batch 1 and <= 0.60 at batch 8, fp32);
- "lowered-bf16": the same with `amp=True` (bf16 autocast). Skipped on a CPU without native
  bf16 (oneDNN's check; an AVX2-only CPU emulates it at ~12x the fp32 floor, so one batch-8 run
  takes half an hour) unless FASTVIZ_BENCH_BF16=1.

    .venv/bin/python -m pytest bench/test_bench_render.py --benchmark-only \
        --benchmark-columns=median,iqr,ops

FASTVIZ_BENCH_BATCHES=1,2,4,8,16 sweeps more batch sizes (bench/plot_its_vs_batch.py plots a
--benchmark-json of that run).
"""

from __future__ import annotations

import os
import statistics

import pytest

import fastviz as fv
from conftest import paired

STEPS = 8
TARGET = 1.05
VARIANTS = {"eager": {"lower": False}, "lowered": {}, "lowered-bf16": {"amp": True}}


def _skip_emulated_bf16(variant: str, device) -> None:
    if variant.endswith("bf16") and device.type == "cpu" and os.environ.get("FASTVIZ_BENCH_BF16") != "1":
        import torch

        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            pytest.skip("this CPU has no native bf16 (set FASTVIZ_BENCH_BF16=1 to time it anyway)")


def _target(variant: str, batch: int) -> float:
    if variant == "eager":
        return TARGET
    return 0.80 if batch < 8 else 0.60
BATCHES = [int(b) for b in os.environ.get("FASTVIZ_BENCH_BATCHES", "1,8").split(",")]
CLASSES = [1, 130, 285, 980, 967, 20, 340, 504, 417, 945, 309, 99, 817, 71, 948, 530]


def _rounds(batch: int) -> int:
    return 7 if batch <= 2 else 5


def _render_bench(benchmark, setting, render_fn, floor_fn, batch, variant="eager", **extra):
    loop_seconds: list[float] = []

    def run():
        r = render_fn()
        loop_seconds.append(r.info["loop_seconds"])
        return r

    timing = paired(benchmark, run, floor_fn, rounds=_rounds(batch), floors_per_round=3)
    r = timing["fn"]
    assert r.images.shape[0] == batch and r.history.shape == (STEPS, batch)
    assert r.info["backend"] == "eager" or r.info["device"].startswith("cuda")
    assert bool(r.images.isfinite().all()) and float(r.images.std()) > 0  # a picture, not a blank
    loop_step = statistics.median(loop_seconds[-_rounds(batch):]) / STEPS
    call_step = timing["fn_s"] / STEPS
    fl = timing["floor_s"]
    ratio = loop_step / fl
    target = _target(variant, batch)
    benchmark.extra_info.update(
        setting, **extra, batch=batch, variant=variant, lower=r.info.get("lower"), steps=STEPS, regularizer=repr(fv.Yosinski()),
        steps_per_s=round(1 / call_step, 3), loop_steps_per_s=round(1 / loop_step, 3),
        image_steps_per_s=round(batch / loop_step, 3), floor_per_s=round(1 / fl, 3),
        floor_ms=round(fl * 1e3, 2), loop_ms_per_step=round(loop_step * 1e3, 2),
        ratio_to_floor=round(ratio, 4), ratio_to_floor_whole_call=round(call_step / fl, 4),
        target=target)
    print(f"\n{benchmark.name}: {1 / loop_step:.3f} steps/s in the loop ({1 / call_step:.3f} whole call), "
          f"floor {1 / fl:.3f}/s, ratio {ratio:.3f} (whole call {call_step / fl:.3f}; target <= {target})")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", BATCHES)
def test_class_model(benchmark, model, floor, setting, device, batch, variant):
    _skip_emulated_bf16(variant, device)
    classes = CLASSES[:batch]
    x = fv.load_images(list(fv.sample_images().values())[:1]).repeat(batch, 1, 1, 1).to(device)
    _render_bench(
        benchmark, setting,
        lambda: fv.class_model(model, classes, steps=STEPS, seed=0, device=device, param="pixel",
                               reg=fv.Yosinski(), **VARIANTS[variant]),
        lambda: floor(model, x), batch, variant, objective="class score")


@pytest.mark.parametrize("batch", BATCHES[:1])
def test_class_model_maco(benchmark, model, floor, setting, device, batch):
    """The default class model: phase leaf + 4 crops, so 4 network rows per image; the floor is
    that of 4 * batch rows (target: <= 1.10x)."""
    classes = CLASSES[:batch]
    x = fv.load_images(list(fv.sample_images().values())[:1]).repeat(4 * batch, 1, 1, 1).to(device)
    _render_bench(
        benchmark, setting,
        lambda: fv.class_model(model, classes, steps=STEPS, seed=0, device=device),
        lambda: floor(model, x), batch, objective="class score, maco, 4 views")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", [b for b in BATCHES if b in (1, 8)] or BATCHES[:1])
def test_channel(benchmark, model, floor, setting, device, channel_layer, batch, variant):
    _skip_emulated_bf16(variant, device)
    x = fv.load_images(list(fv.sample_images().values())[:1]).repeat(batch, 1, 1, 1).to(device)
    _render_bench(
        benchmark, setting,
        lambda: fv.feature(model, channel_layer, channels=range(batch), steps=STEPS, seed=0, device=device,
                           param="pixel", reg=fv.Yosinski(), **VARIANTS[variant]),
        lambda: floor(model, x, channel_layer), batch, variant, objective=f"channel mean of {channel_layer}",
        layer=channel_layer)
