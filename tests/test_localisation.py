"""Faithfulness without pretrained weights: every attribution method, on a tiny CNN and a tiny
ViT trained here on a task whose evidence has a known place (tests/localise_helpers.py), must
point into the object's box far more often than chance.

Slow tier (all but the checks of the measures themselves): the two networks train once per
module, about a minute each on one thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fastviz as fv
import localise_helpers as L

HELD_OUT = 96
# (a file beside the imported package: an editable install's finder would find another checkout's)
CAM_NEEDS_LAYOUT = pytest.mark.xfail(
    not (Path(fv.__file__).parent / "layout.py").exists(), strict=True,
    reason="CAMs read a (B, C, h, w) map; a ViT's blocks give tokens (B, N, C), and laying them "
           "out on the patch grid (fastviz.layout) is not there yet")

# Pointing-game floor per (architecture, method), under what was measured on 200 held-out
# images (docs/any_model.md; seed 0) and on these 96 with training seeds 1 and 2 and with two
# threads (another CPU's rounding trains other weights): the lowest of those minus 0.1-0.15.
# Every floor is at least 4x chance (chance is about 0.075).
FLOORS = {
    ("cnn", "saliency"): 0.55,  # measured 0.75-0.81
    ("cnn", "guided_backprop"): 0.75,  # 0.94-1.00
    ("cnn", "gradcam"): 0.7,  # 0.88-0.98
    ("cnn", "guided_gradcam"): 0.8,  # 0.97-1.00
    ("cnn", "layercam"): 0.7,  # 0.89-0.98
    ("cnn", "scorecam"): 0.7,  # 0.91-0.98
    ("cnn", "smoothgrad"): 0.6,  # 0.76-0.90
    ("cnn", "integrated_gradients"): 0.8,  # 1.00
    ("cnn", "lrp"): 0.8,  # 1.00; the ViT is refused (test_lrp_refuses_the_vit)
    ("vit", "saliency"): 0.45,  # 0.63-0.71
    ("vit", "guided_backprop"): 0.4,  # 0.57-0.72
    ("vit", "gradcam"): 0.3,  # 0.47-0.63 (the CAMs: tokens laid out on the patch grid)
    ("vit", "guided_gradcam"): 0.45,  # 0.65-0.74
    ("vit", "layercam"): 0.55,  # 0.77-0.84
    ("vit", "scorecam"): 0.45,  # 0.65-0.70
    ("vit", "smoothgrad"): 0.5,  # 0.67-0.77
    ("vit", "integrated_gradients"): 0.8,  # 0.99-1.00
    ("vit", "attention_rollout"): 0.5,  # 0.75-0.95 (class-agnostic: the object stands out)
    ("vit", "transformer_attribution"): 0.6,  # 0.78-0.83
}
CAMS = ("gradcam", "guided_gradcam", "layercam", "scorecam")


def _case(arch: str, method: str):
    marks = [CAM_NEEDS_LAYOUT] if arch == "vit" and method in CAMS else []
    return pytest.param(arch, method, marks=marks, id=f"{arch}-{method}")


@pytest.fixture(scope="module")
def held_out():
    """(images, labels, boxes) never seen in training."""
    return L.make_images(HELD_OUT, seed=7)


@pytest.fixture(scope="module")
def cnn():
    return L.trained_cnn()


@pytest.fixture(scope="module")
def vit():
    return L.trained_vit()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_the_network_learns_the_task(arch, request, held_out):
    x, y, _ = held_out
    assert L.accuracy(request.getfixturevalue(arch), x, y) > 0.90


@pytest.mark.slow
@pytest.mark.parametrize("arch,method", [_case(a, k) for a, k in FLOORS])
def test_the_map_points_into_the_box(arch, method, request, held_out, snapshot):
    model = request.getfixturevalue(arch)
    x, y, boxes = held_out
    before = snapshot(model.module)
    maps = L.methods(arch)[method](model, x, y)
    before.assert_unchanged()
    assert maps.shape == (HELD_OUT, L.SIDE, L.SIDE)
    hits = L.pointing_game(maps, boxes).float().mean().item()
    chance = L.chance(boxes).mean().item()
    assert hits > max(3 * chance, FLOORS[arch, method]), (hits, chance)
    # and the map's mass leans into the box too, though less sharply than its peak
    assert L.energy_in_box(maps, boxes).mean().item() > 1.5 * chance


@pytest.mark.slow
def test_lrp_refuses_the_vit(vit, held_out):
    x, y, _ = held_out
    with pytest.raises(fv.FastvizError, match="LayerNorm"):
        L.methods("vit")["lrp"](vit, x[:2], y[:2])


@pytest.mark.slow
@CAM_NEEDS_LAYOUT
def test_the_vits_default_cam_layer_is_its_last_blocks_tokens(vit, held_out):
    """Without a layout the default search finds the attention's keys (B, heads, N, d), a 4-D
    tensor that is no map of the image."""
    from fastviz.cam import default_layer

    assert default_layer(vit, held_out[0][:1]) == L.VIT_CAM_LAYER


def test_the_measures_on_maps_made_by_hand():
    """A map peaked inside the box hits and keeps its mass there; one peaked outside misses."""
    boxes = torch.tensor([[10, 20, 30, 40]])
    inside = torch.zeros(1, L.SIDE, L.SIDE)
    inside[0, 15:25, 25:35] = 1.0
    inside[0, 20, 30] = 2.0
    outside = torch.zeros(1, L.SIDE, L.SIDE)
    outside[0, 50, 5] = 1.0
    assert L.pointing_game(inside, boxes).tolist() == [True]
    assert L.pointing_game(outside, boxes).tolist() == [False]
    assert L.energy_in_box(inside, boxes).item() == pytest.approx(1.0)
    assert L.energy_in_box(outside - inside, boxes).item() == pytest.approx(0.0)  # negative mass ignored
    assert L.chance(boxes).item() == pytest.approx(20 * 20 / L.SIDE ** 2)


def test_the_task_is_seeded_and_its_boxes_hold_the_object():
    x, y, boxes = L.make_images(8, seed=3)
    x2, y2, boxes2 = L.make_images(8, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(boxes, boxes2)
    assert x.min() >= 0 and x.max() <= 1
    sides = (boxes[:, 2:] - boxes[:, :2]).float()
    assert ((sides >= 10) & (sides <= 23)).all()  # 14-22 px shapes; the square is 0.85 of that
