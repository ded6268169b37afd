"""Shared benchmark fixtures: the model under test, the sample photos, the floor, the setting.

Every rate in bench/ is judged against its *floor*: one forward and one backward to the input
image with the parameters frozen (inside `fastviz.hooks.session`), truncated at a layer when the
method stops there. The floor is timed in the same run, interleaved round by round with the
method (`paired`), so a change in the machine's load hits both; the ratio of their medians goes
in `extra_info["ratio_to_floor"]` and travels between machines better than a time.

Options (also environment variables, so `fastviz bench` and `make bench` can set them):
    --fastviz-model NAME     FASTVIZ_BENCH_MODEL    efficientnet-lite0 (default), resnet18, ...
    --fastviz-weights W      FASTVIZ_BENCH_WEIGHTS  auto | default | none | a state-dict file
    --fastviz-layer NAME     FASTVIZ_BENCH_LAYER    the layer of the channel objective
    --fastviz-threads N      FASTVIZ_BENCH_THREADS  torch threads (default: 1 when the 1-minute
                             load average says another process is busy, else all cores)

The setting every benchmark records: model, device, torch threads, the glibc malloc thresholds
from the environment and whether `mallopt` raised them at run time (docs/design.md: the default
malloc page-faults large activations afresh each step and can cost +50%).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import pytest
import torch

import fastviz as fv
from fastviz.cli.common import tune_malloc
from fastviz.hooks import session

MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# The layer of the channel-objective benchmark, by model (any layer can be given instead).
CHANNEL_LAYER = {"efficientnet-lite0": "_blocks.10", "resnet18": "layer3", "resnet101": "layer3",
                 "alexnet": "features.8", "vgg16": "features.20", "densenet121": "features.denseblock3"}
MALLOPT = tune_malloc()


def pytest_addoption(parser):
    g = parser.getgroup("fastviz", "fastviz benchmarks")
    g.addoption("--fastviz-model", default=os.environ.get("FASTVIZ_BENCH_MODEL", "efficientnet-lite0"),
                help="model to benchmark (fastviz.load_model name)")
    g.addoption("--fastviz-weights", default=os.environ.get("FASTVIZ_BENCH_WEIGHTS", "auto"),
                help="'auto' (Lite0's packaged weights, random for others: speed does not depend "
                     "on the values), 'default', 'none', or a state-dict file")
    g.addoption("--fastviz-layer", default=os.environ.get("FASTVIZ_BENCH_LAYER"),
                help="layer of the channel objective (default: a middle layer of the model)")
    g.addoption("--fastviz-threads", default=os.environ.get("FASTVIZ_BENCH_THREADS", "auto"),
                help="torch threads: an int, or 'auto' (1 when the machine is loaded)")


def _threads(option: str) -> int:
    cores = os.cpu_count() or 1
    if option != "auto":
        try:
            n = int(option)
        except ValueError:
            raise pytest.UsageError(f"--fastviz-threads: expected an int or 'auto', got {option!r}")
        if n < 1:
            raise pytest.UsageError(f"--fastviz-threads: expected >= 1, got {n}")
        return n
    # Measured here (2 cores): with another process busy, 2 threads made a forward+backward
    # 50x slower (0.09 s -> 4.7 s) while 1 thread stayed steady.
    return 1 if os.getloadavg()[0] >= 0.5 else cores


def pytest_configure(config):
    threads = _threads(config.getoption("--fastviz-threads"))
    torch.set_num_threads(threads)
    config._fastviz_threads = threads


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def model_name(pytestconfig) -> str:
    return pytestconfig.getoption("--fastviz-model")


@pytest.fixture(scope="session")
def model(pytestconfig, model_name, device) -> fv.Model:
    """The model under test (weights "auto": Lite0's ship with it, others start random)."""
    weights = pytestconfig.getoption("--fastviz-weights")
    if weights == "auto":
        weights = "default" if model_name == "efficientnet-lite0" else "none"
    return fv.load_model(model_name, weights=None if weights == "none" else weights, device=device)


@pytest.fixture(scope="session")
def channel_layer(pytestconfig, model_name, model) -> str:
    layer = pytestconfig.getoption("--fastviz-layer") or CHANNEL_LAYER.get(model_name)
    if layer is None:
        pytest.skip(f"no default channel layer for {model_name}: pass --fastviz-layer")
    model.layer(layer)
    return layer


@pytest.fixture(scope="session")
def photos(model, device) -> torch.Tensor:
    """(8, 3, S, S) sample photos in [0, 1] at the model's input size (repeated to 8 rows)."""
    size = model.input_size[0] if model.input_size else 224
    x = fv.load_images(list(fv.sample_images().values()), size=size)
    return x.repeat(-(-8 // x.shape[0]), 1, 1, 1)[:8].contiguous().to(device)


@pytest.fixture(scope="session")
def setting(pytestconfig, model_name, device) -> dict:
    """What every benchmark records in extra_info: the numbers mean nothing without it."""
    return {
        "model": model_name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": pytestconfig._fastviz_threads,
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_VARS},
        "mallopt": MALLOPT,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="session")
def floor(device) -> Callable:
    """floor(model, x, layer=None): forward + backward to the input, parameters frozen.

    Truncated at `layer` when given (the forward stops there; backward from the activation's
    sum), as fastviz's own methods do (docs/design.md, rule 4).
    """

    def run(model: fv.Model, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        with session(model) as s:
            xi = x.detach().requires_grad_(True)
            if layer is None:
                out = model(xi)
            else:
                acts, _ = s.forward(xi, [layer])
                out = acts[layer]
            (g,) = torch.autograd.grad(out.sum(), xi)
        sync(device)
        return g

    return run


def timed(fn: Callable, times: list[float]) -> Callable:
    """fn, appending each call's seconds to `times` (the fallback of `median_seconds`)."""

    def call(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
        return out

    return call


def median_seconds(benchmark, times: list[float]) -> float:
    """The benchmark's median; under `--benchmark-disable` (a smoke run: pytest-benchmark calls
    the function once and keeps no stats) the median of our own `timed` record."""
    if benchmark.stats is not None:
        return benchmark.stats.stats.median
    return statistics.median(times)


def paired(benchmark, fn: Callable, floor_fn: Callable, *, rounds: int, warmup: int = 1,
           floors_per_round: int = 1) -> dict:
    """Time `fn` with pytest-benchmark and `floor_fn` in between, `floors_per_round` calls a round.

    The floor runs in pytest-benchmark's untimed `setup` before each timed call, so the two
    alternate and share the machine's state; its own times are kept here. On a shared machine
    one floor sample a round is noisy: loops that run several steps a round take more.

    Returns:
        {"fn": result of the last call, "floor_s": median floor seconds, "floor_times": [...],
        "fn_s": median seconds of fn (pytest-benchmark's, or our own under --benchmark-disable)}.
    """
    for _ in range(warmup):  # one-time layer checks, allocator growth, first-call costs
        floor_fn()
        fn()
    floor_times: list[float] = []

    def setup():
        for _ in range(floors_per_round):
            t = time.perf_counter()
            floor_fn()
            floor_times.append(time.perf_counter() - t)

    fn_times: list[float] = []
    result = benchmark.pedantic(timed(fn, fn_times), setup=setup, rounds=rounds, iterations=1)
    return {"fn": result, "floor_s": statistics.median(floor_times), "floor_times": floor_times,
            "fn_s": median_seconds(benchmark, fn_times)}
