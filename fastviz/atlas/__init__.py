"""Atlases: many synthesis targets rendered into one directory, resumable and sharded.

An atlas is every class of a classifier and/or every channel of some layers, rendered in batches
with `fastviz.render.class_model` / `fastviz.render.feature`, written as

    out/atlas.json                      the settings of the atlas (a rerun must match them)
    out/class/0130_flamingo.png         one PNG per target, named stably
    out/_blocks.10/0005.png
    out/_blocks.10/0005_e0.png          with `dataset`: the unit's dataset examples (crops, plain
    out/_blocks.10/0005_e0_act.png      and with its activation), examples.jsonl / examples.json
    out/manifest.jsonl                  one JSON line per target (schema: MANIFEST_SCHEMA)
    out/index.html                      a static gallery (no server, no network)

Resumable (docs/design.md, rule 11; `store`): PNGs and manifest lines are written whole, and
a rerun skips the targets that are done.

Sharded: under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set), `atlas` initialises a process
group (nccl when the rank renders on CUDA, gloo on the CPU) and destroys it in `finally`. Rank 0
plans (reads the directory, checks the settings, picks the batch size) and broadcasts the plan;
batch k of the plan goes to rank k % world_size. A batch's rows, seed and start never depend on
the rank or on which batches are already done, so the files equal a one-process run's.

Rooms: `plan` (targets, names, batches, batch size, settings check), `store` (schema, manifest
lines, atomic writes, manifest parts and merge, resume), `writer` (the PNG writer thread),
`distributed` (process group, broadcast, sharding, barriers, the cross-rank progress counter),
`gallery` (index.html from the package's gallery files); this file is the public call and its
main loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import checks
from ..errors import FastvizError
from ..hooks import on_device
from ..models import as_model
from ..progress import ProgressArg
from ..targets import positive_int
from .distributed import Progress, distributed
from .gallery import gallery_html
from .plan import make_plan, measure_batch_size, pending_batches, render_batch
from .store import INDEX, MANIFEST, MANIFEST_SCHEMA, batch_records, finish, validate_record
from .writer import Writer

__all__ = ["atlas", "AtlasResult", "gallery_html", "MANIFEST_SCHEMA", "measure_batch_size", "validate_record"]


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


def atlas(model, out: str | os.PathLike, *, classes: str | int | Sequence[int] | None = None,
          layers: str | Sequence[str] = (), channels: str | Sequence[int] = "all", steps: int = 256,
          seed: int = 0, batch_size: int | None = None, device=None, force: bool = False,
          progress: ProgressArg = True, timeout: float = 7200.0, dataset=None, examples_k: int = 9,
          num_workers: int = 0, **kwargs) -> AtlasResult:
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
        steps, seed: as in `class_model` (256 steps, seed 0); batch k of a group (rows a..b)
            runs with seed + a.
        batch_size: rows per batch; default: the size recorded in atlas.json, else measured once
            on rank 0 (doubling while targets/s rise by > 5%).
        device: where to render; under torchrun with CUDA, default cuda:LOCAL_RANK.
        force: start over in a directory whose settings differ (the old manifest is dropped).
        progress: a bar on rank 0 (True), none (False or None), or progress(done, total) in
            targets (`fastviz.progress`; called on rank 0 from the PNG-writing thread, after each
            batch is on disk).
        timeout: seconds the ranks wait for each other in a collective.
        dataset: images (a folder, a torch Dataset, a tensor: as `dataset_examples`) whose top
            `examples_k` images per channel of `layers` go beside each unit's picture, scanned once
            after the rendering (sharded under torchrun, resumable from `out/examples_state/`)
            with `num_workers` decoding processes.
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
    checks.progress(progress)
    if not isinstance(out, (str, os.PathLike)):
        raise FastvizError(f"out: expected a directory path, got {type(out).__name__}")
    if dataset is not None:
        if not layers:
            raise FastvizError("dataset: dataset examples are found for the channels of `layers`; give layers")
        if isinstance(dataset, (str, os.PathLike)) and not Path(dataset).exists():
            raise FastvizError(f"dataset: no such file or folder {str(dataset)!r}")
        checks.positive_int(examples_k, "examples_k")
        checks.int_in(num_workers, "num_workers", 0, 64)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FastvizError(f"out: expected a directory, got the file {str(out)!r}")
    with distributed(device, timeout) as (d, dev), on_device(m, dev):
        # Rank 0 plans; the others take its plan (or its error).
        plan = d.from_rank0(lambda: make_plan(m, out, classes, layers, channels, steps, seed, batch_size,
                                              force, kwargs))
        groups, bs, done = plan["groups"], plan["batch_size"], set(plan["done"])
        total = sum(len(g.names) for g in groups)
        todo = sum(1 for g in groups for n in g.names if n not in done)
        bar = Progress(d, f"fastviz-atlas/{plan['run']}", total, total - todo, progress)
        try:
            with Writer(out, out / f"manifest.rank{d.rank}.jsonl", bar.add) as writer:
                for g, a, b in d.shard(pending_batches(groups, bs, done)):
                    t = time.perf_counter()
                    r = render_batch(m, groups[g], a, b, steps, seed, kwargs)
                    # The next batch renders while this one is encoded and written.
                    writer.submit(*batch_records(groups[g], a, b, r, skip=done, seed=seed + a,
                                                 seconds=(time.perf_counter() - t) / (b - a),
                                                 settings=plan["settings"], versions=plan["versions"]))
                writer.wait()
        finally:
            bar.close()
        d.barrier()
        if dataset is not None:
            _examples(m, out, dataset, [g for g in groups if g.kind == "channel"], examples_k, num_workers, dev,
                      force, progress, timeout, d.rank)
        if d.rank == 0:
            finish(out, [n for g in groups for n in g.names])
        d.barrier()
    return AtlasResult(out, total, todo, total - todo, bs, time.perf_counter() - t0, d.world)


def _examples(m, out: Path, dataset, groups, k: int, num_workers: int, dev, force: bool, progress, timeout: float,
              rank: int) -> None:
    """The channels' dataset examples into the atlas directory (every rank scans its shard; rank 0 saves)."""
    from ..examples import dataset_examples

    ex = dataset_examples(m, dataset, layer=[g.layer for g in groups], channels=groups[0].indices, k=k,
                          num_workers=num_workers, device=dev, checkpoint=out / "examples_state", force=force,
                          progress=progress, timeout=timeout)
    if rank == 0:
        for e in ex.values():
            e.save(out)
