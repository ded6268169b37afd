"""The atlas's PNG writer: one thread encodes a batch's PNGs and appends its manifest lines to the
rank's part file while the main loop renders the next batch (at most one batch waits), so the
encoding costs the loop almost nothing."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..io import atomic_write


def write_batch(out: Path, part: Path, pixels, records: list[dict]) -> None:
    """PNG per record (temporary name + rename), then the batch's manifest lines in one append.

    Args:
        out: the atlas directory; each record's "file" is relative to it.
        part: the rank's manifest part file (appended, fsync'd).
        pixels: one (H, W, 3) uint8 array per record.
        records: the manifest lines.
    """
    from PIL import Image

    for arr, rec in zip(pixels, records):
        with atomic_write(out / rec["file"]) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)  # 2x faster than 6, +13% bytes
    # The PNGs are on disk before their lines: a line in a part file means its PNG is whole.
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(part, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class Writer:
    """Writes batches on one background thread, one batch at a time, in the order submitted.

    Args:
        out: the atlas directory.
        part: the rank's manifest part file.
        on_written: called with the number of targets after each batch is on disk (from the
            writer's thread, before `wait` returns; its error raises like the batch's).
    """

    def __init__(self, out: Path, part: Path, on_written: Callable[[int], None]):
        self.out, self.part, self.on_written = out, part, on_written
        # One worker: the part file is appended by one thread only, and batches land in order.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastviz-atlas-png")
        self.pending: Future | None = None

    def submit(self, pixels, records: list[dict]) -> None:
        """Write a batch in the background once the previous one is on disk (its error raises here)."""
        self.wait()
        self.pending = self.pool.submit(self._write, pixels, records)

    def _write(self, pixels, records: list[dict]) -> None:
        write_batch(self.out, self.part, pixels, records)
        # Here, not in a done-callback: `wait` then returns only after the report.
        self.on_written(len(records))

    def wait(self) -> None:
        """Block until the submitted batch is on disk; raise its error, if any."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the batch in flight and stop the thread (an error of that batch is dropped: the
        caller is already raising one, and a rerun redoes the batch)."""
        self.pool.shutdown(wait=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
