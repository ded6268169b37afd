"""The regression workflow of `fastviz bench`: save a baseline, catch a planted slowdown.

The real suite takes minutes, so these tests run `fastviz bench` on a tiny benchmark file
written into tmp_path: saliency and guided backprop of a 2-layer network on a 16x16 image
(about a millisecond a call). The slowdown is planted in one method only, through an
environment variable the child pytest process reads: `fv.saliency` sleeps 20 ms a call,
about 20x its own time, so a generous threshold (200%) still catches it on a loaded machine
while the unchanged run passes.
"""

from __future__ import annotations

import argparse
import json
import textwrap

import pytest

from fastviz import FastvizError
from fastviz.cli import main
from fastviz.cli.benchmark import find_run, pytest_command

TINY_BENCH = textwrap.dedent('''
    import os
    import time

    import pytest
    import torch
    from torch import nn

    import fastviz as fv

    torch.set_num_threads(1)
    PLANTED = float(os.environ.get("FASTVIZ_TEST_PLANTED_SLEEP", "0"))
    if PLANTED:
        _saliency = fv.saliency

        def slowed_saliency(*args, **kwargs):
            time.sleep(PLANTED)
            return _saliency(*args, **kwargs)

        fv.saliency = slowed_saliency


    @pytest.fixture(scope="module")
    def tiny():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 3))
        return fv.Model(net, mean=(0.5,) * 3, std=(0.5,) * 3), torch.rand(1, 3, 16, 16)


    @pytest.mark.parametrize("method", ["saliency", "guided_backprop"])
    def test_tiny(benchmark, tiny, method):
        model, x = tiny
        fn = getattr(fv, method)
        benchmark.pedantic(fn, args=(model, x), rounds=40, iterations=1, warmup_rounds=2)
''')


@pytest.fixture
def tiny_suite(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "test_tiny_bench.py").write_text(TINY_BENCH)
    return bench, tmp_path / "store"


def _bench(capfd, bench, store, *args) -> tuple[int, str]:
    rc = main(["bench", "--bench-dir", str(bench), "--storage", str(store), "--threads", "1", *args])
    out, err = capfd.readouterr()
    return rc, out + err


def test_compare_catches_planted_slowdown_and_passes_without(tiny_suite, capfd, monkeypatch):
    bench, store = tiny_suite
    monkeypatch.delenv("FASTVIZ_TEST_PLANTED_SLEEP", raising=False)
    rc, out = _bench(capfd, bench, store, "--save", "base")
    assert rc == 0, out
    (saved,) = store.glob("*/0001_base.json")
    assert {b["name"] for b in json.loads(saved.read_text())["benchmarks"]} == {
        "test_tiny[saliency]", "test_tiny[guided_backprop]"}

    monkeypatch.setenv("FASTVIZ_TEST_PLANTED_SLEEP", "0.02")
    rc, out = _bench(capfd, bench, store, "--compare", "base", "--threshold", "200")
    assert rc != 0, out
    assert "Performance has regressed" in out
    regressed = out.split("Performance has regressed", 1)[1]
    assert "test_tiny[saliency]" in regressed and "guided_backprop" not in regressed

    monkeypatch.delenv("FASTVIZ_TEST_PLANTED_SLEEP")
    rc, out = _bench(capfd, bench, store, "--compare", "base", "--threshold", "200")
    assert rc == 0, out
    assert "Performance has regressed" not in out


def test_compare_unknown_name_lists_saved_runs(tmp_path):
    run = tmp_path / "Linux-CPython-3.11-64bit"
    run.mkdir(parents=True)
    (run / "0001_base.json").write_text("{}")
    (run / "0002_base.json").write_text("{}")
    (run / "0003_after.json").write_text("{}")
    assert find_run(tmp_path, "base").name == "0002_base.json"  # the latest of that name
    assert find_run(tmp_path, "0001").name == "0001_base.json"
    with pytest.raises(FastvizError, match="no run saved as 'nope'.*after, base"):
        find_run(tmp_path, "nope")


def _args(**kw):
    base = dict(bench_dir=None, threshold=10.0, storage=".benchmarks", save=None, compare=None,
                json=None, pytest_args=[], model="resnet18", weights="none", threads="1", layer="layer2")
    base.update(kw)
    return argparse.Namespace(**base)


def test_command_passes_model_and_threshold(tmp_path):
    (tmp_path / "s" / "m").mkdir(parents=True)
    (tmp_path / "s" / "m" / "0001_base.json").write_text("{}")
    cmd, env = pytest_command(_args(bench_dir=str(tmp_path), storage=str(tmp_path / "s"),
                                    save="new", compare="base", threshold=5.0, pytest_args=["-k", "x"]))
    assert "--benchmark-save=new" in cmd and "--benchmark-compare-fail=median:5%" in cmd
    assert any(c.startswith("--benchmark-compare=") and c.endswith("0001_base.json") for c in cmd)
    assert cmd[-2:] == ["-k", "x"]
    assert env["FASTVIZ_BENCH_MODEL"] == "resnet18" and env["FASTVIZ_BENCH_LAYER"] == "layer2"
    assert env["MALLOC_MMAP_THRESHOLD_"]


@pytest.mark.parametrize("kw, match", [({"bench_dir": "/no/such/dir"}, "--bench-dir"),
                                       ({"threshold": 0.0}, "--threshold")])
def test_bad_arguments(tmp_path, kw, match):
    kw.setdefault("bench_dir", str(tmp_path))
    with pytest.raises(FastvizError, match=match):
        pytest_command(_args(**kw))
