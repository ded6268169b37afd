"""The atlas's ranks (fastviz/atlas/distributed.py): sharding, rank 0's plan or error, one progress
report for all ranks, and under torchrun 2 ranks (gloo) == 1 process."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastviz as fv
from fastviz.atlas.distributed import Dist, Progress, distributed

from atlas_helpers import STEPS, BATCH, TOTAL, manifest, pixels, run, without_timing


def test_without_a_launcher_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed("cpu", 10.0) as (d, dev):
        assert (d.rank, d.world, dev) == (0, 1, "cpu")
        assert d.shard([1, 2, 3]) == [1, 2, 3]
        assert d.from_rank0(lambda: {"plan": 1}) == {"plan": 1}
        with pytest.raises(fv.FastvizError, match="classes: bad"):
            d.from_rank0(lambda: (_ for _ in ()).throw(fv.FastvizError("classes: bad")))
        d.barrier()


def test_batch_k_goes_to_rank_k_mod_world():
    batches = list(range(7))
    shares = [Dist(rank=r, world=3).shard(batches) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


class _Store:
    """The rendezvous store's add(key, n) -> new value, in memory."""

    def __init__(self):
        self.values: dict[str, int] = {}

    def add(self, key: str, n: int) -> int:
        self.values[key] = self.values.get(key, 0) + n
        return self.values[key]


def test_rank0_reports_every_ranks_targets():
    store, seen = _Store(), []
    bar = Progress(Dist(rank=0, world=2, store=store), "k", total=10, initial=3,
                   progress=lambda done, total: seen.append((done, total)))
    other = Progress(Dist(rank=1, world=2, store=store), "k", total=10, initial=3,
                     progress=lambda done, total: pytest.fail("only rank 0 reports"))
    other.add(2)
    bar.add(4)
    bar.close()
    other.close()
    assert seen[-1] == (9, 10), "3 done before + 2 (rank 1) + 4 (rank 0)"


@pytest.mark.slow  # two torchrun processes
def test_two_ranks_under_torchrun_equal_one_process(script, reference, tmp_path):
    out = tmp_path / "two"
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script), str(out),
             str(STEPS), str(BATCH)])
    assert r == {"rendered": TOTAL, "skipped": 0, "total": TOTAL, "world": 2}
    one, two = manifest(reference), manifest(out)
    assert without_timing(one) == without_timing(two)
    for rec in one:
        assert np.array_equal(pixels(reference, rec), pixels(out, rec)), rec["file"]
    assert (out / "index.html").is_file() and (out / "atlas.json").is_file()
