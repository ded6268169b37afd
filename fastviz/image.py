"""Pictures a person can look at: display normalisation, heatmaps, overlays, grids, saving.

All functions take and return float tensors in [0, 1] on the CPU or GPU; only `save_image`
touches the disk. Heatmaps use OpenCV colormaps. NaN and inf have no colour: `normalize`,
`heatmap`, `overlay` and `grid` refuse them (naming the argument); `save_image` writes NaN as 0
and clips everything else into [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .errors import FastvizError
from .io import atomic_write, output_path

SAVE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _tensor(t, name: str, finite: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise FastvizError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise FastvizError(f"{name}: expected a real tensor, got {t.dtype}")
    if t.numel() == 0:
        raise FastvizError(f"{name}: empty tensor of shape {tuple(t.shape)}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise FastvizError(f"{name}: holds NaN or inf values, which have no colour; replace them "
                           f"first if you mean a value, e.g. torch.nan_to_num(t, nan=0.0)")
    return t


_COLORMAPS = {"jet": 2, "inferno": 9, "viridis": 16, "magma": 13, "turbo": 20, "hot": 11,
              "bwr": None}  # bwr: blue-white-red, for signed maps (LRP): 0.5 is white


def _bwr(v: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 3, H, W): blue (0) through white (0.5) to red (1)."""
    up = (2 * v).clamp(max=1)        # rises to 1 at the centre
    down = (2 - 2 * v).clamp(max=1)  # falls from 1 after the centre
    return torch.stack([up, up.minimum(down), down], 1)


def minmax(maps: torch.Tensor, *, constant: float = 0.0) -> torch.Tensor:
    """Per row (first dim) (m - min) / (max - min) over all other dims, in [0, 1]; a constant row
    becomes `constant`. The one min-max of fastviz: CAMs, filters, `normalize`, Score-CAM masks."""
    flat = maps.flatten(1)
    lo = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), constant)
    return out.view_as(maps)


def normalize(t: torch.Tensor, mode: str = "minmax", *, q: float = 0.995) -> torch.Tensor:
    """Map each image (first dim = batch when t.dim() is 4, or (B, H, W) maps) into [0, 1].

    Args:
        t: (B, C, H, W), (C, H, W), (B, H, W) or (H, W) tensor.
        mode: "minmax": (t - min) / (max - min) per image;
            "percentile": clip at the q-quantile of |t| then scale to [0, 1] (robust for saliency);
            "signed": 0.5 + t / (2 * q-quantile of |t|), for signed gradients (0 -> grey).
        q: the quantile used by "percentile" and "signed".

    Returns:
        Same shape, values in [0, 1].
    """
    checks.choice(mode, "mode", ("minmax", "percentile", "signed"))
    q = checks.number(q, "q", 0, 1)
    t = _tensor(t, "t", finite=True)
    t = t.detach().float()
    batched = t.dim() == 4 or (t.dim() == 3 and t.shape[0] not in (1, 3))
    flat = t.reshape(t.shape[0], -1) if batched else t.reshape(1, -1)
    if mode == "minmax":
        out = minmax(flat)
    else:
        scale = torch.quantile(flat.abs(), q, dim=1, keepdim=True).clamp_min(1e-12)
        if mode == "percentile":
            out = (flat.abs() / scale).clamp(0, 1)
        else:
            out = (0.5 + flat / (2 * scale)).clamp(0, 1)
    return out.reshape(t.shape)


def heatmap(m: torch.Tensor, *, colormap: str = "jet", normalize_mode: str = "minmax") -> torch.Tensor:
    """(H, W) or (B, H, W) map -> (3, H, W) or (B, 3, H, W) RGB colours in [0, 1]."""
    import cv2

    checks.choice(colormap, "colormap", sorted(_COLORMAPS))
    checks.choice(normalize_mode, "normalize_mode", ("minmax", "percentile", "signed"))
    m = _tensor(m, "m", finite=True)
    if m.dim() not in (2, 3):
        raise FastvizError(f"m: expected a map (H, W) or (B, H, W), got shape {tuple(m.shape)}")
    maps = normalize(m if m.dim() == 3 else m[None], normalize_mode)
    if colormap == "bwr":
        res = _bwr(maps.float())
        return res if m.dim() == 3 else res[0]
    out = []
    for one in maps.cpu().numpy():
        bgr = cv2.applyColorMap((one * 255).round().astype(np.uint8), _COLORMAPS[colormap])
        out.append(torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255)
    res = torch.stack(out).to(m.device)
    return res if m.dim() == 3 else res[0]


def overlay(image: torch.Tensor, m: torch.Tensor, *, alpha: float = 0.5, colormap: str = "jet",
            normalize_mode: str = "minmax") -> torch.Tensor:
    """A heatmap of `m` blended over `image`.

    Args:
        image: (3, H, W) or (B, 3, H, W) in [0, 1].
        m: (H, W) or (B, H, W) map; resized to the image if its size differs.
        alpha: weight of the heatmap.

    Returns:
        Same shape as `image`.
    """
    alpha = checks.number(alpha, "alpha", 0, 1)
    checks.choice(colormap, "colormap", sorted(_COLORMAPS))
    checks.choice(normalize_mode, "normalize_mode", ("minmax", "percentile", "signed"))
    image, m = _tensor(image, "image", finite=True), _tensor(m, "m", finite=True)
    single = image.dim() == 3
    img = image[None] if single else image
    maps = m[None] if m.dim() == 2 else m
    if img.dim() != 4 or maps.dim() != 3 or img.shape[0] != maps.shape[0]:
        raise FastvizError(f"image/m: expected (3, H, W) with (H, W) or (B, 3, H, W) with (B, H, W), "
                           f"got {tuple(image.shape)} and {tuple(m.shape)}")
    if img.shape[1] not in (1, 3):
        raise FastvizError(f"image: expected 3 channels (RGB) or 1 (gray), got {img.shape[1]} in shape "
                           f"{tuple(image.shape)}" + ("; drop the alpha channel: image[..., :3, :, :]"
                                                     if img.shape[1] == 4 else ""))
    if maps.shape[-2:] != img.shape[-2:]:
        maps = F.interpolate(maps[:, None].float(), size=img.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
    heat = heatmap(maps, colormap=colormap, normalize_mode=normalize_mode).to(img.device)
    out = (1 - alpha) * img.detach().float() + alpha * heat
    return out[0] if single else out


def grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0,
         scale: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> (C, H', W') images laid out in rows, `padding` pixels of `pad_value` between.

    Args:
        nrow: images per row (default: about sqrt(N)).
        scale: integer nearest-neighbour upscaling of each image (to see small filters).
    """
    images = _tensor(images, "images")
    if nrow is not None:
        nrow = checks.positive_int(nrow, "nrow")
    padding = checks.int_in(padding, "padding", 0, 1024)
    pad_value = checks.number(pad_value, "pad_value")
    scale = checks.positive_int(scale, "scale", 64)
    if images.dim() == 3:
        images = images[:, None] if images.shape[0] not in (1, 3) else images[None]
    if images.dim() != 4 or images.shape[0] == 0:
        raise FastvizError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    per_row = nrow or max(1, int(np.ceil(np.sqrt(n))))
    side_h = -(-n // per_row) * (h * scale + padding) + padding
    side_w = per_row * (w * scale + padding) + padding
    if max(side_h, side_w) > 16 * checks.MAX_SIDE or c * side_h * side_w > checks.MAX_ELEMENTS:
        raise FastvizError(f"images/nrow/scale: a grid of {n} images of {h}x{w} at scale {scale} would be "
                           f"{side_h}x{side_w} pixels, too large")
    _tensor(images, "images", finite=True)
    images = images.detach().float()
    if scale > 1:
        images = images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = (n + nrow - 1) // nrow
    out = images.new_full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        out[:, top:top + h, left:left + w] = images[i]
    return out


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write (C, H, W) or (H, W) in [0, 1] (a batch (N, C, H, W) is laid out as a grid) to PNG/JPEG.

    Values outside [0, 1] are clipped. Returns the path written.
    """
    from PIL import Image

    image = _tensor(image, "image")
    if not isinstance(path, (str, os.PathLike)):
        raise FastvizError(f"path: expected a file path, got {type(path).__name__}")
    if Path(path).suffix.lower() not in SAVE_SUFFIXES:
        raise FastvizError(f"path: expected a file name ending in {', '.join(SAVE_SUFFIXES)}, got {str(path)!r}")
    t = image.detach().float().cpu()
    if t.dim() == 4:
        t = grid(t)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        arr = t.numpy()
    elif t.dim() == 3 and t.shape[0] == 3:
        arr = t.permute(1, 2, 0).numpy()
    else:
        raise FastvizError(f"image: expected (3, H, W), (H, W) or (N, 3, H, W), got shape {tuple(image.shape)}")
    path = output_path(path)
    pixels = Image.fromarray((np.nan_to_num(arr.clip(0, 1)) * 255).round().astype(np.uint8))
    with atomic_write(path) as tmp:
        pixels.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
    return path
