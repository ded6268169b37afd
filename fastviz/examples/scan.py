"""The streaming pass of `dataset_examples`: batches in, running top-k per channel on the device.

One pass over the images, batch by batch: decoded in DataLoader workers, the forward stopped at
the deepest requested layer (rule 4), each channel scored (spatial max, mean, or the value at
one position) and merged into its running top-k on the device (no host sync per batch, rule 6).
The state is a few (C, k) tensors whatever the number of images.

Resumable (rule 11): every `every` batches the state goes to `<checkpoint>/scan.rank<r>.pt`
(temporary name + rename); a rerun with the same settings starts after the last batch saved.
Sharded: under torchrun batch b goes to rank b % world; at the end the ranks exchange their
states (gloo, on the CPU) and each merges them exactly (`topk.merge`).
"""

from __future__ import annotations

import io as _io
import warnings
from pathlib import Path

import torch

from .. import budget
from ..errors import FastvizError
from ..hooks import session
from ..io import atomic_write
from ..models import Model
from ..progress import reporter
from .source import Source
from .topk import TopK, merge


def score_map(a: torch.Tensor, score) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) activations -> scores (B, C) and flat positions (B, C) of the crop centre.

    score: "max" (the spatial maximum, where it is), "mean" (the spatial mean; the crop at the
        maximum) or (y, x) (one neuron: its value, there).
    """
    flat = a.flatten(2)
    if score == "max":
        return flat.max(2)
    if score == "mean":
        return flat.float().mean(2), flat.argmax(2)
    y, x = score
    w = a.shape[-1]
    return a[:, :, y, x], torch.full(a.shape[:2], y * w + x, dtype=torch.long, device=a.device)


def _load_checkpoint(path: Path, settings: dict, force: bool) -> dict | None:
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file cut short cannot happen (atomic writes); anything else is foreign
        raise FastvizError(f"checkpoint: {str(path)!r} is not a scan state ({type(e).__name__}: {e}); "
                           f"remove it or use another directory") from e
    if ck.get("settings") != settings:
        if force:
            return None
        old = ck.get("settings", {})
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise FastvizError(f"checkpoint: {str(path.parent)!r} holds a scan made with other settings "
                           f"({', '.join(changed)} differ); use another directory, the same settings, "
                           f"or force=True (--force) to start over")
    return ck


def _save_checkpoint(path: Path, state: dict) -> None:
    buf = _io.BytesIO()
    torch.save(state, buf)
    with atomic_write(path, fsync=True) as tmp:
        tmp.write_bytes(buf.getvalue())


def scan(m: Model, source: Source, layers: list[str], channels: dict[str, list[int]], k: int, score, *,
         batch_size: int, num_workers: int, dev: torch.device, d, checkpoint: Path | None, every: int,
         force: bool, settings: dict, progress) -> tuple[dict[str, dict], list[tuple[int, str]], int]:
    """Scan every image once; the merged top-k state per layer (CPU), the skipped items, images read.

    Args:
        d: the `atlas.distributed.Dist` of this process (rank, world, group).
        checkpoint: the folder of the rank's running state, or None (no resume).
        settings: what a resumed scan must share with the saved one.
    """
    n = len(source)
    all_batches = [range(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    mine = d.shard(all_batches)
    tops = {name: TopK(len(channels[name]), k, dev) for name in layers}
    picks = {name: torch.tensor(channels[name], device=dev) for name in layers}
    skipped: list[tuple[int, str]] = []
    done, read = 0, 0
    path = None
    if checkpoint is not None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        path = checkpoint / f"scan.rank{d.rank}.pt"
        for tmp in checkpoint.glob(".scan.rank*.tmp"):  # a state cut short by a killed run
            tmp.unlink(missing_ok=True)
        ck = _load_checkpoint(path, dict(settings, world=d.world), force)
        if ck is not None:
            done, read, skipped = ck["done"], ck["read"], [tuple(s) for s in ck["skipped"]]
            for name in layers:
                tops[name].load(ck["layers"][name])

    def save(upto: int) -> None:
        if path is not None:
            _save_checkpoint(path, {"settings": dict(settings, world=d.world), "done": upto, "read": read,
                                    "skipped": [list(s) for s in skipped],
                                    "layers": {name: tops[name].state() for name in layers}})

    share = sum(len(r) for r in mine)
    step = None
    with session(m, no_inplace=True) as s, torch.no_grad(), \
            reporter(progress if d.rank == 0 else None, share, unit="image", desc="examples",
                     initial=sum(len(r) for r in mine[:done])) as rep:
        seen = sum(len(r) for r in mine[:done])
        every_all = every if path is not None else 0
        for j, (idx, x, ok, messages) in enumerate(source.batches(mine[done:], num_workers, dev.type == "cuda"),
                                                   done):
            bad = (~ok).nonzero().flatten().tolist() if not bool(ok.all()) else []  # host tensors
            for b in bad:
                skipped.append((int(idx[b]), messages[b]))
                warnings.warn(f"data: skipped {messages[b]}", stacklevel=4)
            read += len(ok) - len(bad)
            x = x.to(dev, torch.float32, non_blocking=True)
            idx_d = idx.to(dev, non_blocking=True)
            if step is None:  # rows per forward within the memory budget (fastviz.budget), once
                step = budget.rows(m, x[:1], grad=False, total=batch_size, name="data", what="one image")
            keep = ok.to(dev)
            for c in range(0, len(x), step):  # the batch in chunks that fit: top-k is order-free
                acts, _ = s.forward(x[c:c + step], layers, stop=True)
                for name in layers:
                    a = acts[name]
                    if a.dim() != 4:
                        raise FastvizError(f"layer: {name!r} gives shape {tuple(a.shape)}, expected (B, C, h, w)")
                    if len(channels[name]) != a.shape[1]:
                        a = a.index_select(1, picks[name])
                    sc, pos = score_map(a, score)
                    if bad:
                        sc = sc.masked_fill(~keep[c:c + step, None], float("-inf"))
                    tops[name].update(sc, idx_d[c:c + step], pos)
            seen += len(ok)
            rep.update(seen)
            if every_all and (j + 1 - done) % every_all == 0:
                save(j + 1)
        save(len(mine))
    states = {name: tops[name].state() for name in layers}
    if d.world > 1:
        gathered: list = [None] * d.world
        torch.distributed.all_gather_object(gathered, {"states": states, "skipped": skipped, "read": read},
                                            group=d.group)
        states = {name: merge([g["states"][name] for g in gathered], k) for name in layers}
        skipped = sorted(s for g in gathered for s in g["skipped"])
        read = sum(g["read"] for g in gathered)
    return states, skipped, read
