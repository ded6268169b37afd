"""A demo data set that needs no download: crops, flips and scales of the bundled sample photos.

Each photo from `io.sample_images()` gives `per_photo` views: a square crop of a random
fraction of its shorter side (0.3 to 1.0) at a random place, flipped left-right half the time,
resized to `size`. The views are drawn from a seeded generator, so the set is the same on every
call and machine. A map of the set can be judged by eye and by number: views of one photo
should land together (`sources` says which photo each view came from).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import checks
from .io import load_image, sample_images

SMALLEST_CROP = 0.3


class DemoSet(NamedTuple):
    """images (N, 3, size, size) in [0, 1]; sources (N,) index of the source photo; names (N,)."""

    images: torch.Tensor
    sources: torch.Tensor
    names: list[str]


def demo_photos() -> list[str]:
    """Names of the source photos, in the order `DemoSet.sources` indexes them."""
    return list(sample_images())


def demo_set(per_photo: int = 40, size: int = 224, seed: int = 0) -> DemoSet:
    """Views of the sample photos: a few hundred images (7 photos x 40 by default).

    Args:
        per_photo: views per photo; the first is always the whole centre square, unflipped.
        size: side of every view.
        seed: the generator seed (the default set is what the docs and tests measure).

    Returns:
        `DemoSet(images, sources, names)`; names read "chelsea/07_s0.45_flip".

    Example:
        >>> demo_set(per_photo=2, size=32).images.shape
        torch.Size([14, 3, 32, 32])
    """
    per_photo = checks.positive_int(per_photo, "per_photo", 10_000)
    size = checks.int_in(size, "size", 8, 2048)
    seed = checks.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, sources, names = [], [], []
    for p, (photo, path) in enumerate(sample_images().items()):
        full = load_image(path, size=None)
        _, h, w = full.shape
        short = min(h, w)
        for v in range(per_photo):
            u = torch.rand(4, generator=gen).tolist()
            if v == 0:
                frac, fy, fx, flip = 1.0, 0.5, 0.5, False
            else:
                frac = SMALLEST_CROP + (1 - SMALLEST_CROP) * u[0]
                fy, fx, flip = u[1], u[2], u[3] < 0.5
            side = max(8, round(frac * short))
            top, left = round(fy * (h - side)), round(fx * (w - side))
            crop = full[:, top:top + side, left:left + side]
            if flip:
                crop = crop.flip(-1)
            view = F.interpolate(crop[None], size=(size, size), mode="bilinear",
                                 align_corners=False, antialias=True)[0].clamp_(0, 1)
            images.append(view)
            sources.append(p)
            names.append(f"{photo}/{v:02d}_s{frac:.2f}{'_flip' if flip else ''}")
    return DemoSet(torch.stack(images), torch.tensor(sources), names)
