"""Dataset examples: the images of a data set that excite each channel of a layer most.

`dataset_examples(model, data, layer=...)` scans a folder, a torch Dataset or a tensor once
(`scan`): decoded in DataLoader workers, batched, the forward stopped at the deepest requested
layer, every channel's running top-k kept on the device (`topk`). Each example's crop is the
receptive field of its maximum, measured on the network by a gradient probe (`field`). The
result (`result.Examples`) gives indices, scores, crops, and saves PNGs with a manifest in the
atlas's layout, so `fastviz.atlas` shows them beside each unit's picture. Rooms: `source`
(folders, Datasets, tensors; unreadable items named and skipped), `topk`, `field`, `scan`
(resume, shards under torchrun), `result`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .. import checks
from ..errors import FastvizError
from ..hooks import on_device
from ..models import as_model
from ..progress import ProgressArg
from ..render import layer_shape
from .field import boxes, receptive_field
from .result import EXAMPLES_MANIFEST, EXAMPLES_SETTINGS, Examples, unit_name
from .scan import scan
from .source import Source

__all__ = ["dataset_examples", "Examples", "EXAMPLES_MANIFEST", "EXAMPLES_SETTINGS", "unit_name"]


def _check_score(score):
    if isinstance(score, str):
        return checks.choice(score, "score", ("max", "mean"))
    if isinstance(score, (tuple, list)) and len(score) == 2:
        return tuple(checks.int_in(v, "score", 0) for v in score)
    raise FastvizError(f"score: expected 'max', 'mean' or a neuron's position (y, x), got {score!r:.60}")


def dataset_examples(model, data, *, layer: str | Sequence[str], channels="all", k: int = 9,
                     score="max", field: float = 0.9, batch_size: int = 32, num_workers: int = 0, size: int | None = None,
                     device=None, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
                     force: bool = False, progress: ProgressArg = None, timeout: float = 7200.0
                     ) -> Examples | dict[str, Examples]:
    """The k images of `data` that excite each channel of `layer` most, in one streaming pass.

    Args:
        model: `Model` or nn.Module.
        data: a folder (its image files, sorted by name), a file or list of files / folders, a
            map-style torch Dataset (items: a (3, H, W) tensor in [0, 1], a PIL image, or
            (image, label)), or a (N, 3, H, W) tensor in [0, 1]. Files and items are brought to
            `size` (shorter side, centre crop); a tensor is used as it is.
        layer: a layer name, or a list of them (one pass for all, stopped at the deepest).
        channels: "all" or channel indices (the same for every layer).
        k: examples per channel; more than the images read keeps them all, with a warning.
        score: "max" (the channel's spatial maximum, as OpenAI Microscope), "mean", or (y, x):
            one neuron, its value at that position of the map. Ties go to the lower image index.
        field: the crop around each maximum is the receptive field of that position measured on
            the network (a gradient probe): the middle `field` share of the gradient's mass along
            rows and columns (the effective field); 1.0 keeps every pixel that can change the unit
            (the theoretical field, often the whole image for deep layers).
        batch_size: images per forward.
        num_workers: DataLoader worker processes decoding files (0: in this process).
        size: side of decoded images (default: the model's input size, else 224).
        device: where to run (default: the model's device; under torchrun with CUDA, cuda:LOCAL_RANK).
        checkpoint: a folder for the running state, saved every `checkpoint_every` batches
            (atomically); the same call again resumes after the last state saved. None: no resume.
        force: start over when `checkpoint` holds a scan with other settings.
        progress: None, True (a bar) or progress(images_done, images) (`fastviz.progress`;
            under torchrun rank 0 reports its share).
        timeout: seconds the ranks wait for each other under torchrun.

    Returns:
        `Examples` for one layer (a dict layer -> `Examples` for a list): `indices[c]`,
        `scores[c]` (k,) best first, `crops(c)` (k, 3, fh, fw), `save(out)`.

    Raises:
        FastvizError: bad arguments, an unknown layer or one whose output is not a feature map,
            an empty folder, no readable image, a checkpoint from other settings.

    Example:
        >>> ex = dataset_examples(load_model(), "photos/", layer="_blocks.10", k=9)
        >>> ex.indices[5].shape, ex.crops(5).shape[:2]
        (torch.Size([9]), torch.Size([9, 3]))
    """
    m = as_model(model)
    layers = [layer] if isinstance(layer, str) else layer
    if not isinstance(layers, Sequence) or not layers or not all(isinstance(n, str) for n in layers):
        raise FastvizError(f"layer: expected a layer name or a list of them, got {layer!r:.80}")
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise FastvizError(f"layer: listed twice in {layers}")
    k = checks.positive_int(k, "k")
    score = _check_score(score)
    field = checks.number(field, "field", 0.0, 1.0, low_open=True)
    batch_size = checks.positive_int(batch_size, "batch_size")
    num_workers = checks.int_in(num_workers, "num_workers", 0, 64)
    if size is not None:
        size = checks.int_in(size, "size", 8, checks.MAX_SIDE)
    checks.device(device)
    every = checks.positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise FastvizError(f"checkpoint: expected a folder path or None, got {type(checkpoint).__name__}")
        checkpoint = Path(checkpoint)
        if checkpoint.exists() and not checkpoint.is_dir():
            raise FastvizError(f"checkpoint: expected a folder, got the file {str(checkpoint)!r}")
    if not isinstance(force, bool):
        raise FastvizError(f"force: expected True or False, got {type(force).__name__}")
    checks.progress(progress)
    checks.number(timeout, "timeout", 0.0, low_open=True)
    for n in layers:
        m.layer(n)
    source = Source(data, size or (m.input_size[0] if m.input_size else 224))
    shapes = {n: layer_shape(m, n, source.shape, name="layer") for n in layers}
    chans = {}
    for n, (C, h, w) in shapes.items():
        if isinstance(channels, str):
            if channels != "all":
                raise FastvizError(f"channels: expected 'all' or channel indices, got {channels!r}")
            chans[n] = list(range(C))
        else:
            chans[n] = checks.index_list(channels, "channels", C, "channel", f"channels in {n!r}")
        if len(set(chans[n])) != len(chans[n]):
            raise FastvizError("channels: a channel is listed twice")
        if isinstance(score, tuple) and not (score[0] < h and score[1] < w):
            raise FastvizError(f"score: position {score} is outside {n!r}'s {h}x{w} map")
    n_images = len(source)
    if k > n_images:
        warnings.warn(f"k: {k} is more than the {n_images} images of data; keeping all {n_images}", stacklevel=2)
        k = n_images
    settings = {"layers": layers, "channels": {n: chans[n] for n in layers}, "k": k,
                "score": list(score) if isinstance(score, tuple) else score, "batch_size": batch_size,
                "images": n_images, "names": _digest(source.names), "size": list(source.shape),
                # the weights' hash (68 ms for Lite0) only where a resume must check it
                "model": _model_digest(m) if checkpoint is not None else None}
    from ..atlas.distributed import distributed

    with distributed(device, timeout) as (d, dev), on_device(m, dev) as dev:
        states, skipped, read = scan(m, source, layers, chans, k, score, batch_size=batch_size,
                                     num_workers=num_workers, dev=dev, d=d, checkpoint=checkpoint, every=every,
                                     force=force, settings=settings, progress=progress)
        fields = {n: receptive_field(m, n, source.shape, shapes[n][1:], dev, field) for n in layers}
    if read == 0:
        first = f"; the first: {skipped[0][1]}" if skipped else ""
        raise FastvizError(f"data: none of its {n_images} images could be read{first}")
    if read < k:
        warnings.warn(f"k: only {read} images could be read; keeping {read} per channel", stacklevel=2)
    kk = min(k, read)
    out = {}
    for n in layers:
        C, h, w = shapes[n]
        st = states[n]
        rows_, cols_ = fields[n]
        idx = torch.full((C, kk), -1, dtype=torch.long)
        sc = torch.full((C, kk), float("nan"))
        pos = torch.zeros((C, kk), dtype=torch.long)
        sel = torch.tensor(chans[n])
        idx[sel], sc[sel], pos[sel] = st["indices"][:, :kk], st["scores"][:, :kk], st["positions"][:, :kk]
        field_size = (int((rows_[:, 1] - rows_[:, 0]).max()), int((cols_[:, 1] - cols_[:, 0]).max()))
        out[n] = Examples(n, chans[n], kk, score, idx, sc, torch.stack([pos // w, pos % w], -1),
                          boxes(rows_, cols_, pos, w), source.names, skipped, read, (h, w), source.shape,
                          field_size, settings, m, source)
    return out[layers[0]] if isinstance(layer, str) else out


def _digest(names: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(names).encode()).hexdigest()


def _model_digest(m) -> str:
    from ..atlas.plan import model_sha1

    return model_sha1(m)
