"""The atlas's plan: its targets (classes, channels of layers) with stable names, the batches
(the same on every rank and every rerun), the batch size measured once, and the settings check
against the directory's atlas.json. Rank 0 plans and broadcasts the plan."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FastvizError
from ..models import Model
from ..render import class_model, feature, layer_shape
from ..targets import as_index_list
from .store import MANIFEST, SETTINGS, jsonable, part_files, records, write_atomic


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def model_sha1(m: Model) -> str:
    """sha1 of the network's state dict (names and bytes) and its normalisation."""
    h = hashlib.sha1(repr((m.mean, m.std)).encode())
    for name, t in m.module.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Group:
    kind: str          # "class" | "channel"
    layer: str | None
    indices: list[int]
    names: list[str]   # target ids, "class/0130_flamingo", "_blocks.10/0005"
    labels: list[str | None]


def _layer_channels(m: Model, layer: str, size) -> int:
    return layer_shape(m, layer, size, name="layers")[0]


def groups_of(m: Model, classes, layers, channels, size) -> list[Group]:
    groups = []
    if classes is not None:
        if isinstance(classes, str):
            if classes != "all":
                raise FastvizError(f"classes: expected 'all', an index or a list of indices, got {classes!r}")
            if not m.num_classes:
                raise FastvizError("classes: 'all' needs a model with labels (fastviz.Model(labels=...))")
            classes = list(range(m.num_classes))
        idx = as_index_list(classes, "classes", m.num_classes)
        width = max(4, len(str(max(idx))))
        labels = [m.labels[i] if m.labels and i < len(m.labels) else None for i in idx]
        names = [f"class/{i:0{width}d}" + (f"_{slug(lab)}" if lab else "") for i, lab in zip(idx, labels)]
        groups.append(Group("class", None, idx, names, labels))
    layers = [layers] if isinstance(layers, str) else list(layers or [])
    if len(set(layers)) != len(layers):
        raise FastvizError(f"layers: listed twice in {layers}")
    for layer in layers:
        m.layer(layer)
        n = _layer_channels(m, layer, size)
        if isinstance(channels, str):
            if channels != "all":
                raise FastvizError(f"channels: expected 'all' or a list of indices, got {channels!r}")
            idx = list(range(n))
        else:
            idx = as_index_list(channels, "channels", n)
        width = max(4, len(str(n - 1)))
        groups.append(Group("channel", layer, idx, [f"{layer}/{c:0{width}d}" for c in idx], [None] * len(idx)))
    if not groups:
        raise FastvizError("classes / layers: nothing to render; give classes='all' or a list, and/or layers")
    names = [n for g in groups for n in g.names]
    if len(set(names)) != len(names):
        raise FastvizError("classes / channels: a target is listed twice")
    return groups


def batches(groups: list[Group], batch_size: int) -> list[tuple[int, int, int]]:
    """(group, start, stop) for every batch, group by group: the same on every rank and every rerun."""
    return [(g, a, min(a + batch_size, len(grp.indices)))
            for g, grp in enumerate(groups) for a in range(0, len(grp.indices), batch_size)]


def pending_batches(groups: list[Group], batch_size: int, done: set[str]) -> list[tuple[int, int, int]]:
    """The batches with a target not yet done (a batch keeps its rows and seed: the done rows in
    it are rendered again but not written)."""
    return [bt for bt in batches(groups, batch_size)
            if any(n not in done for n in groups[bt[0]].names[bt[1]:bt[2]])]


def render_batch(m: Model, grp: Group, a: int, b: int, steps: int, seed: int, kwargs: dict):
    idx = grp.indices[a:b]
    if grp.kind == "class":
        return class_model(m, idx, steps=steps, seed=seed + a, batch_size=len(idx), **kwargs)
    return feature(m, grp.layer, idx, steps=steps, seed=seed + a, batch_size=len(idx), **kwargs)


def measure_batch_size(m: Model, grp: Group, kwargs: dict, limit: int = 256, steps: int = 3) -> int:
    """The batch size with the most rows per second for `grp`'s kind of target on the model's device.

    Doubles from 1 while the rate improves by more than 5% (or memory runs out), timing `steps`
    steps after a one-step warm-up at each size.
    """
    best, best_rate, bs = 1, 0.0, 1
    limit = max(1, min(limit, len(grp.indices)))
    while bs <= limit:
        rows = [grp.indices[i % len(grp.indices)] for i in range(bs)]
        probe = Group(grp.kind, grp.layer, rows, grp.names[:1] * bs, grp.labels[:1] * bs)
        try:
            render_batch(m, probe, 0, bs, 1, 0, kwargs)
            if m.device.type == "cuda":
                torch.cuda.synchronize(m.device)
            t = time.perf_counter()
            render_batch(m, probe, 0, bs, steps, 0, kwargs)
            rate = bs / (time.perf_counter() - t)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if rate <= best_rate * 1.05:
            break
        best, best_rate = bs, rate
        bs *= 2
    return best


def make_plan(m, out: Path, classes, layers, channels, steps, seed, batch_size, force, kwargs) -> dict:
    """Rank 0: the groups, the settings check against atlas.json, the batch size, what is done."""
    import fastviz  # its version goes into atlas.json (a module-level import would be circular)

    groups = groups_of(m, classes, layers, channels, kwargs.get("size"))
    model_id = {"name": m.name, "sha1": model_sha1(m)}
    versions = {"fastviz": fastviz.__version__, "torch": torch.__version__, "model": model_id}
    settings = {"steps": steps, "seed": seed, "model": model_id,
                "options": {k: jsonable(v) for k, v in sorted(kwargs.items())}}
    out.mkdir(parents=True, exist_ok=True)
    old = None
    if (out / SETTINGS).is_file():
        try:
            old = json.loads((out / SETTINGS).read_text())
        except json.JSONDecodeError:
            old = None
    if old is not None:
        old_settings = dict(old.get("settings", {}))
        old_bs = old_settings.pop("batch_size", None)
        changed = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
        if batch_size is not None and old_bs is not None and batch_size != old_bs:
            changed.append("batch_size")
        if changed and not force:
            detail = "; ".join(f"{k}: {old_settings.get(k, old_bs if k == 'batch_size' else None)!r} -> "
                               f"{settings.get(k, batch_size if k == 'batch_size' else None)!r}" for k in changed)
            raise FastvizError(f"out: {str(out)!r} holds an atlas made with other settings ({detail}); "
                               "use another directory, the same settings, or force=True (--force) to start over")
        if changed:
            for p in [out / MANIFEST, *part_files(out)]:
                p.unlink(missing_ok=True)
        elif batch_size is None:
            batch_size = old_bs
    if batch_size is None:
        batch_size = measure_batch_size(m, groups[0], kwargs)
    settings["batch_size"] = batch_size
    for g in groups:
        for sub in {str(Path(n).parent) for n in g.names}:
            (out / sub).mkdir(parents=True, exist_ok=True)
            for tmp in (out / sub).glob(".*.tmp"):  # a PNG cut short by a killed run
                tmp.unlink(missing_ok=True)
    write_atomic(out / SETTINGS, json.dumps({"settings": settings, "versions": versions}, indent=1,
                                              sort_keys=True).encode())
    done = [t for t in records(out)]
    run = hashlib.sha1(f"{time.time_ns()} {os.getpid()}".encode()).hexdigest()[:12]
    return {"groups": groups, "batch_size": batch_size, "settings": settings, "versions": versions,
            "done": done, "run": run}
