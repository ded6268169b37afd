"""The synthesis engine (fastviz/engine.py): handed a Param, an Objective and Settings, it asks
none of them what it is; one step is forward, backward to the leaf only, direction, update."""

import pytest
import torch

import fastviz as fv
from fastviz import engine
from fastviz.objectives import ClassScore
from fastviz.param import Param, make_param
from fastviz.settings import Settings
from tiny_net import tiny


class Tanh(Param):
    """A parameterisation the engine has never heard of: image = (tanh(leaf) + 1) / 2."""

    name = "tanh"

    def __init__(self, start: torch.Tensor):
        self.start = start
        self.leaf = start.clone().requires_grad_(True)

    def image(self) -> torch.Tensor:
        return (torch.tanh(self.leaf) + 1) / 2


def test_any_param_runs_and_raises_its_objective():
    m = tiny()
    p = Tanh(0.1 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    r = engine.run(m, ClassScore([1, 3]), p, Settings(steps=30, lr=0.1, lower=False))
    assert r.images.shape == (2, 3, 32, 32) and r.info["param"] == "tanh"
    assert bool((r.history[-1] > r.history[0]).all()), r.history[[0, -1]]
    # The leaf moved; the network's parameters got no gradient (docs/design.md, rule 2).
    assert not torch.equal(p.leaf.detach(), p.start)
    assert all(q.grad is None for q in m.module.parameters())


def test_the_engine_never_asks_which_param_it_holds():
    src = open(engine.__file__).read()
    for name in ("Pixel", "FFT", "Maco", "isinstance"):
        assert name not in src, name


def test_lowered_and_as_is_give_the_same_first_step():
    """lower=True runs the lowered copy (BN folded, fused activations): same maths, so one plain
    SGD step moves the image the same up to rounding (BN folding reorders sums: 1e-5 relative)."""
    m = tiny()
    runs = []
    for lower in (True, False):
        p = make_param("pixel", 2, (32, 32), seed=1, init="noise", mean=m.mean_tensor(torch.zeros(1, 3, 1, 1)))
        runs.append(engine.run(m, ClassScore([2, 5]), p, Settings(steps=1, optimizer="sgd", lr=0.5, lower=lower)))
    torch.testing.assert_close(runs[0].images, runs[1].images, rtol=1e-4, atol=1e-5)
    assert runs[0].info["lower"] is not None and runs[1].info["lower"] is None


def test_graph_backend_off_cuda_is_refused():
    p = make_param("maco", 1, (32, 32))
    with pytest.raises(fv.FastvizError, match="backend"):
        engine.run(tiny(), ClassScore([0]), p, Settings(steps=1, backend="graph"))


def test_views_repeat_each_images_objective_over_its_crops():
    """k crops are k network rows; the history keeps one (mean) score per image."""
    m = tiny()
    seen = []
    h = m.module.features[0].register_forward_hook(lambda mod, i, o: seen.append(o.shape[0]))
    try:
        r = engine.run(m, ClassScore([1, 2]), make_param("maco", 2, (32, 32)),
                       Settings(steps=2, transforms=fv.Transforms(crops=3, crop=(0.5, 1.0)), lower=False))
    finally:
        h.remove()
    assert seen[-1] == 6 and r.history.shape == (2, 2)


def test_progress_and_snapshots_at_read_back_points():
    calls = []
    r = engine.run(tiny(), ClassScore([1]), make_param("fft", 1, (32, 32)),
                   Settings(steps=6, snapshot_every=4, progress_every=2), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 6), (4, 6), (6, 6)]
    assert [s for s, _ in r.snapshots] == [4]


class Raw(Tanh):
    """image = leaf, unbounded: an L2 term with too large a step makes it grow 2000x a step."""

    def image(self) -> torch.Tensor:
        return self.leaf


def test_a_diverging_run_names_the_step():
    with pytest.raises(fv.FastvizError, match="lower lr"):
        engine.run(tiny(), ClassScore([1]), Raw(torch.rand(1, 3, 32, 32)),
                   Settings(steps=20, lr=1e3, l2=1.0, optimizer="sgd", lower=False))
