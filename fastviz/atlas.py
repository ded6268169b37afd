"""Atlases: many synthesis targets rendered into one directory, resumable and sharded.

An atlas is every class of a classifier and/or every channel of some layers, rendered in batches
with `fastviz.render.class_model` / `fastviz.render.feature`, written as

    out/atlas.json                      the settings of the atlas (a rerun must match them)
    out/class/0130_flamingo.png         one PNG per target, named stably
    out/_blocks.10/0005.png
    out/manifest.jsonl                  one JSON line per target (schema: MANIFEST_SCHEMA)
    out/index.html                      a static gallery (no server, no network)

Resumable (docs/design.md, rule 11): each PNG is written to a temporary name and renamed, then its
manifest line is appended to the rank's part file (`manifest.rank<r>.jsonl`); a rerun reads the
manifest and the part files and skips the targets that are done. At the end rank 0 merges the
parts into `manifest.jsonl` (temporary name + rename) and writes `index.html`.

Sharded: under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set), `atlas` initialises a process
group (nccl when the rank renders on CUDA, gloo on the CPU) and destroys it in `finally`. Rank 0
plans (reads the directory, checks the settings, picks the batch size) and broadcasts the plan;
batch k of the plan goes to rank k % world_size. A batch's rows, seed and start never depend on
the rank or on which batches are already done, so the files equal a one-process run's.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import checks
from .errors import FastvizError
from .io import atomic_write
from .models import Model, as_model
from .render import class_model, feature, layer_shape, on_device
from .targets import as_index_list, positive_int

MANIFEST = "manifest.jsonl"
SETTINGS = "atlas.json"
INDEX = "index.html"
CURVE_POINTS = 64

# The manifest line, as a JSON Schema (draft 2020-12). docs/atlas.md prints the same dict.
MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fastviz atlas manifest line",
    "type": "object",
    "required": ["target", "file", "kind", "layer", "index", "label", "seed", "batch", "settings",
                 "objective", "curve", "curve_steps", "seconds", "versions"],
    "properties": {
        "target": {"type": "string", "description": "stable id: the file path without .png"},
        "file": {"type": "string", "description": "the PNG, relative to the atlas directory"},
        "kind": {"enum": ["class", "channel"]},
        "layer": {"type": ["string", "null"], "description": "null for class models"},
        "index": {"type": "integer", "minimum": 0, "description": "class or channel index"},
        "label": {"type": ["string", "null"], "description": "class name, null for channels"},
        "seed": {"type": "integer", "description": "the seed of the batch (atlas seed + batch start)"},
        "batch": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                  "description": "[start, stop) rows of the target's group rendered together"},
        "settings": {"type": "object", "description": "the atlas settings (atlas.json)"},
        "objective": {"type": "number", "description": "the objective at the last step"},
        "curve": {"type": "array", "items": {"type": "number"}, "description": "objective per step (sampled)"},
        "curve_steps": {"type": "array", "items": {"type": "integer"}, "description": "the steps of curve"},
        "seconds": {"type": "number", "minimum": 0, "description": "rendering time of the batch / rows"},
        "versions": {"type": "object", "required": ["fastviz", "torch", "model"],
                     "properties": {"fastviz": {"type": "string"}, "torch": {"type": "string"},
                                    "model": {"type": "object", "required": ["name", "sha1"]}}},
    },
}


def validate_record(record, schema: dict = MANIFEST_SCHEMA, where: str = "record") -> None:
    """Check `record` against the subset of JSON Schema that MANIFEST_SCHEMA uses.

    Raises:
        FastvizError: naming the first field that does not fit.
    """
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "null": type(None), "boolean": bool}
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(record, types[t]) and not (t in ("integer", "number") and isinstance(record, bool))
                 for t in allowed)
        if not ok:
            raise FastvizError(f"{where}: expected {schema['type']}, got {type(record).__name__}")
    if "enum" in schema and record not in schema["enum"]:
        raise FastvizError(f"{where}: expected one of {schema['enum']}, got {record!r}")
    if "minimum" in schema and record < schema["minimum"]:
        raise FastvizError(f"{where}: expected >= {schema['minimum']}, got {record!r}")
    if isinstance(record, dict):
        for key in schema.get("required", []):
            if key not in record:
                raise FastvizError(f"{where}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in record:
                validate_record(record[key], sub, f"{where}.{key}")
    if isinstance(record, list):
        if not schema.get("minItems", 0) <= len(record) <= schema.get("maxItems", len(record)):
            raise FastvizError(f"{where}: {len(record)} items, expected "
                               f"{schema.get('minItems')}-{schema.get('maxItems')}")
        for i, item in enumerate(record):
            validate_record(item, schema.get("items", {}), f"{where}[{i}]")


@dataclass
class AtlasResult:
    """What `atlas` did (the same on every rank).

    Attributes:
        out: the atlas directory.
        total: targets in the plan.
        rendered: targets rendered by this run (all ranks).
        skipped: targets already done (found in the manifest with their PNG).
        batch_size: rows per batch.
        seconds: wall time of the call.
        world_size: processes that shared the work.
    """

    out: Path
    total: int
    rendered: int
    skipped: int
    batch_size: int
    seconds: float
    world_size: int

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST

    @property
    def index(self) -> Path:
        return self.out / INDEX


# -- small helpers ----------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def _jsonable(value):
    """Settings as JSON: numbers, strings, lists and dicts as they are, anything else by repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.device):
        return str(value)
    return repr(value)


def _model_sha1(m: Model) -> str:
    """sha1 of the network's state dict (names and bytes) and its normalisation."""
    h = hashlib.sha1(repr((m.mean, m.std)).encode())
    for name, t in m.module.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path, fsync=True) as tmp:
        tmp.write_bytes(data)


def _read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file (a line cut by a kill is ignored)."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _part_files(out: Path) -> list[Path]:
    return sorted(out.glob("manifest.rank*.jsonl"))


def _records(out: Path) -> dict[str, dict]:
    """target -> record, from manifest.jsonl and the part files, keeping only those with their PNG."""
    recs: dict[str, dict] = {}
    for path in [out / MANIFEST, *_part_files(out)]:
        for r in _read_jsonl(path):
            if isinstance(r, dict) and "target" in r and "file" in r:
                recs.setdefault(r["target"], r)
    return {t: r for t, r in recs.items() if (out / r["file"]).is_file()}


def _curve(history_row: torch.Tensor) -> tuple[list[float], list[int]]:
    n = history_row.shape[0]
    if n <= CURVE_POINTS:
        steps = list(range(n))
    else:
        steps = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})
    return [float(history_row[s]) for s in steps], [s + 1 for s in steps]


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class _Group:
    kind: str          # "class" | "channel"
    layer: str | None
    indices: list[int]
    names: list[str]   # target ids, "class/0130_flamingo", "_blocks.10/0005"
    labels: list[str | None]


def _layer_channels(m: Model, layer: str, size) -> int:
    return layer_shape(m, layer, size, name="layers")[0]


def _groups(m: Model, classes, layers, channels, size) -> list[_Group]:
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
        names = [f"class/{i:0{width}d}" + (f"_{_slug(lab)}" if lab else "") for i, lab in zip(idx, labels)]
        groups.append(_Group("class", None, idx, names, labels))
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
        groups.append(_Group("channel", layer, idx, [f"{layer}/{c:0{width}d}" for c in idx], [None] * len(idx)))
    if not groups:
        raise FastvizError("classes / layers: nothing to render; give classes='all' or a list, and/or layers")
    names = [n for g in groups for n in g.names]
    if len(set(names)) != len(names):
        raise FastvizError("classes / channels: a target is listed twice")
    return groups


def _batches(groups: list[_Group], batch_size: int) -> list[tuple[int, int, int]]:
    """(group, start, stop) for every batch, group by group: the same on every rank and every rerun."""
    return [(g, a, min(a + batch_size, len(grp.indices)))
            for g, grp in enumerate(groups) for a in range(0, len(grp.indices), batch_size)]


def _render_batch(m: Model, grp: _Group, a: int, b: int, steps: int, seed: int, kwargs: dict):
    idx = grp.indices[a:b]
    if grp.kind == "class":
        return class_model(m, idx, steps=steps, seed=seed + a, batch_size=len(idx), **kwargs)
    return feature(m, grp.layer, idx, steps=steps, seed=seed + a, batch_size=len(idx), **kwargs)


def measure_batch_size(m: Model, grp: _Group, kwargs: dict, limit: int = 256, steps: int = 3) -> int:
    """The batch size with the most rows per second for `grp`'s kind of target on the model's device.

    Doubles from 1 while the rate improves by more than 5% (or memory runs out), timing `steps`
    steps after a one-step warm-up at each size.
    """
    best, best_rate, bs = 1, 0.0, 1
    limit = max(1, min(limit, len(grp.indices)))
    while bs <= limit:
        rows = [grp.indices[i % len(grp.indices)] for i in range(bs)]
        probe = _Group(grp.kind, grp.layer, rows, grp.names[:1] * bs, grp.labels[:1] * bs)
        try:
            _render_batch(m, probe, 0, bs, 1, 0, kwargs)
            if m.device.type == "cuda":
                torch.cuda.synchronize(m.device)
            t = time.perf_counter()
            _render_batch(m, probe, 0, bs, steps, 0, kwargs)
            rate = bs / (time.perf_counter() - t)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if rate <= best_rate * 1.05:
            break
        best, best_rate = bs, rate
        bs *= 2
    return best


# -- torch.distributed --------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local: int = 0
    group: object = None      # process group for the control collectives (gloo)
    store: object = None      # the rendezvous store, for the progress counter

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier(group=self.group)


@contextlib.contextmanager
def _distributed(device, timeout: float):
    """Join the process group the launcher describes (RANK / WORLD_SIZE / LOCAL_RANK), if any.

    Yields (_Dist, the device this rank renders on). Initialises in the call, destroys in finally
    (a group the caller initialised is used and left alone).
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        yield _Dist(), device
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device is not None else None
    if dev is None and torch.cuda.is_available():
        dev = torch.device("cuda", local)
    if dev is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    cuda = dev is not None and dev.type == "cuda"
    owned = not dist.is_initialized()
    if owned:
        if cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
    try:
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # a private helper: the bar then counts rank 0's share only
            store = None
        yield _Dist(dist.get_rank(), dist.get_world_size(), local, group, store), dev
    finally:
        if owned:
            dist.destroy_process_group()


class _Progress:
    """One bar on rank 0 for the whole atlas; the other ranks add to a counter in the store."""

    def __init__(self, d: _Dist, key: str, total: int, initial: int, progress):
        self.d, self.key, self.total, self.initial = d, key, total, initial
        self.callback = None
        self.bar = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.local = 0
        self.thread = None
        if d.rank != 0 or not progress:
            return
        if callable(progress):
            self.callback = progress
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="target", desc="atlas", dynamic_ncols=True)
        if d.world > 1 and d.store is not None:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()

    def _show(self, done: int) -> None:
        if self.bar is not None:
            self.bar.n = self.initial + done
            self.bar.refresh()
        if self.callback is not None:
            self.callback(self.initial + done, self.total)

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                done = self.d.store.add(self.key, 0)
                self._show(done)

    def add(self, n: int) -> None:
        with self.lock:
            if self.d.world > 1 and self.d.store is not None:
                done = self.d.store.add(self.key, n)
            else:
                self.local += n
                done = self.local
            if self.d.rank == 0:
                self._show(done)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.bar is not None:
            self.bar.close()


# -- writing ------------------------------------------------------------------------------------
def _write_batch(out: Path, part: Path, lock: threading.Lock, pixels, records: list[dict]) -> None:
    """PNG per record (temporary name + rename), then the batch's manifest lines in one append."""
    from PIL import Image

    for arr, rec in zip(pixels, records):
        path = out / rec["file"]
        with atomic_write(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)  # 2x faster than 6, +13% bytes
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with lock, open(part, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _finish(out: Path, order: list[str]) -> None:
    """Rank 0, after every rank is done: merge the parts into manifest.jsonl, write index.html."""
    recs = _records(out)
    rank = {t: i for i, t in enumerate(order)}
    ordered = sorted(recs.values(), key=lambda r: (rank.get(r["target"], len(rank)), r["target"]))
    _write_atomic(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())
    for p in _part_files(out):
        p.unlink()
    _write_atomic(out / INDEX, gallery_html(ordered).encode())


# -- the public call ----------------------------------------------------------------------------
def atlas(model, out: str | os.PathLike, *, classes: str | int | Sequence[int] | None = None,
          layers: str | Sequence[str] = (), channels: str | Sequence[int] = "all", steps: int = 200,
          seed: int = 0, batch_size: int | None = None, device=None, force: bool = False,
          progress: bool | Callable[[int, int], None] = True, timeout: float = 7200.0,
          **kwargs) -> AtlasResult:
    """Render many targets (classes, channels of layers) into a directory: PNGs, manifest, gallery.

    Resumes: the same call again skips the targets in the manifest whose PNG exists. Under
    `torchrun` (RANK / WORLD_SIZE set) the ranks share the batches and give the same files as one
    process; every rank must make the same call.

    Args:
        model: `Model` or nn.Module (the same network on every rank).
        out: the atlas directory (shared by all ranks: a shared file system across nodes).
        classes: "all", a class index or a list: one class model each (`class_model`).
        layers: a layer name or a list: `channels` of each is rendered (`feature`).
        channels: "all" or a list of channel indices (the same for every layer).
        steps, seed: as in `class_model`; batch k of a group (rows a..b) runs with seed + a.
        batch_size: rows per batch; default: the size recorded in atlas.json, else measured once
            on rank 0 (doubling while targets/s rise by > 5%).
        device: where to render; under torchrun with CUDA, default cuda:LOCAL_RANK.
        force: start over in a directory whose settings differ (the old manifest is dropped).
        progress: a bar on rank 0 (True), none (False), or progress(done, total) in targets
            (called on rank 0 from the PNG-writing thread, after each batch is on disk).
        timeout: seconds the ranks wait for each other in a collective.
        **kwargs: passed to `class_model` / `feature` (reg, lr, jitter, size, backend, ...).
            They are settings: a rerun with other values is refused unless `force`.

    Returns:
        AtlasResult: counts, batch size, paths of the manifest and index.

    Raises:
        FastvizError: changed settings without `force`; bad classes / layers / channels.

    Example:
        >>> r = atlas(load_model(), "atlas/", classes=[1, 130], steps=64)
        >>> sorted(p.name for p in r.out.glob("class/*.png"))
        ['0001_goldfish.png', '0130_flamingo.png']
    """
    import fastviz

    t0 = time.perf_counter()
    m = as_model(model)
    positive_int(steps, "steps")
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    seed = checks.seed(seed, "seed")
    if not isinstance(layers, str) and not (isinstance(layers, Sequence)
                                            and all(isinstance(n, str) for n in layers)):
        raise FastvizError(f"layers: expected a layer name or a list of them, got {layers!r:.80}")
    checks.number(timeout, "timeout", 0.0, low_open=True)
    if not isinstance(force, bool):
        raise FastvizError(f"force: expected True or False, got {type(force).__name__} {force!r}")
    if not isinstance(progress, bool):
        checks.callable_or_none(progress, "progress")
    if not isinstance(out, (str, os.PathLike)):
        raise FastvizError(f"out: expected a directory path, got {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FastvizError(f"out: expected a directory, got the file {str(out)!r}")
    with _distributed(device, timeout) as (d, dev), on_device(m, dev):
        # Rank 0 plans; the others take its plan (or its error).
        plan, failure = None, None
        if d.rank == 0:
            try:
                plan = _plan(m, out, classes, layers, channels, steps, seed, batch_size, force, kwargs, fastviz)
            except Exception as e:  # every rank must hear of it, or they wait in the broadcast
                plan, failure = {"error": f"{e}" if isinstance(e, FastvizError) else f"rank 0: {e!r}"}, e
        plan = d.broadcast(plan)
        if failure is not None:
            raise failure
        if "error" in plan:
            raise FastvizError(plan["error"])
        groups, bs, settings, versions = plan["groups"], plan["batch_size"], plan["settings"], plan["versions"]
        done = set(plan["done"])
        pending = [bt for bt in _batches(groups, bs)
                   if any(n not in done for n in groups[bt[0]].names[bt[1]:bt[2]])]
        mine = pending[d.rank::d.world]
        total = sum(len(g.names) for g in groups)
        todo = sum(1 for g in groups for n in g.names if n not in done)
        bar = _Progress(d, f"fastviz-atlas/{plan['run']}", total, total - todo, progress)
        part = out / f"manifest.rank{d.rank}.jsonl"
        lock = threading.Lock()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastviz-atlas-png")
        inflight: list[Future] = []
        try:
            for g, a, b in mine:
                grp = groups[g]
                t = time.perf_counter()
                r = _render_batch(m, grp, a, b, steps, seed, kwargs)
                seconds = (time.perf_counter() - t) / (b - a)
                pixels = (r.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                rows, recs = [], []
                for i in range(b - a):
                    name = grp.names[a + i]
                    if name in done:
                        continue
                    curve, curve_steps = _curve(r.history[:, i])
                    rows.append(pixels[i])
                    recs.append({"target": name, "file": name + ".png", "kind": grp.kind, "layer": grp.layer,
                                 "index": grp.indices[a + i], "label": grp.labels[a + i], "seed": seed + a,
                                 "batch": [a, b], "settings": settings, "objective": curve[-1],
                                 "curve": curve, "curve_steps": curve_steps, "seconds": round(seconds, 6),
                                 "versions": versions})
                # At most one batch is being encoded while the next renders.
                while inflight:
                    inflight.pop(0).result()
                inflight.append(pool.submit(_write_batch, out, part, lock, rows, recs))
                inflight[-1].add_done_callback(lambda f, n=len(recs): f.exception() is None and bar.add(n))
            for f in inflight:
                f.result()
        finally:
            pool.shutdown(wait=True)
            bar.close()
        d.barrier()
        if d.rank == 0:
            _finish(out, [n for g in groups for n in g.names])
        d.barrier()
    return AtlasResult(out, total, todo, total - todo, bs, time.perf_counter() - t0, d.world)


def _plan(m, out: Path, classes, layers, channels, steps, seed, batch_size, force, kwargs, fastviz) -> dict:
    """Rank 0: the groups, the settings check against atlas.json, the batch size, what is done."""
    groups = _groups(m, classes, layers, channels, kwargs.get("size"))
    model_id = {"name": m.name, "sha1": _model_sha1(m)}
    versions = {"fastviz": fastviz.__version__, "torch": torch.__version__, "model": model_id}
    settings = {"steps": steps, "seed": seed, "model": model_id,
                "options": {k: _jsonable(v) for k, v in sorted(kwargs.items())}}
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
            for p in [out / MANIFEST, *_part_files(out)]:
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
    _write_atomic(out / SETTINGS, json.dumps({"settings": settings, "versions": versions}, indent=1,
                                              sort_keys=True).encode())
    done = [t for t in _records(out)]
    run = hashlib.sha1(f"{time.time_ns()} {os.getpid()}".encode()).hexdigest()[:12]
    return {"groups": groups, "batch_size": batch_size, "settings": settings, "versions": versions,
            "done": done, "run": run}


# -- the gallery --------------------------------------------------------------------------------
_GALLERY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fastviz atlas</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{position:sticky;top:0;background:#222;padding:8px 12px;display:flex;gap:12px;align-items:center;z-index:1}
header input,header select{font:inherit;padding:4px 6px;background:#333;color:#eee;border:1px solid #555}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(136px,1fr));gap:8px;padding:12px}
figure{margin:0;cursor:pointer;text-align:center}
figure img{width:128px;height:128px;object-fit:cover;image-rendering:auto;background:#000;display:block;margin:auto}
figcaption{font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#view{position:fixed;inset:0;background:rgba(0,0,0,.85);display:none;align-items:center;justify-content:center;z-index:2}
#view.open{display:flex}
#card{background:#222;padding:16px;display:flex;gap:16px;align-items:flex-start;max-width:95vw}
#card img{width:448px;max-width:60vw;max-height:85vh;object-fit:contain;image-rendering:pixelated}
svg text{fill:#bbb;font-size:11px}
</style></head><body>
<header><b>fastviz atlas</b>
<input id="q" type="search" placeholder="filter by name, e.g. flamingo">
<select id="layer"><option value="">all layers</option></select>
<span id="count"></span></header>
<main id="grid"></main>
<div id="view"><div id="card"><img id="big" alt=""><div><h3 id="title"></h3><div id="meta"></div>
<div id="plot"></div></div></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const recs = JSON.parse(document.getElementById("data").textContent);
const grid = document.getElementById("grid"), q = document.getElementById("q"), sel = document.getElementById("layer");
const group = r => r.layer === null ? "class" : r.layer;
for (const g of [...new Set(recs.map(group))]) sel.add(new Option(g === "class" ? "class models" : g, g));
const figs = recs.map((r, i) => {
  const f = document.createElement("figure");
  const img = document.createElement("img");
  img.loading = "lazy"; img.src = r.file; img.alt = r.target; img.width = 128; img.height = 128;
  const c = document.createElement("figcaption");
  c.textContent = r.label !== null ? r.index + " " + r.label : r.layer + " #" + r.index;
  f.append(img, c); f.dataset.i = i;
  f.dataset.key = (r.target + " " + (r.label || "")).toLowerCase();
  f.onclick = () => show(r);
  grid.append(f);
  return f;
});
function filter() {
  const words = q.value.toLowerCase().split(/\\s+/).filter(Boolean), g = sel.value;
  let n = 0;
  for (const f of figs) {
    const r = recs[f.dataset.i];
    const ok = (!g || group(r) === g) && words.every(w => f.dataset.key.includes(w));
    f.hidden = !ok; n += ok;
  }
  document.getElementById("count").textContent = n + " of " + recs.length;
}
function curveSvg(r) {
  const W = 320, H = 180, P = 34, ys = r.curve, xs = r.curve_steps;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1, xmax = xs[xs.length - 1] || 1;
  const pts = ys.map((y, i) => ((P + (W - P - 8) * xs[i] / xmax).toFixed(1)) + "," +
                               ((H - P + 8 - (H - P) * (y - lo) / span).toFixed(1))).join(" ");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H + 14}" role="img">` +
    `<rect x="${P}" y="8" width="${W - P - 8}" height="${H - P}" fill="none" stroke="#555"/>` +
    `<polyline points="${pts}" fill="none" stroke="#6cf" stroke-width="1.5"/>` +
    `<text x="2" y="16">${hi.toPrecision(3)}</text><text x="2" y="${H - P + 8}">${lo.toPrecision(3)}</text>` +
    `<text x="${P}" y="${H - 8}">step 1</text><text x="${W - 60}" y="${H - 8}">step ${xmax}</text>` +
    `<text x="${P}" y="${H + 8}">objective per step</text></svg>`;
}
function show(r) {
  document.getElementById("big").src = r.file;
  document.getElementById("title").textContent = r.target;
  document.getElementById("meta").textContent = "objective " + r.objective.toPrecision(4) +
    ", " + r.settings.steps + " steps, seed " + r.seed + ", " + r.seconds.toFixed(3) + " s";
  document.getElementById("plot").innerHTML = curveSvg(r);
  document.getElementById("view").classList.add("open");
}
document.getElementById("view").onclick = () => document.getElementById("view").classList.remove("open");
document.addEventListener("keydown", e => { if (e.key === "Escape") document.getElementById("view").classList.remove("open"); });
q.oninput = filter; sel.onchange = filter;
const hash = decodeURIComponent(location.hash.slice(1));
if (hash) q.value = hash;
filter();
</script></body></html>
"""


def gallery_html(records: list[dict]) -> str:
    """The static gallery for manifest `records`: one self-contained HTML page (no network).

    Thumbnails in a grid (lazy-loaded), a filter by name and by layer, and on click the image at
    full size with its objective curve as inline SVG. Image paths are relative to the page.
    """
    keep = ("target", "file", "kind", "layer", "index", "label", "seed", "objective", "curve",
            "curve_steps", "seconds")
    slim = [dict({k: r[k] for k in keep}, settings={"steps": r["settings"]["steps"]}) for r in records]
    data = json.dumps(slim, separators=(",", ":")).replace("<", "\\u003c")  # no "</script>" inside
    return _GALLERY.replace("__DATA__", data)
