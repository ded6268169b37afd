"""The atlas's PNG writer (fastviz/atlas/writer.py): PNGs then their lines, in order, errors raised."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from fastviz.atlas.writer import Writer


def _batch(names: list[str], value: int):
    pixels = [np.full((4, 5, 3), value + i, np.uint8) for i in range(len(names))]
    return pixels, [{"target": n, "file": n + ".png"} for n in names]


def test_batches_land_in_order_with_their_pngs(tmp_path):
    (tmp_path / "class").mkdir()
    part = tmp_path / "manifest.rank0.jsonl"
    written = []
    with Writer(tmp_path, part, written.append) as w:
        w.submit(*_batch(["class/a", "class/b"], 10))
        w.submit(*_batch(["class/c"], 20))
        w.wait()
    assert written == [2, 1]
    assert [json.loads(line)["target"] for line in part.read_text().splitlines()] == ["class/a", "class/b", "class/c"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "class/b.png")), np.full((4, 5, 3), 11, np.uint8))
    assert not list(tmp_path.rglob(".*.tmp"))


def test_one_batch_in_flight_and_its_error_raises(tmp_path):
    gate, seen = threading.Event(), []
    with Writer(tmp_path, tmp_path / "part.jsonl", lambda n: (gate.wait(5), seen.append(n))) as w:
        w.submit(*_batch(["a"], 0))
        threading.Timer(0.2, gate.set).start()
        w.submit(*_batch(["b"], 0))  # waits for the first batch, whose callback waits for the gate
        assert seen == [1]
        w.submit(*_batch(["missing/c"], 0))  # its folder does not exist
        with pytest.raises(FileNotFoundError):
            w.wait()
    assert seen == [1, 1], "a failed batch is not counted as written"
    assert [json.loads(line)["target"] for line in (tmp_path / "part.jsonl").read_text().splitlines()] == ["a", "b"]
