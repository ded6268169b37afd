"""Files <-> tensors: the only module that reads images with PIL.

Images come back as float tensors in [0, 1], (B, 3, H, W): grayscale and RGBA are converted
to RGB, any size is resized (shorter side to size / crop) and centre-cropped to size x size,
the way ImageNet networks are evaluated.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from . import budget, checks
from .errors import FastvizError

# A file declaring more pixels is refused before decoding (PIL would raise its own bomb error).
MAX_FILE_PIXELS = 2 ** 28
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


def output_path(path, name: str = "path") -> Path:
    """A path to write a file to: not a folder, its parent folder made (FastvizError if it cannot be)."""
    if not isinstance(path, (str, os.PathLike)):
        raise FastvizError(f"{name}: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise FastvizError(f"{name}: {str(path)!r} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise FastvizError(f"{name}: cannot make the folder {str(path.parent)!r} ({e})") from e
    return path


@contextmanager
def atomic_write(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary name beside `path`; on a clean exit rename it onto `path` (docs/design.md, rule 11).

    A reader sees the old file or the whole new one, never a part; a killed or failed write leaves
    at most `.<name>.<pid>.tmp` (which the atlas sweeps away on resume), never a truncated `path`.
    `fsync` flushes the file to disk before the rename (for manifests a resume trusts).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_files(folder: PathLike) -> list[Path]:
    """Image files in a folder (by suffix, sorted); other files are ignored."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _high_bit(im) -> np.ndarray | None:
    """(H, W, 3) float32 in [0, 1] for 16-bit / float grayscale modes; None for 8-bit modes.

    16-bit grayscale ("I;16*", and "I" as PNG loads it) is divided by 65535: converting it to
    RGB clipped it at 255, so a 16-bit ramp loaded almost white. 32-bit float ("F") is taken
    as [0, 1] and clipped.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float32) / 65535.0
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    else:
        return None
    return np.repeat(a.clip(0, 1)[:, :, None], 3, axis=2)


def _rgb8(im):
    """8-bit modes -> an RGB PIL image; transparency composited over white, as a viewer shows it."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB")


def _resize_crop(im, size: int, crop: float):
    """A PIL image -> size x size: shorter side to size / crop (bicubic), centre crop."""
    from PIL import Image

    w, h = im.size
    short = max(size, round(size / crop))
    scale = short / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image(path: PathLike, size: int | None = 224, crop: float = 1.0) -> torch.Tensor:
    """One image file -> (3, size, size) float in [0, 1] (size None keeps the original size).

    8-bit files (gray, RGB, RGBA over white, palette) are / 255; 16-bit grayscale / 65535.
    Files declaring more than 2**28 pixels are refused before they are decoded.

    Raises:
        FastvizError: no such file, a folder, not a readable image, too large, bad size / crop.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, (str, os.PathLike)):
        raise FastvizError(f"path: expected a file path, got {type(path).__name__}")
    if size is not None:
        size = checks.int_in(size, "size", 1, checks.MAX_SIDE)
    crop = checks.number(crop, "crop", 0, 1, low_open=True)
    path = Path(path)
    if not path.exists():
        raise FastvizError(f"path: no such file {str(path)!r}")
    if path.is_dir():
        raise FastvizError(f"path: {str(path)!r} is a folder; load_images takes folders")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_FILE_PIXELS or max(w, h) > checks.MAX_SIDE * 4:
                raise FastvizError(f"path: {str(path)!r} declares {w}x{h} pixels, more than this "
                                   f"loader takes ({MAX_FILE_PIXELS} pixels); downscale it first")
            im.load()
            a = _high_bit(im)
            rgb = _rgb8(im) if a is None else None
    except FastvizError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            EOFError, MemoryError, IndexError, TypeError, KeyError) as e:
        raise FastvizError(f"path: {str(path)!r} is not a readable image ({type(e).__name__}: {e})") from e
    if a is None:
        if size is not None:
            rgb = _resize_crop(rgb, size, crop)
        a = np.asarray(rgb, dtype=np.float32) / 255.0
    elif size is not None:
        # per channel in float ("F" mode), so a 16-bit source keeps its precision
        from PIL import Image
        a = np.stack([np.asarray(_resize_crop(Image.fromarray(np.ascontiguousarray(a[:, :, c])), size, crop))
                      for c in range(3)], axis=2)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous().clamp_(0, 1)


def _expand(paths: PathLike | Iterable[PathLike], name: str = "paths") -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)):
        raise FastvizError(f"{name}: expected a file, a folder or a list of them, got {type(paths).__name__}")
    out: list[Path] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise FastvizError(f"{name}: expected file or folder paths, got {type(p).__name__} {p!r:.60}")
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
        return check_images(paths, name="paths", check_range=True)
    if size is not None:
        size = checks.int_in(size, "size", 1, checks.MAX_SIDE)
    checks.number(crop, "crop", 0, 1, low_open=True)
    files = _expand(paths)
    if size is not None:  # the batch is refused before any file is read if it cannot fit
        budget.check_output(len(files) * 3 * size * size * 4, torch.device("cpu"), "paths",
                            f"{len(files)} images of {size}x{size}",
                            "load fewer files per call (fastviz.features and embed read folders in batches)")
    out = None
    for i, p in enumerate(files):  # written into one batch: no list of images beside it
        one = load_image(p, size, crop)
        if out is None:
            out = one.new_empty((len(files), *one.shape))
        elif one.shape != out.shape[1:]:
            raise FastvizError(f"paths: images of different sizes ({tuple(out.shape[-2:])} and "
                               f"{tuple(one.shape[-2:])}, {str(p)!r}) do not make one batch; give size=")
        out[i] = one
    return out


def check_images(x, channels: int | None = None, name: str = "x", check_range: bool = False,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate an image batch -> (B, C, H, W) float: `fastviz.checks.images` (conversion rules there).

    Raises:
        FastvizError: not a tensor, wrong rank, wrong channel count, empty, too large, not finite.
    """
    return checks.images(x, channels, name, check_range=check_range, dtype=dtype)
