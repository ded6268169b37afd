"""torch.distributed for the atlas: join the process group the launcher describes, broadcasts,
barriers and sharding between ranks, and one progress report on rank 0 fed by a counter in the
rendezvous store that every rank adds to.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) `distributed` initialises a process group
(nccl when the rank renders on CUDA, gloo on the CPU) and destroys it in `finally`; ranks talk
only through collectives, barriers and the store. Batch k of the plan goes to rank k % world.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import FastvizError
from ..progress import reporter


@dataclass
class Dist:
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

    def shard(self, items: list) -> list:
        """This rank's share: items k with k % world == rank."""
        return items[self.rank::self.world]

    def from_rank0(self, make: Callable[[], object]):
        """`make()` run on rank 0 and broadcast to every rank.

        Raises:
            The error of `make` on rank 0 as it is; on the other ranks a FastvizError with its
            message (every rank must hear of it, or they would wait in the broadcast).
        """
        box, failure = None, None
        if self.rank == 0:
            try:
                box = {"value": make()}
            except Exception as e:
                box, failure = {"error": f"{e}" if isinstance(e, FastvizError) else f"rank 0: {e!r}"}, e
        box = self.broadcast(box)
        if failure is not None:
            raise failure
        if "error" in box:
            raise FastvizError(box["error"])
        return box["value"]


@contextlib.contextmanager
def distributed(device, timeout: float):
    """Join the process group the launcher describes (RANK / WORLD_SIZE / LOCAL_RANK), if any.

    Yields (Dist, the device this rank renders on). Initialises in the call, destroys in finally
    (a group the caller initialised is used and left alone).
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        yield Dist(), device
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
        yield Dist(dist.get_rank(), dist.get_world_size(), local, group, store), dev
    finally:
        if owned:
            dist.destroy_process_group()


class Progress:
    """One report on rank 0 for the whole atlas (the shared protocol of `fastviz.progress`: a
    bar, a callback progress(done, total) in targets, or nothing); the other ranks add to a
    counter in the store, which rank 0 polls."""

    def __init__(self, d: Dist, key: str, total: int, initial: int, progress):
        self.d, self.key, self.initial = d, key, initial
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.local = 0
        self.thread = None
        self.rep = reporter(progress if d.rank == 0 else None, total, unit="target", desc="atlas",
                            initial=initial)
        if d.rank == 0 and progress and d.world > 1 and d.store is not None:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                self.rep.update(self.initial + self.d.store.add(self.key, 0))

    def add(self, n: int) -> None:
        """`n` more targets are on disk (called from the PNG writer)."""
        with self.lock:
            if self.d.world > 1 and self.d.store is not None:
                done = self.d.store.add(self.key, n)
            else:
                self.local += n
                done = self.local
            if self.d.rank == 0:
                self.rep.update(self.initial + done)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.rep.close()
