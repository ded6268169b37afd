"""fv.atlas (fastviz/atlas/__init__.py): images equal class_model, bad arguments named, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastviz as fv
from atlas_helpers import manifest, pixels
from tiny_net import tiny


def test_atlas_images_equal_class_model(tmp_path):
    """An atlas batch is class_model on the batch's rows with seed + start: same pixels."""
    m = tiny()
    fv.atlas(m, tmp_path, classes=[0, 1, 2, 3, 4], steps=6, batch_size=2, seed=5, jitter=2, progress=False)
    recs = manifest(tmp_path)
    for a in (0, 2, 4):
        ref = fv.class_model(m, list(range(a, min(a + 2, 5))), steps=6, seed=5 + a, jitter=2)
        expect = (ref.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, rec in enumerate(recs[a:a + 2]):
            assert np.array_equal(pixels(tmp_path, rec), expect[i])
            assert rec["objective"] == pytest.approx(float(ref.history[-1, i]), rel=1e-6)


def test_bad_arguments(tmp_path):
    m = tiny()
    with pytest.raises(fv.FastvizError, match="classes"):
        fv.atlas(m, tmp_path, classes=[10], steps=1)
    with pytest.raises(fv.FastvizError, match="layer"):
        fv.atlas(m, tmp_path, layers=["features.9"], steps=1)
    with pytest.raises(fv.FastvizError, match="channels"):
        fv.atlas(m, tmp_path, layers=["features.3"], channels=[8], steps=1)
    with pytest.raises(fv.FastvizError, match="nothing to render"):
        fv.atlas(m, tmp_path, steps=1)
    with pytest.raises(fv.FastvizError, match="batch_size"):
        fv.atlas(m, tmp_path, classes=[1], steps=1, batch_size=0)


def test_cli_names_files_by_class(tmp_path):
    from fastviz.cli import main

    out = tmp_path / "cli"
    assert main(["atlas", "--classes", "130", "1", "--layers", "_blocks.6", "--channels", "0,5", "--steps", "2",
                 "--size", "32", "--batch-size", "2", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "_blocks.6/0000.png", "_blocks.6/0005.png", "class/0001_goldfish.png", "class/0130_flamingo.png"]
    assert main(["atlas", "--classes", "1", "--steps", "3", "--size", "32", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 2
