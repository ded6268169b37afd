"""Faithfulness metrics (fastviz/metrics.py): deletion, insertion, ROAD.

Closed forms on hand-built networks (a linear model's deletion and insertion curves are sums of
its per-pixel contributions), the perturbations alone, and the peer: pytorch-grad-cam's ROAD.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastviz as fv
from fastviz import metrics as M

from tiny_net import H, W, contributions, linear_model


# -- the perturbations alone ----------------------------------------------------------------------
def test_pixel_ranks_order_the_pixels_most_relevant_first():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert M.pixel_ranks(maps).tolist() == [[3, 0, 1, 2]]
    r = M.pixel_ranks(torch.rand(4, 5, 7))
    assert (r.sort(1).values == torch.arange(35)).all()


def test_mix_takes_exactly_the_top_k_pixels_from_the_substrate():
    x, sub = torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)
    maps = torch.rand(3, 4, 4)
    out = M.mix(x, sub, M.pixel_ranks(maps), torch.tensor([0, 5, 16]))
    assert out[0].sum() == 0 and (out[2] == 1).all()
    took = out[1, 0].flatten().bool()
    assert took.sum() == 5 and (out[1, 0] == out[1, 1]).all()  # all channels of a pixel move
    assert set(maps[1].flatten().topk(5).indices.tolist()) == set(took.nonzero().flatten().tolist())


@pytest.mark.parametrize("n", [64, 50176, 17])
def test_removed_count_follows_numpys_percentile(n):
    m = np.random.default_rng(0).random(n)
    for p in (10, 25, 50, 80, 90, 33.3):
        assert M.removed_count(n, p) == int((m >= np.percentile(m, 100 - p)).sum())


def test_imputation_keeps_kept_pixels_and_is_exact_on_planes():
    y, x = np.mgrid[0:12, 0:10].astype(float)
    img = np.stack([0.3 + 0.02 * y - 0.01 * x, 0.5 + 0 * y, 0.1 * x / 9])
    removed = np.random.default_rng(1).random((12, 10)) < 0.6
    removed[[0, -1]] = removed[:, [0, -1]] = False  # a plane's 8-neighbour mean is the plane inside
    out = M.noisy_linear_impute(img, removed)
    assert np.allclose(out, img, atol=1e-10)
    removed[0] = True  # and a constant's everywhere, border pixels included
    assert np.allclose(M.noisy_linear_impute(img[1:2], removed), img[1:2], atol=1e-10)
    noisy = M.noisy_linear_impute(img + np.sin(y)[None], removed, noise=0.1, rng=np.random.default_rng(0))
    assert (noisy[:, ~removed] == (img + np.sin(y)[None])[:, ~removed]).all()
    assert not np.allclose(noisy[:, removed], (img + np.sin(y)[None])[:, removed], atol=1e-3)


def test_imputation_of_one_pixel_is_the_weighted_mean_of_its_neighbours():
    img = np.random.default_rng(2).random((1, 3, 3))
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    w = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    assert M.noisy_linear_impute(img, removed)[0, 1, 1] == pytest.approx((w * img[0]).sum())
    removed[:] = False
    removed[0, 0] = True  # a corner: only 3 neighbours, weights renormalised
    want = (img[0, 0, 1] / 6 + img[0, 1, 0] / 6 + img[0, 1, 1] / 12) / (5 / 12)
    assert M.noisy_linear_impute(img, removed)[0, 0, 0] == pytest.approx(want)


# -- deletion and insertion: closed forms on a linear model ----------------------------------------
def expected_curve(model, start, end, maps, c, steps):
    """logit after moving the round(f * HW) most relevant pixels from `end` into `start`."""
    order = maps.flatten(1).argsort(1, descending=True)
    rows = []
    for f in torch.linspace(0, 1, steps + 1):
        k = int((f * H * W).round())
        moved = torch.zeros(maps.shape[0], H * W, dtype=torch.bool)
        moved.scatter_(1, order[:, :k], True)
        img = torch.where(moved.view(-1, 1, H, W), end, start)
        rows.append(model.module(img)[:, c])
    return torch.stack(rows, 1).detach()


def test_deletion_of_a_linear_model_is_its_cumulative_contribution():
    model, x = linear_model(), torch.rand(2, 3, H, W)
    maps = contributions(model, x, 1)
    r = fv.deletion(model, x, maps, target=1, points=16, score="logit", batch_size=7)
    # Closed form: removing a pixel to 0 subtracts exactly its contribution.
    k = (torch.linspace(0, 1, 17) * H * W).round().long()
    cum = torch.cat([torch.zeros(2, 1), maps.flatten(1).sort(1, descending=True).values.cumsum(1)], 1)
    clean = model.module(x)[:, 1].detach()
    assert torch.allclose(r.curve, clean[:, None] - cum[:, k], atol=1e-5)
    assert torch.allclose(r.curve, expected_curve(model, x, torch.zeros_like(x), maps, 1, 16), atol=1e-5)
    assert torch.allclose(r.auc, torch.trapezoid(r.curve, dx=1 / 16, dim=1))
    assert r.curve.shape == (2, 17) and r.targets.tolist() == [1, 1]
    # The contribution map is the most faithful ordering: it beats its reverse and a random one.
    worse = fv.deletion(model, x, -maps, target=1, points=16, score="logit")
    assert (r.auc < worse.auc - 0.1).all()


def test_insertion_of_a_linear_model_adds_contributions_onto_the_blur():
    model, x = linear_model(1), torch.rand(2, 3, H, W)
    blur = M._blur(x)
    maps = contributions(model, x - blur, 2)
    r = fv.insertion(model, x, maps, target=2, points=8, score="logit")
    assert torch.allclose(r.curve, expected_curve(model, blur, x, maps, 2, 8), atol=1e-5)
    assert torch.allclose(r.curve[:, 0], model.module(blur)[:, 2].detach(), atol=1e-5)
    assert torch.allclose(r.curve[:, -1], model.module(x)[:, 2].detach(), atol=1e-5)
    assert (r.auc > fv.insertion(model, x, -maps, target=2, points=8, score="logit").auc + 0.1).all()


def test_probability_curves_and_top1_targets():
    model, x = linear_model(2), torch.rand(3, 3, H, W)
    maps = torch.rand(3, H, W)
    r = fv.deletion(model, x, maps, points=4, substrate=0.5)
    top = model.module(x).argmax(1)
    assert r.targets.tolist() == top.tolist()
    p0 = model.module(x).softmax(1).gather(1, top[:, None]).squeeze(1).detach()
    assert torch.allclose(r.curve[:, 0], p0, atol=1e-6)
    grey = model.module(torch.full_like(x, 0.5)).softmax(1).gather(1, top[:, None]).squeeze(1).detach()
    assert torch.allclose(r.curve[:, -1], grey, atol=1e-6)


# -- ROAD ------------------------------------------------------------------------------------------
def test_road_on_a_linear_model_matches_imputation_by_hand():
    model, x = linear_model(3), torch.rand(2, 3, H, W)
    maps = torch.rand(2, H, W)
    r = fv.road(model, x, maps, percentiles=[20, 60], target=[0, 2], noise=0, score="logit")
    for b, c in ((0, 0), (1, 2)):
        for j, p in enumerate((20, 60)):
            k = M.removed_count(H * W, p)
            rank = M.pixel_ranks(maps)[b].view(H, W).numpy()
            for lerf, gone in ((0, rank < k), (1, rank >= H * W - k)):
                img = torch.from_numpy(M.noisy_linear_impute(x[b].numpy(), gone)).float()
                want = model.module(img[None])[0, c].item()
                got = (r.lerf if lerf else r.morf)[b, j].item()
                assert got == pytest.approx(want, abs=1e-5)
    assert torch.allclose(r.clean, model.module(x)[[0, 1], [0, 2]].detach())
    assert torch.allclose(r.combined, (r.lerf - r.morf).mean(1) / 2)


def test_road_ranks_a_faithful_map_above_its_reverse():
    # A linear model on a smooth image: removing the highest contributions hurts the logit most.
    model = linear_model(4)
    y, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    x = torch.stack([y, xx, (y + xx) / 2])[None]
    maps = contributions(model, x, 0)
    good = fv.road(model, x, maps, target=0, score="logit", noise=0)
    bad = fv.road(model, x, -maps, target=0, score="logit", noise=0)
    assert good.combined.item() > bad.combined.item() + 0.05


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_road_agrees_with_pytorch_grad_cam(score):
    pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (dev extra) not installed")
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst,
                                                                  RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    torch.manual_seed(0)
    model = fv.load_model("resnet18", weights=None)
    x, maps = torch.rand(2, 3, 40, 40), torch.rand(2, 40, 40)  # no ties: the two cut the same pixels
    pct = [10, 30, 50, 70, 90]
    r = fv.road(model, x, maps, percentiles=pct, target=[3, 5], noise=0, score=score)
    T = ClassifierOutputTarget if score == "logit" else ClassifierOutputSoftmaxTarget
    targets, imputer = [T(3), T(5)], NoisyLinearImputer(noise=0)
    net = model.module.eval()
    for j, p in enumerate(pct):
        # grad-cam's percentile q removes (100 - q)% of the pixels; it imputes normalised inputs.
        for remove, ours in ((RemoveMostRelevantFirst, r.morf), (RemoveLeastRelevantFirst, r.lerf)):
            theirs = PerturbationConfidenceMetric(remove(100 - p, imputer))(
                model.normalize(x), maps.numpy(), targets, net, return_diff=False)
            assert ours[:, j].numpy() == pytest.approx(theirs, rel=1e-4, abs=1e-6)


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda m, x: fv.deletion(m, x, torch.rand(2, 4, 4)), "maps"),
    (lambda m, x: fv.insertion(m, x, torch.rand(2, H, W), substrate="noise"), "substrate"),
    (lambda m, x: fv.deletion(m, x, torch.rand(2, H, W), score="prob"), "score"),
    (lambda m, x: fv.road(m, x, torch.rand(2, H, W), percentiles=[50, 100]), "percentiles"),
    (lambda m, x: fv.road(m, x, torch.rand(2, H, W), noise=-1), "noise"),
    (lambda m, x: fv.randomization_check(m, x, "occlusion"), "method"),
    (lambda m, x: fv.deletion(m, x, torch.full((2, H, W), float("nan"))), "NaN"),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(fv.FastvizError, match=match):
        call(linear_model(), torch.rand(2, 3, H, W))


def test_steps_is_the_old_name_of_points():
    m = linear_model()
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    maps = contributions(m, x, 0)
    for curve in (fv.deletion, fv.insertion):
        new = curve(m, x, maps, target=0, points=4)
        with pytest.warns(DeprecationWarning, match="steps= is deprecated: use points="):
            old = curve(m, x, maps, target=0, steps=4)
        torch.testing.assert_close(old.curve, new.curve)
        assert new.curve.shape == (2, 5)
