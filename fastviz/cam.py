"""Class activation maps: Grad-CAM, guided Grad-CAM, Score-CAM, LayerCAM.

Each map is built from one feature map `A` (B, K, h, w) of a named layer. The layer's output is
captured in the forward as a fresh leaf tensor, so the gradient `d score / d A` is one
`torch.autograd.grad` through the layers *after* it: nothing before the layer records a graph,
parameters are frozen (docs/design.md, rule 2) and no `.backward()` touches them. Maps are upsampled to the
image size on the device (bilinear, align_corners=False) and, by default, normalised per image to
[0, 1] by (m - min) / (max - min) (a constant map becomes zeros).

The default (`layer=None`) is chosen by the rules in `fastviz.cam_layer`: a transformer
block's first norm, a token network's last stage, else the input of a CNN's global pooling.
`default_layer` returns that module's name; an explicit `layer` names a module whose *output*
is used. A signed (pre-activation) map makes Score-CAM degenerate: its weights are positive
probabilities, so a mostly negative map sums to zero after the ReLU.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import budget
from .errors import FastvizError
from .explain import check_class_target, check_logits, prepare, resolve_targets, target_scores
from .image import minmax
from .guided import guided
from .cam_layer import default_layer, default_layer_used
from .hooks import Session, session
from .models import Model
from .targets import positive_int

CAMS = "class activation maps"

__all__ = ["default_layer", "gradcam", "guided_gradcam", "layercam", "scorecam"]


# -- helpers --------------------------------------------------------------------------------
def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise FastvizError(f"{name}: expected True or False, got {value!r:.60}")
    return value


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear on the device."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _layer_name(m: Model, x: torch.Tensor, layer) -> tuple[str, bool]:
    """(module name, True when its input rather than its output is the feature map)."""
    if layer is None:
        return default_layer_used(m, x)
    m.layer(layer)  # unknown name -> FastvizError listing the nearest names
    return layer, False


def _capture(s: Session, x: torch.Tensor, layer: tuple[str, bool], grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: (B, K, h, w) activation at `layer` (name, its input?) and the logits.

    With `grad`, the activation is a leaf that requires grad and the network after it runs on a
    clone of it, so `autograd.grad(score, act)` differentiates only what follows the layer and a
    later in-place op can never overwrite the captured values.
    """
    m = s.model
    layer, use_input = layer
    module = m.layer(layer)
    s.check_single_use([layer], x)
    box: dict[str, torch.Tensor] = {}

    def swap(out):
        lay = s.layout(layer, out, x)  # tokens on the patch grid, (B, h, w, C) permuted
        if not lay.spatial:
            raise FastvizError(f"layer: {layer!r} gives shape {tuple(out.shape)}, a vector per image with no "
                               f"positions to map; CAMs need a feature map (B, C, h, w), tokens (B, N, C) "
                               f"or a channels-last stage")
        if not grad:
            box["act"] = lay.to_map(out).detach().clone()
            return out
        # the map is the leaf; the network after the layer runs on it laid back out (prefix
        # tokens as they were: the gradient of the patch tokens is all a CAM reads)
        leaf = lay.to_map(out).detach().requires_grad_(True)
        box["act"] = leaf
        return lay.from_map(leaf.clone(), out.detach())

    if use_input:
        hook = s.hook(module, lambda _m, args: (swap(args[0]), *args[1:]), "pre")
    else:
        hook = s.hook(module, lambda _m, _i, out: swap(out))
    with hook, torch.set_grad_enabled(grad):
        logits = check_logits(m(x))
    if "act" not in box:
        raise FastvizError(f"layer: {layer!r} did not run in the forward of {m.name}")
    return box["act"], logits


def _act_and_grad(model, x, target, layer):
    """(model, x, act, d score / d act, targets used) for the gradient CAMs."""
    m, x = prepare(model, x)
    target = check_class_target(m, x, target, CAMS)
    name = _layer_name(m, x, layer)
    with session(m, no_inplace=True) as s:
        act, logits = _capture(s, x, name, grad=True)
        score, used = target_scores(m, logits, target)
        (g,) = torch.autograd.grad(score.sum(), act)
    return m, x, act.detach(), g, used


def _chunks(model, x, target, layer, channels: int, grad: bool = True) -> tuple[Model, torch.Tensor, int]:
    """(model, images, images per chunk): everything checked once on the whole batch (images,
    targets, layer), the result (B, channels, H, W) refused if it does not fit the memory budget,
    and the images per forward (+ backward) that do (`fastviz.budget`)."""
    m, x = prepare(model, x)
    check_class_target(m, x, target, CAMS)
    B, _, H, W = x.shape
    kept = B * channels * H * W * x.element_size()
    budget.check_output(kept, x.device, "x", f"{B} maps of {H}x{W}")
    step = budget.rows(m, x, grad=grad, total=B, fixed=kept)
    _layer_name(m, x, layer)  # the default layer costs one forward of one image: after the budget
    return m, x, step


def _finish(cam: torch.Tensor, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    cam = _upsample(cam, x.shape[-2:])
    return minmax(cam) if normalize else cam


# -- the methods ------------------------------------------------------------------------------
def _gradcam(model, x, target, layer, normalize):
    _bool(normalize, "normalize")
    m, x, act, g, used = _act_and_grad(model, x, target, layer)
    weights = g.mean((2, 3), keepdim=True)
    cam = (weights * act).sum(1).clamp_min(0)
    return m, x, _finish(cam, x, normalize), used


def gradcam(model, x, target=None, *, layer: str | None = None, normalize: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k alpha_k A_k), alpha_k = mean_ij d y_c / d A_kij.

    y_c is the class logit (before softmax). One forward (captured at `layer`) and one backward
    from the logits to that layer.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row (int, list, tensor) or None for each row's top-1.
        layer: dotted module name; None = `default_layer(model, x)`.
        normalize: scale each map to [0, 1] by (m - min) / (max - min); False keeps the raw
            upsampled ReLU(sum_k alpha_k A_k).

    Returns:
        (B, H, W) map, upsampled bilinearly to the image size.

    Raises:
        FastvizError: bad images, class out of range, unknown layer, a layer used twice in one
            forward, a layer whose output is not a (B, C, h, w) map.

    Example:
        >>> gradcam(load_model(), torch.rand(2, 3, 224, 224), target=285).shape
        torch.Size([2, 224, 224])
    """
    _bool(normalize, "normalize")
    m, x, step = _chunks(model, x, target, layer, 1)
    return budget.by_rows(lambda xs, ts: _gradcam(m, xs, ts, layer, normalize)[2], x, target, step)


def guided_gradcam(model, x, target=None, *, layer: str | None = None) -> torch.Tensor:
    """Guided Grad-CAM: the [0, 1]-normalised Grad-CAM map times guided backprop, per pixel.

    Both parts explain the same class per row (top-1 resolved once, by the Grad-CAM pass).

    Args:
        model, x, target, layer: as for `gradcam`.

    Returns:
        (B, 3, H, W) signed map; `fastviz.image.normalize(g, "signed")` shows it.
    """
    m, x, step = _chunks(model, x, target, layer, 3)
    return budget.by_rows(lambda xs, ts: _guided_gradcam(m, xs, ts, layer), x, target, step)


def _guided_gradcam(model, x, target, layer) -> torch.Tensor:
    m, x, cam, used = _gradcam(model, x, target, layer, True)
    with session(m) as s:
        if guided(s) == 0:
            warnings.warn(f"{m.name} has no activation module (ReLU, ReLU6, GELU, SiLU, ...): guided backprop equals "
                          f"the plain gradient", stacklevel=2)
        xi = x.detach().requires_grad_(True)
        # The device targets of the Grad-CAM pass, gathered as they are: no host sync.
        score = check_logits(m(xi)).gather(1, used[:, None])
        (g,) = torch.autograd.grad(score.sum(), xi)
    return cam[:, None] * g


def layercam(model, x, target=None, *, layer: str | None = None, normalize: bool = True) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(d y_c / d A_k) * A_k), pixel by pixel.

    Args:
        model, x, target, layer, normalize: as for `gradcam`.

    Returns:
        (B, H, W) map, upsampled bilinearly to the image size, [0, 1] per image when `normalize`.
    """
    _bool(normalize, "normalize")
    m, x, step = _chunks(model, x, target, layer, 1)
    return budget.by_rows(lambda xs, ts: _layercam(m, xs, ts, layer, normalize), x, target, step)


def _layercam(model, x, target, layer, normalize) -> torch.Tensor:
    _, x, act, g, _ = _act_and_grad(model, x, target, layer)
    cam = (g.clamp_min(0) * act).sum(1).clamp_min(0)
    return _finish(cam, x, normalize)


@torch.no_grad()
def scorecam(model, x, target=None, *, layer: str | None = None, batch_size: int = 32,
             normalize: bool = True) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020), as the authors' code computes it.

    For each channel k the activation A_k is upsampled to the image and scaled to [0, 1], M_k;
    the network input (the normalised image) is multiplied by M_k, so masked-out pixels take the
    dataset mean; w_k = softmax(f(x * M_k))_c. The map is ReLU(sum_k w_k up(A_k)) (channels with
    a constant A_k get w_k = 0, as the authors skip them). The B x K masked forwards run without
    gradients in chunks of `batch_size` rows, so any B x K fits in memory; masks are built per
    chunk.

    Args:
        model, x, target, layer, normalize: as for `gradcam`.
        batch_size: masked images per forward.

    Returns:
        (B, H, W) map, [0, 1] per image when `normalize`.

    Raises:
        FastvizError: as `gradcam`, and batch_size < 1.
    """
    batch_size = positive_int(batch_size, "batch_size")
    _bool(normalize, "normalize")
    m, x, step = _chunks(model, x, target, layer, 1, grad=False)
    # masked images per forward: a masked copy of the image and its mask beside the network's row
    H, W = x.shape[-2:]
    batch_size = budget.rows(m, x, grad=False, total=batch_size, per_row_extra=x[:1].numel() * 4 + H * W * 4,
                             what="one masked image")
    return budget.by_rows(lambda xs, ts: _scorecam(m, xs, ts, layer, batch_size, normalize), x, target, step)


def _scorecam(model, x, target, layer, batch_size: int, normalize: bool) -> torch.Tensor:
    m, x = prepare(model, x)
    target = check_class_target(m, x, target, CAMS)
    name = _layer_name(m, x, layer)
    B, _, H, W = x.shape
    with session(m, no_inplace=True) as s:
        act, logits = _capture(s, x, name, grad=False)
        used = resolve_targets(m, logits, target)
        K = act.shape[1]
        flat = act.reshape(B * K, 1, *act.shape[-2:])
        xn = m.normalize(x)
        weights = x.new_empty(B * K)
        for i in range(0, B * K, batch_size):
            j = min(i + batch_size, B * K)
            rows = torch.arange(i, j, device=x.device) // K
            up = F.interpolate(flat[i:j], size=(H, W), mode="bilinear", align_corners=False)
            mask = minmax(up)  # a constant A_k gives an all-zero mask, and its weight is 0
            out = check_logits(m.select(m.module(m.fit(xn.index_select(0, rows) * mask))))
            prob = out.float().softmax(1).gather(1, used.index_select(0, rows)[:, None])[:, 0]
            weights[i:j] = torch.where(mask.flatten(1).amax(1) > 0, prob, 0.0)
    # sum_k w_k up(A_k) = up(sum_k w_k A_k): bilinear upsampling is linear.
    cam = (weights.view(B, K, 1, 1) * act).sum(1)
    cam = _upsample(cam, (H, W)).clamp_min(0)
    return minmax(cam) if normalize else cam
