"""Property-based test of the public boundary (hypothesis), over tests/fuzz_cases.py.

- Generated bad arguments (one argument bad, the rest good) must raise `FastvizError` whose
  message names the argument, and the network must come back unchanged (rule 1: hooks,
  modules, inplace, training, requires_grad, gradients, parameter storage and device).
- Generated good arguments must run and give outputs of the documented shapes.

Profiles: the default ("fast", a few examples per argument, under a minute on a shared CPU);
`FASTVIZ_FUZZ=thorough` (100 examples per argument) or any count `FASTVIZ_FUZZ=500`.
`FASTVIZ_FUZZ_REPORT=path.json` writes the tallies behind docs/reliability.md's table.
"""

from __future__ import annotations

import atexit
import json
import os
import re
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastviz as fv
from fuzz_cases import CASES, CLASSES, LAYER, SIZE, VALUE, Case, tiny_model

_PROFILE = os.environ.get("FASTVIZ_FUZZ", "fast")
EXAMPLES = {"fast": 4, "thorough": 100}.get(_PROFILE) or int(_PROFILE)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=_PROFILE == "fast", database=None,
                suppress_health_check=list(HealthCheck))

# function -> {"calls", "kinds", "other_errors", "leaks"}: the report
TALLY: dict = defaultdict(lambda: {"calls": 0, "kinds": set(), "arguments": set(), "other_errors": 0, "leaks": 0})


def _write_report():
    path = os.environ.get("FASTVIZ_FUZZ_REPORT")
    if path and TALLY:
        out = {f: {**t, "kinds": sorted(t["kinds"]), "arguments": sorted(t["arguments"])} for f, t in TALLY.items()}
        with open(path, "w") as fh:
            json.dump({"examples_per_argument": EXAMPLES, "functions": out}, fh, indent=1, sort_keys=True)


atexit.register(_write_report)


class State:
    """Everything rule 1 promises, plus the parameters' identity, storage, device and values."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.before = self.take()

    def take(self):
        mods = list(self.module.named_modules())
        return {
            "modules": [(n, id(m)) for n, m in mods],
            "inplace": [(n, m.inplace) for n, m in mods if isinstance(getattr(m, "inplace", None), bool)],
            "training": [(n, m.training) for n, m in mods],
            "hooks": [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                       len(m._backward_pre_hooks)) for n, m in mods],
            "params": [(n, id(p), p.requires_grad, p.grad is None, p.device.type, p.data_ptr(),
                        float(p.detach().double().sum())) for n, p in self.module.named_parameters()],
            "buffers": [(n, b.device.type, b.data_ptr()) for n, b in self.module.named_buffers()],
        }

    def changed(self) -> list[str]:
        now = self.take()
        return [k for k, v in self.before.items() if now[k] != v]


_MODEL = tiny_model()


def _names(case: Case, value) -> tuple[str, ...]:
    if case.name == VALUE:
        return (str(value),)
    if isinstance(case.name, tuple):
        return case.name
    return (case.name or case.argument,)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.function}-{c.argument}" for c in CASES])
@FUZZ
@given(data=st.data())
def test_bad_argument_raises_fastviz_error_naming_it(case: Case, data):
    value = data.draw(case.bad, label=case.argument)
    state = State(_MODEL.module)
    tally = TALLY[case.function]
    tally["calls"] += 1
    tally["kinds"].add(case.kind)
    tally["arguments"].add(case.argument)
    try:
        case.call(_MODEL, value)
    except fv.FastvizError as e:
        message = str(e)
        names = _names(case, value)
        assert any(n.lower() in message.lower() for n in names), \
            f"{case.function}({case.argument}={value!r:.80}): message does not name {names}: {message}"
    except Exception as e:
        tally["other_errors"] += 1
        raise AssertionError(f"{case.function}({case.argument}={value!r:.80}) raised "
                             f"{type(e).__name__}: {e}") from e
    else:
        raise AssertionError(f"{case.function}({case.argument}={value!r:.80}) was accepted")
    finally:
        leaks = state.changed()
        if leaks:
            tally["leaks"] += 1
        assert not leaks, f"{case.function}({case.argument}={value!r:.80}) changed the model: {leaks}"


# -- good arguments run ------------------------------------------------------------------------
ints = st.one_of(st.integers(0, CLASSES - 1), st.integers(0, CLASSES - 1).map(np.int64),
                 st.integers(0, CLASSES - 1).map(torch.tensor))
images = st.tuples(st.integers(1, 3), st.integers(8, 20), st.integers(8, 20),
                   st.sampled_from(["float32", "float64", "float16", "uint8", "channels_last", "strided"]))


def _make_images(spec, seed: int) -> torch.Tensor:
    b, h, w, kind = spec
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    if kind == "uint8":
        return (x * 255).to(torch.uint8)
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        return torch.rand(b, 3, h, 2 * w, generator=torch.Generator().manual_seed(seed))[..., ::2]
    return x.to(getattr(torch, kind))


@FUZZ
@given(spec=images, target=st.one_of(st.none(), ints), seed=st.integers(0, 2 ** 62))
def test_good_attribution_arguments_run(spec, target, seed):
    x = _make_images(spec, seed % 1000)
    b, h, w = spec[0], spec[1], spec[2]
    state = State(_MODEL.module)
    assert fv.saliency(_MODEL, x, target).shape == (b, h, w)
    assert fv.gradcam(_MODEL, x, target, layer=LAYER).shape == (b, h, w)
    assert fv.smoothgrad(_MODEL, x, target, n=2, seed=seed).shape == (b, h, w)
    r = fv.integrated_gradients(_MODEL, x, target, points=2, method="riemann_left")
    assert r.attributions.shape == (b, 3, h, w) and bool(r.attributions.isfinite().all())
    assert len(fv.predict(_MODEL, x, k=2)) == b
    assert not state.changed()


@FUZZ
@given(classes=st.lists(ints, min_size=1, max_size=3), steps=st.integers(1, 3), seed=st.integers(0, 2 ** 63 - 1),
       lr=st.floats(1e-4, 1.0), size=st.one_of(st.none(), st.integers(8, 20)), jitter=st.integers(0, 3),
       batch_size=st.one_of(st.none(), st.integers(1, 3)))
def test_good_synthesis_arguments_run(classes, steps, seed, lr, size, jitter, batch_size):
    state = State(_MODEL.module)
    r = fv.class_model(_MODEL, classes, steps=steps, seed=seed, lr=lr, size=size, jitter=jitter,
                       batch_size=batch_size)
    side = size or SIZE
    assert r.images.shape == (len(classes), 3, side, side) and r.history.shape == (steps, len(classes))
    assert bool(r.images.isfinite().all()) and 0 <= float(r.images.min()) and float(r.images.max()) <= 1
    assert not state.changed()


def test_the_table_covers_the_public_api():
    """Every public callable has at least one bad-argument case (the docs table lists them)."""
    covered = {c.function.split(" ")[0] for c in CASES}
    public = {n for n in fv.__all__ if callable(getattr(fv, n)) and not isinstance(getattr(fv, n), type)
              or n in ("Model", "Neuron", "Yosinski")}
    exempt = {"sample_images", "imagenet_labels", "IGResult", "Render", "FastvizError", "Embedding", "neurons"}
    missing = sorted(public - covered - exempt)
    assert not missing, f"no fuzz case for {missing}"
    assert re.fullmatch(r"\d+", str(EXAMPLES))
