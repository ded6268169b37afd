"""The atlas's plan (fastviz/atlas/plan.py): reruns skip, changed settings are refused, the batch size is measured once."""

from __future__ import annotations

import json

import pytest

import fastviz as fv
from fastviz.atlas.plan import Group, batches, groups_of, pending_batches, slug
from fastviz.models import as_model
from tiny_net import tiny

from atlas_helpers import manifest


def test_rerun_skips_and_changed_settings_are_refused(tmp_path):
    m = tiny()
    seen = []
    r = fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=2, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert (r.rendered, r.skipped, r.total, r.batch_size) == (3, 0, 3, 2)
    assert seen[-1] == (3, 3)
    before = (tmp_path / "class" / "0001_class_1.png").stat().st_mtime_ns
    r = fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=2, progress=False)  # batch size: the recorded one
    assert (r.rendered, r.skipped, r.batch_size) == (0, 3, 2)
    assert (tmp_path / "class" / "0001_class_1.png").stat().st_mtime_ns == before
    # More targets with the same settings extend the atlas.
    r = fv.atlas(m, tmp_path, classes=[1, 2, 3, 4], steps=2, progress=False)
    assert (r.rendered, r.skipped) == (1, 3)
    with pytest.raises(fv.FastvizError, match=r"steps: 2 -> 3.*force"):
        fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=3, progress=False)
    with pytest.raises(fv.FastvizError, match="options"):
        fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=2, lr=0.1, progress=False)
    with pytest.raises(fv.FastvizError, match="batch_size"):
        fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=2, batch_size=3, progress=False)
    assert len(manifest(tmp_path)) == 4
    r = fv.atlas(m, tmp_path, classes=[1, 2, 3], steps=3, force=True, progress=False)
    assert (r.rendered, r.skipped) == (3, 0)
    assert [x["settings"]["steps"] for x in manifest(tmp_path)] == [3, 3, 3]


def test_measured_batch_size_is_recorded(tmp_path):
    m = tiny()
    r = fv.atlas(m, tmp_path, classes="all", steps=2, progress=False)
    assert 1 <= r.batch_size <= 10
    assert json.loads((tmp_path / "atlas.json").read_text())["settings"]["batch_size"] == r.batch_size


def test_names_are_stable_and_sorted_by_index():
    m = as_model(tiny())
    groups = groups_of(m, [3, 1], ["features.3"], [0, 5], None)
    assert [g.names for g in groups] == [["class/0003_class_3", "class/0001_class_1"],
                                         ["features.3/0000", "features.3/0005"]]
    assert slug("Granny Smith (apple)") == "granny_smith_apple"


def test_batches_never_depend_on_what_is_done():
    g = [Group("class", None, [0, 1, 2, 3, 4], list("abcde"), [None] * 5),
         Group("channel", "x", [0, 1], ["x/0", "x/1"], [None] * 2)]
    assert batches(g, 2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2)]
    # A batch with one target left keeps its rows (and so its seed): the done row is redrawn, not written.
    assert pending_batches(g, 2, {"a", "c", "d", "x/0", "x/1"}) == [(0, 0, 2), (0, 4, 5)]
