"""The loop's settings (fastviz/settings.py): checked once, frozen, every bad value named."""

import dataclasses

import pytest

import fastviz as fv
from fastviz.regularizers import NONE
from fastviz.settings import Settings, loop_settings


def test_defaults_and_frozen():
    s = loop_settings(4, 10)
    assert s == Settings(steps=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0
    assert s.replace(seed=3, step_offset=20) == Settings(steps=10, seed=3, step_offset=20)


@pytest.mark.parametrize("name, value", [
    ("lr", 0), ("lr", -1.0), ("optimizer", "lbfgs"), ("l2", -1), ("jitter", -1), ("backend", "xla"),
    ("impl", "cuda"), ("amp", 1), ("lower", "yes"), ("seed", -1), ("snapshot_every", 0),
    ("progress_every", 0), ("step_offset", -2), ("reg", "yosinski"), ("transforms", "lucent"),
])
def test_each_bad_value_is_named(name, value):
    with pytest.raises(fv.FastvizError, match=name):
        loop_settings(1, 5, **{name: value})


def test_unknown_names_and_oversized_history_are_refused():
    with pytest.raises(fv.FastvizError, match="learning_rate: not an argument"):
        loop_settings(1, 5, learning_rate=0.1)
    with pytest.raises(fv.FastvizError, match="steps"):
        loop_settings(10 ** 6, 10 ** 4)
    with pytest.raises(fv.FastvizError, match="steps"):
        loop_settings(1, 0)


def test_the_yosinski_step_is_for_pixels():
    assert loop_settings(1, 5, param="pixel", reg=fv.Yosinski()).reg == fv.Yosinski()
    assert loop_settings(1, 5, param="maco", reg=NONE).reg == NONE
    with pytest.raises(fv.FastvizError, match="reg"):
        loop_settings(1, 5, param="maco", reg=fv.Yosinski())
