"""A synthetic localisation task: one coloured shape on a cluttered background, two tiny
networks trained on it from scratch (a ReLU CNN and a timm ViT), and the two measures of where
an attribution map points (pointing game, energy in the box).

Everything is seeded and runs on the CPU in about a minute per network on one thread, so the
faithfulness of every attribution method can be checked without pretrained weights:
the class is the shape, and the shape is only inside its box, so a faithful map of the class
points into the box.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastviz as fv

SIDE = 64
LABELS = ["disc", "square", "triangle", "cross"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# -- the images ------------------------------------------------------------------------------
def _shape_masks(kind: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(N, SIDE, SIDE) bool: shape `kind` (index into LABELS) of half-size r centred at (cy, cx)."""
    ys = torch.arange(SIDE, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(SIDE, dtype=torch.float32)[None, None, :] + 0.5
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    r = r[:, None, None]
    disc = dy ** 2 + dx ** 2 <= r ** 2
    square = (dy.abs() <= 0.85 * r) & (dx.abs() <= 0.85 * r)
    triangle = (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)  # apex up, base 2r wide
    cross = ((dy.abs() <= r) & (dx.abs() <= r / 3)) | ((dx.abs() <= r) & (dy.abs() <= r / 3))
    k = kind[:, None, None]
    return torch.where(k == 0, disc, torch.where(k == 1, square, torch.where(k == 2, triangle, cross)))


def _clutter(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, SIDE, SIDE) background: a flat colour, smooth colour noise, low-contrast
    rectangles and ellipses, pixel noise; no feature of it says anything about the class."""
    base = 0.15 + 0.3 * torch.rand(n, 3, 1, 1, generator=g)
    smooth = F.interpolate(torch.randn(n, 3, 6, 6, generator=g), size=(SIDE, SIDE), mode="bilinear",
                           align_corners=False)
    img = base + 0.06 * smooth
    ys = torch.arange(SIDE, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(SIDE, dtype=torch.float32)[None, None, :] + 0.5
    for i in range(10):
        cy, cx = (SIDE * torch.rand(2, n, 1, 1, generator=g)).unbind(0)
        hy, hx = (2 + 14 * torch.rand(2, n, 1, 1, generator=g)).unbind(0)
        if i % 2:
            m = ((ys - cy) / hy) ** 2 + ((xs - cx) / hx) ** 2 <= 1
        else:
            m = ((ys - cy).abs() <= hy) & ((xs - cx).abs() <= hx)
        tint = 0.12 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
        img = img + m[:, None] * tint
    return img + 0.03 * torch.randn(n, 3, SIDE, SIDE, generator=g)


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images of the task, the same for the same seed.

    Returns:
        images (n, 3, 64, 64) in [0, 1]; labels (n,) int64, the shape (index into LABELS);
        boxes (n, 4) int64 (y0, x0, y1, x1), the object's tight box, y1 and x1 exclusive.
    """
    g = torch.Generator().manual_seed(seed)
    img = _clutter(n, g)
    labels = torch.randint(len(LABELS), (n,), generator=g)
    r = 7 + 4 * torch.rand(n, generator=g)  # 14-22 px across
    cy, cx = (r + (SIDE - 2 * r) * torch.rand(2, n, generator=g)).unbind(0)
    mask = _shape_masks(labels, cy, cx, r)
    # a light colour on a darker background, at least 0.3 brighter in some channel: with a colour
    # of either sign no linear feature of a patch tells the object, and the ViT learned nothing
    local = (img * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None].clamp_min(1)
    colour = 0.5 + 0.5 * torch.rand(n, 3, generator=g)
    for _ in range(20):
        dull = (colour - local).amax(1) < 0.3
        if not dull.any():
            break
        colour[dull] = 0.5 + 0.5 * torch.rand(int(dull.sum()), 3, generator=g)
    shade = 1 + 0.04 * torch.randn(n, 1, SIDE, SIDE, generator=g)  # a little texture on the object
    img = torch.where(mask[:, None], colour[:, :, None, None] * shade, img).clamp(0, 1)
    rows, cols = mask.any(2), mask.any(1)
    ar = torch.arange(SIDE)
    y0 = torch.where(rows, ar, SIDE).amin(1)
    y1 = torch.where(rows, ar, -1).amax(1) + 1
    x0 = torch.where(cols, ar, SIDE).amin(1)
    x1 = torch.where(cols, ar, -1).amax(1) + 1
    return img, labels, torch.stack([y0, x0, y1, x1], 1)


# -- the networks ----------------------------------------------------------------------------
def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


def tiny_cnn() -> nn.Module:
    """A ReLU CNN: 3x3 conv + BatchNorm + ReLU, max pool, twice; two more on the 16 x 16 grid;
    global average pool, linear. (Without BatchNorm it learns nothing in a minute.)"""
    return nn.Sequential(*_conv(3, 16), nn.MaxPool2d(2), *_conv(16, 32), nn.MaxPool2d(2),
                         *_conv(32, 48), *_conv(48, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(LABELS)))


def tiny_vit() -> nn.Module:
    """A timm VisionTransformer: 64 px, 8 px patches (an 8 x 8 grid), width 64, depth 4, 4 heads."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=SIDE, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                             mlp_ratio=2.0, num_classes=len(LABELS))


def train(net: nn.Module, *, steps: int, batch: int = 64, lr: float = 2e-3, seed: int = 0,
          weight_decay: float = 0.0) -> fv.Model:
    """Train `net` with AdamW (Adam when weight_decay is 0) on freshly drawn images, one new
    batch per step, learning rate warmed up then annealed (one cycle), seeded; returns it in
    eval mode, wrapped as a `fv.Model`."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    net.train()
    for step in range(steps):
        x, y, _ = make_images(batch, seed=1_000_000 + seed * 100_000 + step)
        loss = F.cross_entropy(net((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return fv.Model(net, mean=MEAN, std=STD, input_size=SIDE, labels=LABELS)


def trained_cnn(steps: int = 300, seed: int = 0) -> fv.Model:
    """The tiny CNN trained on the task (seeded; held-out accuracy 1.0 measured)."""
    torch.manual_seed(seed)
    return train(tiny_cnn(), steps=steps, lr=5e-3, seed=seed)


def trained_vit(steps: int = 600, seed: int = 0) -> fv.Model:
    """The tiny ViT trained on the task (seeded; held-out accuracy 0.96-0.99 measured over
    seeds: it learns nothing for its first 100-200 steps, then fast)."""
    torch.manual_seed(seed)
    return train(tiny_vit(), steps=steps, lr=3e-3, weight_decay=0.05, seed=seed)


@torch.no_grad()
def accuracy(model: fv.Model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images whose top-1 class is the label."""
    return (model(x).argmax(1) == y).float().mean().item()


# -- where a map points ----------------------------------------------------------------------
def to_map(a) -> torch.Tensor:
    """(B, H, W) from what a method returns: an `LRPResult` gives its maps (relevance summed
    over colour), an `IGResult` its attributions; a (B, 3, H, W) map is reduced by the largest
    |value| over colour, as `fastviz.metrics` does."""
    if isinstance(a, fv.LRPResult):
        return a.maps
    if isinstance(a, fv.IGResult):
        a = a.attributions
    return a.abs().amax(1) if a.dim() == 4 else a


def in_box(boxes: torch.Tensor, size: int = SIDE) -> torch.Tensor:
    """(B, size, size) bool: the pixels inside each (y0, x0, y1, x1) box."""
    ar = torch.arange(size)
    y0, x0, y1, x1 = boxes.unbind(1)
    rows = (ar >= y0[:, None]) & (ar < y1[:, None])
    cols = (ar >= x0[:, None]) & (ar < x1[:, None])
    return rows[:, :, None] & cols[:, None, :]


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the map's largest value lies inside the box (Zhang et al. 2016, no tolerance)."""
    B, H, W = maps.shape
    top = maps.flatten(1).argmax(1)
    return in_box(boxes, H).flatten(1).gather(1, top[:, None])[:, 0]


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) share of the map's positive mass inside the box (Wang et al. 2020); 0 for a map
    with no positive value."""
    pos = maps.clamp_min(0).flatten(1).double()
    inside = (pos * in_box(boxes, maps.shape[-1]).flatten(1)).sum(1)
    return (inside / pos.sum(1).clamp_min(1e-30)).float()


def chance(boxes: torch.Tensor, size: int = SIDE) -> torch.Tensor:
    """(B,) the box's share of the image: what a map that points anywhere scores on average."""
    y0, x0, y1, x1 = boxes.unbind(1)
    return ((y1 - y0) * (x1 - x0)).float() / (size * size)


# -- every method, one call each -------------------------------------------------------------
# The CAMs' layer on the ViT: the last block's first LayerNorm, whose tokens (B, 65, 64) are
# laid out on the 8 x 8 patch grid (the convention of pytorch-grad-cam's ViT example).
VIT_CAM_LAYER = "blocks.3.norm1"


def methods(arch: str) -> dict:
    """{name: call(model, x, target) -> (B, H, W)} of every attribution method for an
    architecture ("cnn" or "vit"): the gradient maps, the CAMs (default layer on the CNN,
    VIT_CAM_LAYER on the ViT), the averaged gradients, LRP (it refuses the ViT), attention
    rollout (class-agnostic) and Chefer's attribution on the ViT."""
    layer = VIT_CAM_LAYER if arch == "vit" else None
    out = {
        "saliency": lambda m, x, t: fv.saliency(m, x, t),
        "guided_backprop": lambda m, x, t: fv.guided_backprop(m, x, t),
        "gradcam": lambda m, x, t: fv.gradcam(m, x, t, layer=layer),
        "guided_gradcam": lambda m, x, t: fv.guided_gradcam(m, x, t, layer=layer),
        "layercam": lambda m, x, t: fv.layercam(m, x, t, layer=layer),
        "scorecam": lambda m, x, t: fv.scorecam(m, x, t, layer=layer),
        "smoothgrad": lambda m, x, t: fv.smoothgrad(m, x, t, n=16, seed=0),
        "integrated_gradients": lambda m, x, t: fv.integrated_gradients(m, x, t, points=32),
        "lrp": lambda m, x, t: fv.lrp(m, x, t),
    }
    if arch == "vit":
        out["attention_rollout"] = lambda m, x, t: fv.attention_rollout(m, x)
        out["transformer_attribution"] = lambda m, x, t: fv.transformer_attribution(m, x, t)
    return {k: (lambda f: lambda m, x, t: to_map(f(m, x, t)))(f) for k, f in out.items()}


def measure(model: fv.Model, arch: str, x: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
            only=None) -> dict:
    """{method: {"pointing": hit rate, "energy": mean energy in box, "seconds": time}} of every
    method (or those named in `only`) explaining the true class of each image; a method that
    refuses the network gets {"refused": its message} instead."""
    rows = {}
    for name, call in methods(arch).items():
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            maps = call(model, x, labels)
        except fv.FastvizError as e:
            rows[name] = {"refused": str(e)}
            continue
        rows[name] = {"pointing": pointing_game(maps, boxes).float().mean().item(),
                      "energy": energy_in_box(maps, boxes).mean().item(),
                      "seconds": time.perf_counter() - t0}
    return rows
