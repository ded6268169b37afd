"""Vision transformers: the same answer as the peers where they overlap.

Grad-CAM on a ViT and on a Swin equals pytorch-grad-cam's `GradCAM` given the `reshape_transform`
and `target_layers` its vision-transformer tutorial documents; saliency and input x gradient on
a ViT equal captum's. fastviz needs neither: its layout room drops the prefix tokens and folds
the rest onto the patch grid, and its default CAM layer is the one the tutorial names.

Networks: timm, random weights (seeded), nothing downloaded, built small and on a non-square
image (64 x 96, a 4 x 6 patch grid for the ViT; 128 x 192 for the Swin, a 4 x 6 last stage), so
a grid read as (w, h) instead of (h, w) cannot pass. The peers see the same network behind the
model's normalisation, as in the resnet18 comparison with captum (tests/test_attribution.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.cam import default_layer

timm = pytest.importorskip("timm", reason="timm (the timm extra) not installed")

TARGETS = [3, 7]
# A Swin small enough to be quick, with two blocks in the last stage so "the last block" is not
# also the first; window 4 on its 128 x 192 input gives stages of 32x48, 16x24, 8x12 and 4x6.
SWIN_SIZE = (128, 192)
SMALL_SWIN = dict(window_size=4, embed_dim=32, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8))

# Bounds, measured in float32 on one thread (x86_64, torch on AVX-512). CAMs: the peer sums in
# numpy, fastviz in torch, in other orders, and CPUs with other vector widths round otherwise;
# the bound is 20-55x the measured 1.8e-7 .. 4.8e-7 on maps in [0, 1]. Gradients: the same
# autograd graph, equal to the last bit here; the bound, 1e-5 of the map's largest |value|
# (about 80 float32 ulps), leaves room for a kernel chosen otherwise on another CPU.
CAM_ATOL = 1e-5
GRADIENT_RTOL = 1e-5


def _build(name: str, size: tuple[int, int], **kwargs) -> tuple[nn.Module, fv.Model]:
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=10,
                            pretrained_cfg_overlay=dict(input_size=(3, *size)), img_size=size, **kwargs)
    return net.eval(), fv.Model.from_timm(net)


@pytest.fixture(scope="module")
def vit():
    return _build("vit_tiny_patch16_224", (64, 96))


@pytest.fixture(scope="module")
def swin():
    return _build("swin_tiny_patch4_window7_224", SWIN_SIZE, **SMALL_SWIN)


def _images(model: fv.Model) -> torch.Tensor:
    return torch.rand(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))


class _Normalised(nn.Module):
    """The network behind the model's normalisation: the peers take the same [0, 1] images."""

    def __init__(self, model: fv.Model):
        super().__init__()
        self.model = model
        self.net = model.module

    def forward(self, x):
        return self.net(self.model.normalize(x))


def _their_gradcam(model: fv.Model, x, target_layer: nn.Module, reshape_transform, targets) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM maps (B, H, W) for `targets` (None: each row's top-1)."""
    cams = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wanted = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    try:
        with cams.GradCAM(_Normalised(model), [target_layer], reshape_transform=reshape_transform) as cam:
            return torch.from_numpy(cam(x.clone(), targets=wanted))
    finally:
        model.module.zero_grad(set_to_none=True)  # it calls .backward(): weight gradients left behind


def _assert_same_cams(model: fv.Model, x, layer: str, target_layer: nn.Module, reshape_transform):
    assert default_layer(model, x) == layer
    assert model.module.get_submodule(layer) is target_layer
    for targets in (TARGETS, None):
        theirs = _their_gradcam(model, x, target_layer, reshape_transform, targets)
        assert theirs.shape == (2, *x.shape[-2:])
        for name in (None, layer):
            ours = fv.gradcam(model, x, targets, layer=name)
            torch.testing.assert_close(ours, theirs, atol=CAM_ATOL, rtol=0)
    # the comparison tells maps apart: the other class's map is far off
    other = fv.gradcam(model, x, TARGETS[::-1])
    assert (other - _their_gradcam(model, x, target_layer, reshape_transform, TARGETS)).abs().amax() > 0.1


def test_vit_gradcam_equals_pytorch_grad_cams(vit):
    """fastviz's default layer on a ViT is pytorch-grad-cam's `blocks[-1].norm1`, and the map is its
    map, with the tutorial's `reshape_transform` (class token dropped, tokens folded onto the patch
    grid, channels first).

    What each returns: pytorch-grad-cam takes ReLU(sum_k mean(dy/dA_k) A_k) on the 4 x 6 grid,
    scales it per image by (m - min) / (max + 1e-7), upsamples it with cv2.resize (bilinear, pixel
    centres as torch's align_corners=False) and scales the result again (its layer aggregation);
    fastviz upsamples the same ReLU map with torch's bilinear and scales once by (m - min) / (max -
    min). Bilinear weights sum to 1, so the upsampling commutes with the per-image affine scaling
    and the two agree without post-processing either side. Measured: 1.8e-7 .. 3.6e-7 (three seeds);
    in float64 still 1.6e-7 .. 2.4e-7, the peer's 1e-7 in the scaling and its float32 output, so what is
    left is rounding and that epsilon, not a difference in the method.
    """
    net, model = vit
    x = _images(model)
    h, w = model.input_size[0] // 16, model.input_size[1] // 16

    def reshape_transform(tensor):  # pytorch-grad-cam's tutorial for ViT, with this grid
        result = tensor[:, 1:, :].reshape(tensor.size(0), h, w, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    layer = f"blocks.{len(net.blocks) - 1}.norm1"
    _assert_same_cams(model, x, layer, net.blocks[-1].norm1, reshape_transform)


def test_swin_gradcam_equals_pytorch_grad_cams(swin):
    """fastviz's default layer on a Swin is pytorch-grad-cam's `layers[-1].blocks[-1].norm1`, and
    the map is its map.

    The tutorial's Swin `reshape_transform` folds (B, N, C) tokens onto the grid; timm's Swin
    blocks now give (B, H, W, C), so the same transform is a permute to (B, C, H, W). Post-processing
    as for the ViT (the two scalings and the upsampling commute). Measured: 2.4e-7 .. 4.8e-7 (three
    seeds); in float64 1.7e-7 .. 2.0e-7, the peer's epsilon and float32 output.
    """
    net, model = swin
    x = _images(model)
    last = len(net.layers) - 1
    layer = f"layers.{last}.blocks.{len(net.layers[-1].blocks) - 1}.norm1"
    _assert_same_cams(model, x, layer, net.layers[-1].blocks[-1].norm1, lambda t: t.permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient"])
def test_vit_gradients_equal_captums(vit, name):
    """Saliency (captum's `Saliency(abs=True)`, then the largest value over colour) and input x
    gradient equal captum's on a ViT. Both differentiate the same graph with
    `torch.autograd.grad` in one process: measured exactly equal (0.0, maps up to about 0.02).
    """
    captum_attr = pytest.importorskip("captum.attr", reason="captum (dev extra) not installed")
    _, model = vit
    x = _images(model)
    net = _Normalised(model)
    with pytest.warns(UserWarning, match="require gradients"):  # captum sets requires_grad on x
        if name == "saliency":
            theirs = captum_attr.Saliency(net).attribute(x.clone(), target=TARGETS, abs=True).amax(1)
        else:
            theirs = captum_attr.InputXGradient(net).attribute(x.clone(), target=TARGETS)
    ours = getattr(fv, name)(model, x, TARGETS)
    scale = theirs.abs().amax()
    assert scale > 1e-4
    torch.testing.assert_close(ours, theirs, atol=GRADIENT_RTOL * scale.item(), rtol=0)
    other = getattr(fv, name)(model, x, TARGETS[::-1])
    assert (other - theirs).abs().amax() > 100 * GRADIENT_RTOL * scale
