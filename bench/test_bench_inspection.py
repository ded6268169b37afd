"""Feature extraction for embeddings: images per second at batch 32, against a whole forward.

Run: .venv/bin/python -m pytest bench/test_bench_inspection.py --benchmark-only -s

The three benchmarks run in one session on the same batch: the whole forward (no_grad, what a
naive embedding does), `features` at the default layer (the classifier's input: it skips only
the final Linear, so the ratio is about 1), and `features` at `_blocks.10` (stopping early
shows). On CUDA (when present) the whole forward is synchronised per call, as `features`
is by its copy to the host. Each feature benchmark records its rate and its ratio to the whole forward in
`extra_info`. glibc malloc thresholds are raised as the CLI does (docs/design.md: benchmarks say which).
"""

from __future__ import annotations

import pytest
import torch

import fastviz as fv
from fastviz.cli.common import tune_malloc
from fastviz.inspection import features
from conftest import median_seconds, timed

BATCH = 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS = 30 if DEVICE == "cuda" else 3  # the CPU: 32 images ~0.4 s a forward
_rates: dict[str, float] = {}
_times: dict[str, list[float]] = {}  # our own call times: the medians under --benchmark-disable


@pytest.fixture(scope="module")
def setting():
    return {"malloc_tuned": tune_malloc(), "threads": torch.get_num_threads(), "batch": BATCH,
            "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"}


@pytest.fixture(scope="module")
def model():
    return fv.load_model(device=DEVICE)


@pytest.fixture(scope="module")
def batch(model):
    from fastviz.demo_data import demo_set

    return demo_set(per_photo=5).images[:BATCH].to(model.device)


def _record(benchmark, name, setting):
    rate = BATCH / median_seconds(benchmark, _times[benchmark.name])
    _rates[name] = rate
    benchmark.extra_info.update(setting, images_per_s=round(rate, 2))
    return rate


def test_whole_forward(benchmark, model, batch, setting):
    def run():
        with torch.no_grad():
            logits = model(batch)
        if DEVICE == "cuda":  # features() ends with a copy to the host, which waits too
            torch.cuda.synchronize()
        return logits

    logits = benchmark.pedantic(timed(run, _times.setdefault(benchmark.name, [])), rounds=ROUNDS,
                                iterations=1, warmup_rounds=1)
    assert logits.shape == (BATCH, 1000) and bool(logits.isfinite().all())
    _record(benchmark, "whole_forward", setting)


@pytest.mark.parametrize("layer", [None, "_blocks.10"], ids=["classifier_input", "blocks10"])
def test_features(benchmark, model, batch, setting, layer):
    features(model, batch[:1], layer=layer)  # one-time layer checks outside the timing
    out = benchmark.pedantic(timed(lambda: features(model, batch, layer=layer, batch_size=BATCH),
                                   _times.setdefault(benchmark.name, [])),
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out.features.shape[0] == BATCH and bool(out.features.isfinite().all())
    assert float(out.features.std()) > 0
    rate = _record(benchmark, f"features_{layer}", setting)
    whole = _rates.get("whole_forward")
    if whole is not None:  # absent when this test runs alone
        benchmark.extra_info["ratio_to_whole_forward"] = round(rate / whole, 3)
        print(f"\nfeatures at {layer or 'classifier input'}: {rate:.1f} images/s, "
              f"whole forward {whole:.1f} images/s, ratio {rate / whole:.2f}")
