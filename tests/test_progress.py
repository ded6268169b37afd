"""The progress protocol (fastviz/progress.py) and its use by a synthesis call."""

import pytest

import fastviz as fv
from fastviz.progress import reporter
from tiny_net import tiny


def test_callable_gets_done_and_total():
    calls = []
    with reporter(calls.append and (lambda d, t: calls.append((d, t))), 10) as rep:
        rep.update(3)
        rep.update(10)
    assert calls == [(3, 10), (10, 10)]


def test_a_bar_counts_to_total(capsys):
    with reporter(True, 8, unit="step", desc="render") as rep:
        rep.update(5)
        assert rep.bar.n == 5
        rep.update(8)
    assert "render" in capsys.readouterr().err


def test_silent_forms_do_nothing():
    for p in (None, False):
        with reporter(p, 4) as rep:
            rep.update(4)
        assert rep.bar is None and rep.callback is None


def test_synthesis_reports_over_all_batches_and_refuses_a_bad_progress():
    calls = []
    fv.class_model(tiny(), [1, 2, 3], steps=2, batch_size=2, param="pixel", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    fv.class_model(tiny(), [1], steps=2, param="pixel", progress=True)
    with pytest.raises(fv.FastvizError, match="progress"):
        fv.class_model(tiny(), [1], steps=2, progress="yes")
