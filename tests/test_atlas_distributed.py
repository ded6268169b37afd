"""The atlas under torchrun (fastviz/atlas/distributed.py): 2 ranks (gloo) == 1 process."""

from __future__ import annotations

import sys

import numpy as np
import pytest


from atlas_helpers import STEPS, BATCH, TOTAL, manifest, pixels, run, without_timing


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
