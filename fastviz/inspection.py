"""Inspection, forward only: first-layer filters as pictures, and the features of a layer.

`filters` / `filter_grid` read the weights of the first convolution that takes RGB.
`features` runs images through the network up to a layer (default: the input of the
classifier, the penultimate features) and stops the forward there; `fastviz.embedding` maps
them to 2-D.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import budget, checks, io
from .errors import FastvizError
from .hooks import StopForward, on_device, session
from .progress import reporter
from .image import grid, minmax
from .models import Model, as_model

NORMALIZE = ("per_filter", "shared")


# -- filters --------------------------------------------------------------------------------
def _first_rgb_conv(m: Model, layer: str | None) -> tuple[str, nn.Conv2d]:
    if layer is not None:
        conv = m.layer(layer)
        if not isinstance(conv, nn.Conv2d):
            raise FastvizError(f"layer: {layer!r} is a {type(conv).__name__}, not an nn.Conv2d")
        if conv.weight.shape[1] != 3:
            raise FastvizError(f"layer: {layer!r} takes {conv.weight.shape[1]} input channels per "
                               f"filter; filters are drawn as RGB pictures, so it must take 3")
        return layer, conv
    convs = [(n, c) for n, c in m.module.named_modules() if isinstance(c, nn.Conv2d)]
    if not convs:
        raise FastvizError(f"model: {m.name} has no nn.Conv2d, so there are no filters to draw")
    name, conv = convs[0]
    if conv.weight.shape[1] != 3:
        rgb = [n for n, c in convs if c.weight.shape[1] == 3]
        hint = (f"; convolutions that do take 3: {', '.join(rgb[:5])}" if rgb
                else "; no convolution in it takes 3")
        raise FastvizError(
            f"model: the first convolution of {m.name}, {name!r}, takes {conv.weight.shape[1]} "
            f"input channels per filter, not 3 (RGB); name an RGB convolution with layer=...{hint}")
    return name, conv


def filters(model: Model | nn.Module, layer: str | None = None, *,
            normalize: str = "per_filter") -> torch.Tensor:
    """The weights of the first RGB convolution, mapped into [0, 1] to be seen as pictures.

    Args:
        model: `Model` or nn.Module.
        layer: dotted name of an nn.Conv2d taking 3 channels (default: the first nn.Conv2d in
            module order, which must take 3).
        normalize: "per_filter" (default): each filter min-max scaled on its own, so every
            filter's pattern shows; networks with batch norm after the first conv (ResNet,
            DenseNet, EfficientNet) rescale each channel anyway, so raw magnitudes mean little.
            "shared": one min-max over all filters, so relative strength shows (weak or dead
            filters come out flat grey); meaningful for networks without batch norm (AlexNet, VGG).

    Returns:
        (N, 3, kh, kw) float on the CPU, in [0, 1]; a constant filter is 0.5 (grey).

    Raises:
        FastvizError: no conv, the first conv does not take 3 channels, bad `layer` or `normalize`.

    Example:
        >>> filters(load_model("alexnet", weights=None)).shape
        torch.Size([64, 3, 11, 11])
    """
    if normalize not in NORMALIZE:
        raise FastvizError(f"normalize: expected 'per_filter' or 'shared', got {normalize!r}")
    m = as_model(model)
    _, conv = _first_rgb_conv(m, layer)
    w = conv.weight.detach().float().cpu()
    flat = w.reshape(w.shape[0], -1) if normalize == "per_filter" else w.reshape(1, -1)
    return minmax(flat, constant=0.5).reshape(w.shape)


def filter_grid(model: Model | nn.Module, layer: str | None = None, *, normalize: str = "per_filter",
                scale: int | None = None, nrow: int | None = None, padding: int = 2,
                pad_value: float = 1.0) -> torch.Tensor:
    """The first-layer filters laid out as one picture, upsampled, with borders between them.

    Args:
        model, layer, normalize: as in `filters`.
        scale: integer nearest-neighbour upsampling (default: the smallest making a filter at
            least 24 pixels wide: 8 for 3x3, 4 for 7x7, 3 for 11x11).
        nrow: filters per row (default: about sqrt(N)).
        padding: border pixels between filters, of value `pad_value`.

    Returns:
        (3, H, W) in [0, 1]: filter i at row i // nrow, column i % nrow.
    """
    f = filters(model, layer, normalize=normalize)
    if scale is None:
        scale = max(1, math.ceil(24 / max(f.shape[-2:])))
    if not isinstance(scale, int) or scale < 1:
        raise FastvizError(f"scale: expected a positive integer, got {scale!r}")
    if nrow is not None and (not isinstance(nrow, int) or nrow < 1):
        raise FastvizError(f"nrow: expected a positive integer, got {nrow!r}")
    return grid(f, nrow=nrow, padding=padding, pad_value=pad_value, scale=scale)


# -- features -------------------------------------------------------------------------------
def _classifier(m: Model) -> tuple[str, nn.Linear]:
    last = None
    for n, mod in m.module.named_modules():
        if isinstance(mod, nn.Linear):
            last = (n, mod)
    if last is None:
        raise FastvizError(f"layer: {m.name} has no nn.Linear classifier whose input to embed; "
                           f"name a layer with layer=... (`fastviz layers` lists them)")
    return last


def _classifier_input(s, name: str, fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The input of `fc` for images x, with the rest of the forward skipped."""
    s.check_single_use([name], x)
    got: list[torch.Tensor] = []

    def grab(_m, inputs):
        got.append(inputs[0])
        raise StopForward

    with s.hook(fc, grab, "pre"):
        s.run(x)
    if not got:
        raise FastvizError(f"layer: the classifier {name!r} did not run in the forward of "
                           f"{s.model.name}; name the layer to embed with layer=...")
    return got[0]


def _pooled(out: torch.Tensor, pool: str) -> torch.Tensor:
    if out.dim() == 4 and pool == "avg":
        return out.mean((2, 3))
    return out.flatten(1)


def _source(images_or_folder, size, m: Model | None = None
            ) -> tuple[int, Callable[[int, int], torch.Tensor], list[str], list[Path] | None]:
    """(N, get(i, j) -> images i:j, names, paths) for a tensor, a file, a folder or a list."""
    if isinstance(images_or_folder, torch.Tensor):
        x = io.check_images(images_or_folder, 3, "images_or_folder",
                            check_range=m is not None and m.mean is not None)
        return x.shape[0], lambda i, j: x[i:j], [str(i) for i in range(x.shape[0])], None
    if not isinstance(images_or_folder, (str, os.PathLike, list, tuple)):
        raise FastvizError(f"images_or_folder: expected a tensor, a folder, a file or a list of "
                           f"files, got {type(images_or_folder).__name__}")
    items = [images_or_folder] if isinstance(images_or_folder, (str, os.PathLike)) else images_or_folder
    odd = next((p for p in items if not isinstance(p, (str, os.PathLike))), None)
    if odd is not None or not items:
        what = "nothing" if not items else f"a list holding {type(odd).__name__} {checks._show(odd, 40)}"
        hint = ("; images as numbers go in a tensor (N, 3, H, W): torch.tensor(values)"
                if isinstance(odd, (list, tuple, float, int)) else "")
        raise FastvizError(f"images_or_folder: expected a tensor, a folder, a file or a list of "
                           f"files, got {what}{hint}")
    for p in map(Path, items):
        if p.is_dir():
            skipped = [f.name for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() not in io.IMAGE_SUFFIXES]
            if skipped:
                warnings.warn(f"images_or_folder: skipped {len(skipped)} file(s) without an image "
                              f"suffix in {str(p)!r}: {', '.join(skipped[:3])}"
                              f"{' ...' if len(skipped) > 3 else ''}", stacklevel=3)
    files = io._expand(list(items), "images_or_folder")
    return len(files), lambda i, j: io.load_images(files[i:j], size=size), [f.name for f in files], files


@dataclass
class Features:
    """features (N, D) float on the CPU; predictions (N,) top-1 class or None; thumbnails."""

    features: torch.Tensor
    predictions: torch.Tensor | None
    images: torch.Tensor
    names: list[str]
    paths: list[Path] | None


def _bar_factory_is_a_bar(progress):
    """The old form of `progress` (a tqdm class or a partial of one) means a bar."""
    func = getattr(progress, "func", progress)
    if isinstance(func, type):
        warnings.warn("progress=<a tqdm class> is deprecated: use progress=True for a bar, or a "
                      "callable progress(done, total)", DeprecationWarning, stacklevel=3)
        return True
    return progress


def features(model: Model | nn.Module, images_or_folder, *, layer: str | None = None,
             batch_size: int = 32, device: str | torch.device | None = None, pool: str = "avg",
             thumbnail: int = 64, progress: Callable | bool | None = None) -> Features:
    """Features of every image at one layer, in batches, with the forward stopped there.

    Args:
        model: `Model` or nn.Module.
        images_or_folder: (N, 3, H, W) tensor in [0, 1], an image file, a folder (files without
            an image suffix are skipped with a warning; an unreadable image is an error), or a
            list of files and folders.
        layer: dotted module name whose output is the feature (4-D outputs are averaged over
            space with pool="avg", flattened with pool="flatten"); default: the input of the last
            nn.Linear, i.e. the penultimate features (AlexNet/VGG FC7, ResNet's pooled 2048-d).
        batch_size: images per forward; files are read one batch at a time.
        device: where to run (default: the model's device); the network is moved there for the
            call and moved back after it.
        thumbnail: side of the thumbnails kept for maps.
        progress: None, True (a progress bar) or progress(images_done, images) (the shared
            protocol, `fastviz.progress`). A tqdm class or partial (the old form) still gives a
            bar, with a DeprecationWarning.

    Returns:
        `Features(features (N, D), predictions (N,) or None, images (N, 3, t, t), names, paths)`.
        With the default layer the predictions are the classifier applied to the captured
        features (the same as a whole forward); with a named layer they are None.
    """
    m = as_model(model)
    batch_size = checks.positive_int(batch_size, "batch_size")
    checks.choice(pool, "pool", ("avg", "flatten"))
    thumbnail = checks.int_in(thumbnail, "thumbnail", 1, 1024)
    checks.device(device)
    if layer is not None:
        m.layer(layer)
    progress = _bar_factory_is_a_bar(checks.progress(progress))
    size = m.input_size[0] if m.input_size else 224
    n, get, names, paths = _source(images_or_folder, size, m)
    feats, preds, thumbs = [], [], []
    try:
        with on_device(m, device) as dev, session(m) as s, torch.no_grad(), \
                reporter(progress, n, unit="image", desc="features") as rep:
            fc = _classifier(m) if layer is None else None
            # images per forward within the memory budget, beside the thumbnails kept for all
            kept = n * 3 * thumbnail * thumbnail * 4
            budget.check_output(kept, dev, "images_or_folder", f"{n} thumbnails of {thumbnail}x{thumbnail}",
                                "lower thumbnail, or pass fewer images per call")
            batch_size = budget.rows(m, get(0, 1).to(dev, torch.float32), grad=False, total=batch_size,
                                     fixed=kept, name="images_or_folder")
            for i in range(0, n, batch_size):
                x = get(i, i + batch_size).to(dev, torch.float32)
                if fc is not None:
                    f = _classifier_input(s, *fc, x).flatten(1)
                    # F.linear, not the module: the user's hooks on it see no extra call
                    preds.append(F.linear(f, fc[1].weight, fc[1].bias).argmax(1))
                else:
                    acts, _ = s.forward(x, [layer], stop=True)
                    f = _pooled(acts[layer], pool)
                # kept on the device: one copy to the host at the end, no sync per batch
                feats.append(f.float())
                thumbs.append(F.interpolate(x, size=(thumbnail, thumbnail), mode="bilinear",
                                            antialias=True, align_corners=False).clamp(0, 1))
                rep.update(min(i + batch_size, n))
            out = Features(torch.cat(feats).cpu(), torch.cat(preds).cpu() if preds else None,
                           torch.cat(thumbs).cpu(), names, paths)
    except RuntimeError as e:
        if device is not None and ("CUDA" in str(e) or "device" in str(e)):
            raise FastvizError(f"device: could not run on {device} ({e})") from e
        raise
    return out
