"""Objectives: per-row scores, composition, row selection, index checks (hand-computed)."""

import pytest
import torch

import fastviz as fv
from fastviz.objectives import LOGITS, Inversion


def acts():
    torch.manual_seed(0)
    return {"l": torch.randn(3, 4, 5, 6), LOGITS: torch.randn(3, 10)}


def test_scores_by_hand():
    a = acts()
    img = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(fv.class_score([1, 2, 9]).score(a, img), a[LOGITS][[0, 1, 2], [1, 2, 9]])
    torch.testing.assert_close(fv.channel("l", [0, 3, 3]).score(a, img),
                               torch.stack([a["l"][0, 0].mean(), a["l"][1, 3].mean(), a["l"][2, 3].mean()]))
    torch.testing.assert_close(fv.neurons("l", [1, 2, 3], [0, 4, 2], [5, 0, 1]).score(a, img),
                               torch.stack([a["l"][0, 1, 0, 5], a["l"][1, 2, 4, 0], a["l"][2, 3, 2, 1]]))
    torch.testing.assert_close(fv.dream("l").score(a, img), 0.5 * a["l"].square().sum((1, 2, 3)))


def test_dream_gradient_at_the_layer_is_the_activation():
    a = torch.randn(2, 4, 5, 5, requires_grad=True)
    (g,) = torch.autograd.grad(fv.dream("l").score({"l": a}, None).sum(), a)
    torch.testing.assert_close(g, a.detach())


def test_composition_and_selection():
    a = acts()
    obj = fv.channel("l", [0, 1, 2]) - 0.5 * fv.channel("l", [3, 3, 3]) + fv.class_score([4, 5, 6])
    expected = (fv.channel("l", [0, 1, 2]).score(a, None) - 0.5 * fv.channel("l", [3, 3, 3]).score(a, None)
                + fv.class_score([4, 5, 6]).score(a, None))
    torch.testing.assert_close(obj.score(a, None), expected)
    assert obj.layers == {"l", LOGITS} and obj.rows == 3
    assert "0.5 * channel('l', [3, 3, 3])" in obj.description
    sub = obj.select(slice(1, 3))
    small = {k: v[1:3] for k, v in a.items()}
    torch.testing.assert_close(sub.score(small, None), expected[1:3])
    torch.testing.assert_close((-fv.dream("l")).score(a, None), -fv.dream("l").score(a, None))


def test_index_checks():
    a = acts()
    with pytest.raises(fv.FastvizError, match=r"classes: class index 10 is out of range for 10 classes \(0-9\)"):
        fv.class_score([10, 1, 2]).check(a)
    with pytest.raises(fv.FastvizError, match="channels: 'l' has 4 channels, got 4"):
        fv.channel("l", [4, 0, 0]).check(a)
    with pytest.raises(fv.FastvizError, match="objective: terms have different row counts"):
        fv.channel("l", [1, 2]) + fv.channel("l", [1, 2, 3])
    with pytest.raises(fv.FastvizError, match="channels: index -1 is negative"):
        fv.channel("l", [-1])
    with pytest.raises(fv.FastvizError, match="objective: expected a fastviz objective"):
        fv.channel("l", 1) + 3


def test_inversion_is_zero_at_the_target_on_a_flat_image():
    t = torch.randn(2, 4, 3, 3)
    obj = Inversion("l", t, alpha_weight=1.0, tv_weight=1.0)
    img = torch.full((2, 3, 8, 8), 0.5)
    torch.testing.assert_close(obj.score({"l": t}, img), torch.zeros(2))
    assert bool((obj.score({"l": t + 1}, img) < 0).all())


def test_jitter_roll_is_an_exact_per_row_roll():
    from fastviz.transforms import roll_rows as _roll

    img = torch.randn(3, 2, 5, 7)
    dy, dx = torch.tensor([0, 2, -1]), torch.tensor([3, -4, 0])
    expected = torch.stack([torch.roll(img[i], (int(dy[i]), int(dx[i])), (1, 2)) for i in range(3)])
    torch.testing.assert_close(_roll(img, dy, dx), expected, rtol=0, atol=0)


def test_diversity_is_minus_the_gram_cosine_within_a_group():
    torch.manual_seed(0)
    a = torch.rand(1, 4, 5, 5)
    b = torch.rand(1, 4, 5, 5)
    acts = {"l": torch.cat([a, a, b])}
    img = torch.zeros(3, 3, 8, 8)
    s = fv.diversity("l", [7, 7, 9]).score(acts, img)
    torch.testing.assert_close(s, torch.tensor([-1.0, -1.0, 0.0]))  # identical pair; row 2 alone
    ga, gb = ((t.flatten(2) @ t.flatten(2).transpose(1, 2)).flatten() for t in (a, b))
    cos = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
    s = fv.diversity("l", [7, 7, 7]).score(acts, img)
    torch.testing.assert_close(s[2], torch.tensor(-cos))
    # Two views of each of two images: a view never compares with its own image's other view.
    views = fv.diversity("l", [7, 7]).repeat(2)
    s = views.score({"l": torch.cat([a, a, b, b])}, img)
    torch.testing.assert_close(s, torch.full((4,), -cos))
    # Composes with the others: per-row sums.
    total = (fv.channel("l", [0, 1]) + 2 * fv.diversity("l", [1, 1])).score({"l": torch.cat([a, b])}, img[:2])
    assert total.shape == (2,)
