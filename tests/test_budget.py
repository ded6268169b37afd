"""The memory budget (fastviz/budget.py): the setting, the per-network estimate, chunks that
give the unchunked result, refusals before allocation, and the process's peak memory.

The peak test runs every public method that takes rows on a batch that does not fit a 64 MB
budget, in a child process, and compares each result with the same call on a large budget in
this process. torch's CPU allocations are invisible to tracemalloc, so the child reads the
kernel's count: before each call it resets its peak resident set (`/proc/self/clear_refs`, 5)
and notes its resident set (VmRSS); after it, the peak (VmHWM). The growth is what the call
added to the process at its worst moment. The child runs with glibc's default malloc settings
(large blocks are mapped and returned, so memory freed by one call is not counted as free
room for the next), after one warm-up forward + backward that pays torch's one-time set-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz import budget

MB = 2 ** 20
SMALL = 64 * MB
LARGE = 8 * 2 ** 30
# Chunks run the same per-row arithmetic at another batch size: float32 kernels may sum in
# another order there (docs/design.md, rule 12), so results agree to these tolerances, not bits.
RTOL, ATOL = 1e-4, 1e-5
# The child's peak may pass the budget by this much: the allocator's slack and fragmentation,
# the probe's own one-row forward, and the budget's estimate being an estimate.
MARGIN = 48 * MB
SIDE, ROWS = 128, 8


class Wide(nn.Module):
    """32 channels at full resolution: about 17 MB per row forward + backward at 128 x 128, so a
    batch of 8 does not fit 64 MB and must be chunked."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def wide() -> fv.Model:
    torch.manual_seed(0)
    return fv.Model(Wide().eval(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=SIDE,
                    labels=[str(i) for i in range(10)])


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(ROWS, 3, SIDE, SIDE, generator=g), torch.rand(ROWS, SIDE, SIDE, generator=g)


N = fv.Neuron("features.3", 1)
L = "features.3"
# name -> call(model, x, maps): every public method of the hygiene list that takes rows.
CALLS = {
    "predict": lambda m, x, s: fv.predict(m, x, k=3),
    "saliency": lambda m, x, s: fv.saliency(m, x),
    "guided_backprop": lambda m, x, s: fv.guided_backprop(m, x, 3),
    "deconvnet": lambda m, x, s: fv.deconvnet(m, x, list(range(ROWS))),
    "input_x_gradient": lambda m, x, s: fv.input_x_gradient(m, x),
    "gradient": lambda m, x, s: fv.gradient(m, x, torch.arange(ROWS) % 10),
    "neuron_gradient": lambda m, x, s: fv.neuron_gradient(m, x, N, guided=True),
    "gradcam": lambda m, x, s: fv.gradcam(m, x),
    "guided_gradcam": lambda m, x, s: fv.guided_gradcam(m, x, layer=L),
    "layercam": lambda m, x, s: fv.layercam(m, x, 2, layer=L),
    "scorecam": lambda m, x, s: fv.scorecam(m, x[:2], layer=L),
    "smoothgrad": lambda m, x, s: fv.smoothgrad(m, x, n=4),
    "integrated_gradients": lambda m, x, s: fv.integrated_gradients(m, x, points=8),
    "deletion": lambda m, x, s: fv.deletion(m, x, s, points=4),
    "insertion": lambda m, x, s: fv.insertion(m, x, s, points=4, substrate=0.5),
    "road": lambda m, x, s: fv.road(m, x[:2], s[:2], percentiles=[50]),
    "randomization_check": lambda m, x, s: fv.randomization_check(m, x, "saliency", stages=["fc"]),
    "features": lambda m, x, s: fv.features(m, x),
    "embed": lambda m, x, s: fv.embed(m, x, method="pca"),
    "class_model": lambda m, x, s: fv.class_model(m, list(range(ROWS)), steps=2, param="pixel", jitter=0),
    "feature": lambda m, x, s: fv.feature(m, L, list(range(ROWS)), steps=2, param="pixel", jitter=0),
    "neuron": lambda m, x, s: fv.neuron(m, [fv.Neuron(L, c) for c in range(ROWS)], steps=2, param="pixel",
                                        jitter=0),
    "render_objective": lambda m, x, s: fv.render_objective(m, fv.dream(L), ROWS, steps=2, jitter=0),
    "deepdream": lambda m, x, s: fv.deepdream(m, x, L, octaves=1, steps_per_octave=2, jitter=0),
    "invert": lambda m, x, s: fv.invert(m, x, L, steps=2),
    "lrp": lambda m, x, s: fv.lrp(m, x, 3),
    "dataset_examples": lambda m, x, s: fv.dataset_examples(m, x, layer=L, k=3, progress=False),
}
# Public names of the hygiene list that hold no rows to chunk (the filters are the weights).
NO_ROWS = {"filters", "filter_grid", "atlas"}


def _tensors(result) -> dict[str, torch.Tensor]:
    """The tensors of a result, by field, for comparison."""
    if isinstance(result, torch.Tensor):
        return {"": result}
    if isinstance(result, tuple) and not hasattr(result, "__dataclass_fields__"):
        return {str(i): t for i, r in enumerate(result) for t in _tensors(r).values()}
    if isinstance(result, list):
        return {"": torch.tensor([[p for _, _, p in row] for row in result])}
    out = {}
    for k, v in vars(result).items():
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif type(v).__module__ == "numpy" and getattr(v, "dtype", None) is not None and v.dtype.kind == "f":
            out[k] = torch.from_numpy(v)
    return out


def _status(field: str) -> int:
    value = budget.proc_bytes(field)  # the process's VmRSS / VmHWM (Linux)
    if value is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return value


def _child(out: str, nbytes: int) -> None:
    """Run every call under `nbytes`; save the results and each call's growth of the peak
    resident set over the resident set before it."""
    m = wide()
    x, s = inputs()
    fv.saliency(m, torch.rand(1, 3, 16, 16))  # torch's one-time set-up (kernels, thread pool)
    fv.memory_budget(nbytes)
    growth, results = {}, {}
    for name, call in CALLS.items():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        before = _status("VmRSS")
        r = call(m, x, s)
        growth[name] = _status("VmHWM") - before
        results[name] = _tensors(r)
        del r
    torch.save(results, out + ".pt")
    Path(out + ".json").write_text(json.dumps(growth))


def _run_child(tmp_path: Path, nbytes: int) -> tuple[dict, dict]:
    out = str(tmp_path / f"run{nbytes}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["OMP_NUM_THREADS"] = "1"
    # the fastviz under test, whichever checkout this is
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fv.__file__).parents[1]), env.get("PYTHONPATH", "")])
    code = f"import test_budget; test_budget._child({out!r}, {nbytes})"
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out + ".pt"), json.loads(Path(out + ".json").read_text())


# -- the setting ----------------------------------------------------------------------------------
def test_memory_budget_is_a_setting_and_a_with_block():
    before = budget._BUDGET.get()
    with fv.memory_budget(SMALL):
        assert budget.current() == (SMALL, True)
        with fv.memory_budget(2 * SMALL):
            assert budget.current()[0] == 2 * SMALL
        assert budget.current()[0] == SMALL
    assert budget._BUDGET.get() == before
    try:
        fv.memory_budget(3 * SMALL)
        assert budget.current() == (3 * SMALL, True)
    finally:
        fv.memory_budget(None)
    value, set_ = budget.current()
    assert not set_ and value > 0
    for bad in (0, -1, 1.5, "64MB", True, 2 ** 10):
        with pytest.raises(fv.FastvizError, match="^nbytes: "):
            fv.memory_budget(bad)


def test_the_estimate_is_measured_once_per_network_and_shape():
    m = wide()
    calls = []
    m.module.features[0].register_forward_pre_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 3, 64, 64)
    fv.saliency(m, x)
    first = len(calls)
    fv.saliency(m, x)
    fv.saliency(m, torch.rand(5, 3, 64, 64))  # another batch size: the same shape per row
    assert len(calls) == first + 2  # one forward each: no probe again
    fv.saliency(m, torch.rand(1, 3, 48, 48))
    assert len(calls) == first + 2 + 2  # a new shape: one probe, one forward
    assert (3, 64, 64, torch.device("cpu"), torch.float32) in budget._PROFILES[m.module]


def test_one_row_that_cannot_fit_is_refused_before_anything_is_allocated():
    m = wide()
    huge = torch.rand(1, 3, 1, 1).expand(1, 3, 12000, 12000)  # a view: no pixels allocated
    for call in (lambda: fv.saliency(m, huge), lambda: fv.gradcam(m, huge), lambda: fv.predict(m, huge),
                 lambda: fv.smoothgrad(m, huge, n=2), lambda: fv.features(m, huge)):
        with fv.memory_budget(256 * MB), pytest.raises(fv.FastvizError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(("x: ", "images_or_folder: ")), msg
        assert "12000x12000" in msg and "256.0 MB" in msg and "fv.memory_budget" in msg, msg
        assert "resize" in msg or "fewer images" in msg, msg


def test_results_that_cannot_fit_are_refused():
    m = wide()
    many = torch.rand(1, 3, 1, 1).expand(10 ** 4, 3, 224, 224)
    with fv.memory_budget(256 * MB):
        with pytest.raises(fv.FastvizError, match=r"^x: the result, 10000 maps of 224x224, would take 1.9 GB"):
            fv.saliency(m, many)
        with pytest.raises(fv.FastvizError, match=r"^x: the result, 10000 maps of 224x224"):
            fv.gradcam(m, many)
        with pytest.raises(fv.FastvizError, match=r"^paths: the result, 3000 images of 224x224"):
            fv.load_images([fv.sample_images()["coffee"]] * 3000)


def test_chunks_keep_per_row_targets_and_refuse_a_wrong_length():
    m = wide()
    x = torch.rand(5, 3, 64, 64)
    t = [3, 1, 4, 1, 5]
    whole = fv.gradient(m, x, t)
    with fv.memory_budget(int(budget.profile(m, x).row(True) * 1.5) + x.numel() * 4):
        part, used = fv.gradient(m, x, t)  # one row per chunk
    assert used.tolist() == t
    torch.testing.assert_close(part, whole[0], rtol=RTOL, atol=ATOL)
    with fv.memory_budget(SMALL), pytest.raises(fv.FastvizError, match="^target: "):
        fv.gradient(m, x, t + [2])


def test_the_call_list_covers_the_hygiene_list():
    from test_hygiene import CALLS as HYGIENE

    public = {name.split(" ")[0] for name, _ in HYGIENE}
    assert public - NO_ROWS <= set(CALLS), sorted(public - NO_ROWS - set(CALLS))


def test_every_method_chunked_equals_unchunked_and_stays_under_the_budget(tmp_path):
    m = wide()
    x, s = inputs()
    assert budget.profile(m, x).row(True) * ROWS > SMALL  # the batch does not fit in one chunk
    small, peaks = _run_child(tmp_path, SMALL)
    with fv.memory_budget(LARGE):
        for name, call in CALLS.items():
            expected = _tensors(call(m, x, s))
            assert expected.keys() == small[name].keys(), name
            for k, v in expected.items():
                torch.testing.assert_close(small[name][k], v, rtol=RTOL, atol=ATOL, msg=lambda e: f"{name}.{k}: {e}")
    worst = max(peaks, key=peaks.get)
    print(f"largest growth of the peak resident set under a {SMALL // MB} MB budget: "
          f"{peaks[worst] / MB:.1f} MB ({worst})")
    over = {k: round(v / MB, 1) for k, v in peaks.items() if v > SMALL + MARGIN}
    assert not over, f"calls whose peak grew past the budget + margin (MB): {over}"
