"""Files <-> tensors: the only module that reads images with PIL.

Images come back as float tensors in [0, 1], (B, 3, H, W): grayscale and RGBA are converted
to RGB, any size is resized (shorter side to size / crop) and centre-cropped to size x size,
the way ImageNet networks are evaluated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import FastvizError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PathLike = str | os.PathLike


def sample_images() -> dict[str, Path]:
    """Real photos that ship with scikit-image and scikit-learn, by name (no download)."""
    import skimage
    import sklearn.datasets

    sk = Path(skimage.__file__).parent / "data"
    sl = Path(sklearn.datasets.__file__).parent / "images"
    photos = {
        "chelsea": sk / "chelsea.png",      # ImageNet 285, Egyptian cat
        "coffee": sk / "coffee.png",        # 967, espresso
        "astronaut": sk / "astronaut.png",
        "rocket": sk / "rocket.jpg",
        "motorcycle": sk / "motorcycle_left.png",
        "china": sl / "china.jpg",
        "flower": sl / "flower.jpg",
    }
    return {k: v for k, v in photos.items() if v.is_file()}


def image_files(folder: PathLike) -> list[Path]:
    """Image files in a folder (by suffix, sorted); other files are ignored."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: PathLike, size: int | None = 224, crop: float = 1.0) -> torch.Tensor:
    """One image file -> (3, size, size) float in [0, 1] (size None keeps the original size)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FastvizError(f"path: no such file {str(path)!r}")
    if path.is_dir():
        raise FastvizError(f"path: {str(path)!r} is a folder; load_images takes folders")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                # Composite transparency over white, the way a viewer shows it.
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FastvizError(f"path: {str(path)!r} is not a readable image ({e})") from e
    if size is not None:
        if not 0 < crop <= 1:
            raise FastvizError(f"crop: expected a fraction in (0, 1], got {crop}")
        w, h = im.size
        short = max(size, round(size / crop))
        scale = short / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().clamp_(0, 1)


def _expand(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise FastvizError(f"paths: folder {str(p)!r} holds no image files "
                                   f"({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise FastvizError("paths: expected at least one image file or folder, got none")
    return out


def load_images(paths: PathLike | Sequence[PathLike] | torch.Tensor, size: int | None = 224,
                crop: float = 1.0) -> torch.Tensor:
    """Files, folders or a tensor -> (B, 3, size, size) float in [0, 1].

    Args:
        paths: a file, a folder (its image files, sorted by name), a list of either, or a tensor
            (3, H, W) / (B, 3, H, W) already in [0, 1], returned as a float batch.
        size: output side; images are resized (shorter side to size / crop) and centre-cropped.
        crop: the centre fraction of the shorter side kept (ImageNet evaluation often uses 0.875;
            the default 1.0 keeps the whole shorter side: sample photos are framed tightly).

    Raises:
        FastvizError: a missing file, a file that is not an image, an empty folder.

    Example:
        >>> load_images(sample_images()["chelsea"]).shape
        torch.Size([1, 3, 224, 224])
    """
    if isinstance(paths, torch.Tensor):
        return check_images(paths)
    files = _expand(paths)
    return torch.stack([load_image(p, size, crop) for p in files])


def check_images(x, channels: int | None = None, name: str = "x") -> torch.Tensor:
    """Validate an image batch: (B, C, H, W) or (C, H, W) floating tensor -> (B, C, H, W).

    Raises:
        FastvizError: not a tensor, wrong rank, wrong channel count, empty, not finite.
    """
    if not isinstance(x, torch.Tensor):
        raise FastvizError(f"{name}: expected a tensor of images (B, C, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise FastvizError(f"{name}: expected images (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise FastvizError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise FastvizError(f"{name}: empty batch, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FastvizError(f"{name}: expected float images in [0, 1], got dtype {x.dtype}")
    return x
