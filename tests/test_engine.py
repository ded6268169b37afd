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


class FixedSize(torch.nn.Module):
    """A network that takes its input size only (as a ViT with a fixed patch grid)."""

    def __init__(self, net, side: int):
        super().__init__()
        self.net, self.side = net, side

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.side, self.side):
            raise ValueError(f"input must be {self.side}x{self.side}, got {tuple(x.shape[-2:])}")
        return self.net(x)


@pytest.mark.parametrize("lower", [False, True])
def test_a_picture_larger_than_the_input_is_seen_in_crops_of_the_input(lower):
    """class_model(size=64) on a 32-pixel network: a 64 x 64 picture whose crops are resampled
    to 32 x 32 (MACO's pictures to print); the network never sees another size."""
    t = tiny()
    m = fv.Model(FixedSize(t.module, 32), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32)
    r = fv.class_model(m, [1, 2], size=64, steps=3, lower=lower)
    assert r.images.shape == (2, 3, 64, 64) and bool(torch.isfinite(r.images).all())
    assert bool((r.history[-1] > r.history[0]).all())
    with pytest.raises(ValueError, match="input must be 32x32"):  # without views it sees 64 x 64
        fv.class_model(m, [1], size=64, steps=1, transforms=None, lower=False)


def test_view_size_needs_transforms():
    with pytest.raises(fv.FastvizError, match="view_size: the views are resampled by the transforms"):
        fv.class_model(tiny(), [1], steps=1, transforms=None, view_size=32)
    with pytest.raises(fv.FastvizError, match="view_size"):
        fv.class_model(tiny(), [1], steps=1, view_size=(0, 3))


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
