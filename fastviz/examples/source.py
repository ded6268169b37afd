"""Where the images of a scan come from: a folder (or files), a torch Dataset, or a tensor.

Every source numbers its images 0..N-1 (a folder: its image files sorted by name) and yields
batches of (indices, images, ok, errors). Decoding runs in DataLoader worker processes; an item
that cannot be read is not an exception in the worker: it comes back as ok=False with a message
naming it, and the scan skips it (docs/examples.md).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import FastvizError


def fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): shorter side to size, centre crop (as `io.load_image`)."""
    if x.shape[-2:] == (size, size):
        return x
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size].clamp(0, 1)


class FolderImages(torch.utils.data.Dataset):
    """Image files decoded at size x size; an unreadable one -> (i, zeros, False, message)."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, io.load_image(self.files[i], self.size), True, ""
        except Exception as e:  # a worker never raises: the scan names and skips the file
            return i, torch.zeros(3, self.size, self.size), False, f"{self.files[i]}: {e}"


def _as_image(item) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item:
        item = item[0]  # (image, label) as torchvision datasets give
    if isinstance(item, dict):
        item = item.get("image", item.get("img"))
    if not isinstance(item, torch.Tensor):
        if type(item).__module__.startswith("PIL"):
            item = np.asarray(item.convert("RGB"))
        if isinstance(item, np.ndarray):
            a = torch.from_numpy(np.ascontiguousarray(item))
            item = (a.float() / 255 if a.dtype == torch.uint8 else a.float())
            item = item.permute(2, 0, 1) if item.dim() == 3 and item.shape[-1] in (1, 3) else item
        else:
            raise TypeError(f"an item is a {type(item).__name__}, expected a (3, H, W) tensor in [0, 1], "
                            f"a PIL image or (image, label)")
    if item.dtype == torch.uint8:
        item = item.float() / 255
    if item.dim() == 2:
        item = item[None]
    if item.dim() != 3 or item.shape[0] not in (1, 3):
        raise TypeError(f"an item has shape {tuple(item.shape)}, expected (3, H, W)")
    item = item.float().expand(3, -1, -1)
    lo, hi = float(item.min()), float(item.max())
    if lo < -1e-3 or hi > 1 + 1e-3 or not np.isfinite([lo, hi]).all():
        raise ValueError(f"values in [{lo:.3g}, {hi:.3g}], expected [0, 1] (the model wrapper normalises; "
                         f"give unnormalised images)")
    return item


class WrappedDataset(torch.utils.data.Dataset):
    """A user's map-style Dataset -> (i, (3, size, size) image, ok, message)."""

    def __init__(self, dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, fit(_as_image(self.dataset[i]), self.size).contiguous(), True, ""
        except Exception as e:  # named and skipped by the scan, never a worker traceback
            return i, torch.zeros(3, self.size, self.size), False, f"item {i}: {type(e).__name__}: {e}"


def worker_context():
    """Workers forked from a forkserver that has imported fastviz, not from this process.

    A worker forked from the scanning process shares its heap copy-on-write, so every page the
    forward writes afterwards is copied once per call (measured: the scan of 128 images at 0.71x
    the forward floor with 1 worker, 0.91x decoding in the process itself). The forkserver pays
    its imports once per process; its workers start in milliseconds and share nothing with the
    forward. Where there is no forkserver, the default context.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # taken when the server starts (once per process)
    return ctx


class Source:
    """N images, their names, and batches of them.

    Args:
        data: a folder, a file, a list of files / folders, a map-style torch Dataset, or a
            (N, 3, H, W) tensor in [0, 1].
        size: side files and Dataset items are brought to (shorter side, centre crop; the
            network's input size); a tensor is scanned as it is.
    """

    def __init__(self, data, size: int):
        self.size, self.tensor, self.dataset, self.files = size, None, None, None
        self.shape = (size, size)
        if isinstance(data, torch.Tensor):
            self.tensor = io.check_images(data, 3, "data", check_range=True)
            self.names = [str(i) for i in range(self.tensor.shape[0])]
            self.shape = tuple(self.tensor.shape[-2:])  # a tensor is scanned at its own size
        elif isinstance(data, (str, os.PathLike, list, tuple)):
            items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
            for p in items:
                if not isinstance(p, (str, os.PathLike)):
                    raise FastvizError(f"data: expected a folder, files, a torch Dataset or a tensor, "
                                       f"got a list holding {type(p).__name__}")
                if not Path(p).exists():
                    raise FastvizError(f"data: no such file or folder {str(p)!r}")
            self.files = io._expand(items, "data")
            self.dataset = FolderImages(self.files, size)
            folders = [Path(p) for p in items if Path(p).is_dir()]
            root = folders[0] if len(folders) == 1 and len(items) == 1 else None
            self.names = [str(f.relative_to(root)) if root else str(f) for f in self.files]
        elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__getitem__"):
            try:
                n = len(data)
            except TypeError as e:
                raise FastvizError(f"data: a torch Dataset needs a length (a map-style Dataset), got "
                                   f"{type(data).__name__}") from e
            self.dataset = WrappedDataset(data, size)
            self.names = [str(i) for i in range(n)]
        else:
            raise FastvizError(f"data: expected a folder, files, a map-style torch Dataset or a (N, 3, H, W) "
                               f"tensor, got {type(data).__name__}")
        if len(self.names) == 0:
            raise FastvizError("data: holds no images")

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batches: list[range], num_workers: int, pin: bool) -> Iterator:
        """(indices (B,), images (B, 3, S, S), ok (B,) bool, messages) for each range of indices."""
        if self.tensor is not None:
            for r in batches:
                x = self.tensor[r.start:r.stop]
                yield torch.arange(r.start, r.stop), x, torch.ones(len(r), dtype=torch.bool), [""] * len(r)
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[list(r) for r in batches],
                                             num_workers=num_workers, pin_memory=pin,
                                             prefetch_factor=4 if num_workers else None,
                                             multiprocessing_context=worker_context() if num_workers else None)
        yield from loader

    def load(self, indices: list[int]) -> torch.Tensor:
        """(len(indices), 3, S, S) images, decoded here (for crops); an unreadable one is black."""
        if self.tensor is not None:
            return self.tensor[torch.as_tensor(indices, dtype=torch.long)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.stack([self.dataset[i][1] for i in indices]) if indices else \
                torch.zeros(0, 3, self.size, self.size)

