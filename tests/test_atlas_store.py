"""The atlas on disk (fastviz/atlas/store.py): stable files, the manifest schema, resume after a kill."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fastviz as fv
from fastviz.atlas import MANIFEST_SCHEMA, validate_record
from fastviz.atlas.plan import Group
from fastviz.atlas.store import batch_records

from atlas_helpers import ROOT, STEPS, BATCH, TOTAL, env, manifest, pixels, run, without_timing


def test_files_named_stably_and_manifest_valid(reference):
    recs = manifest(reference)
    names = [r["target"] for r in recs]
    assert names[:3] == ["class/0000_class_0", "class/0001_class_1", "class/0002_class_2"]
    assert names[10:] == [f"features.3/{c:04d}" for c in range(8)]
    for r in recs:
        validate_record(r)
        assert (reference / r["file"]).is_file()
        assert len(r["curve"]) == STEPS and r["curve_steps"][-1] == STEPS
        assert r["objective"] == r["curve"][-1]
        assert r["settings"]["steps"] == STEPS and r["settings"]["batch_size"] == BATCH
        assert r["seed"] == r["batch"][0]
    # The ascent did something: objectives rose, and images are not the flat start.
    assert np.mean([r["curve"][-1] > r["curve"][0] for r in recs]) > 0.8
    assert all(pixels(reference, r).std() > 1 for r in recs)
    assert not list(reference.glob("manifest.rank*.jsonl")), "part files are merged at the end"


def test_schema_is_the_one_in_the_docs():
    text = (ROOT / "docs" / "atlas.md").read_text()
    block = re.search(r"<!-- manifest schema -->\s*```json\n(.*?)```", text, re.S)
    assert block, "docs/atlas.md must print the manifest schema after '<!-- manifest schema -->'"
    assert json.loads(block.group(1)) == MANIFEST_SCHEMA


def test_validator_rejects_bad_records(reference):
    good = manifest(reference)[0]
    validate_record(good)
    for key, value, msg in [("objective", "high", "record.objective"), ("kind", "pixel", "record.kind"),
                            ("batch", [0], "record.batch"), ("index", -1, "record.index"),
                            ("curve", [1.0, None], r"record.curve\[1\]")]:
        with pytest.raises(fv.FastvizError, match=msg):
            validate_record(dict(good, **{key: value}))
    with pytest.raises(fv.FastvizError, match="missing 'seed'"):
        validate_record({k: v for k, v in good.items() if k != "seed"})


def test_batch_records_skip_done_rows_and_fit_the_schema():
    grp = Group("channel", "features.3", [4, 5, 6], ["features.3/0004", "features.3/0005", "features.3/0006"],
                [None] * 3)
    result = SimpleNamespace(images=torch.rand(2, 3, 8, 8), history=torch.arange(10.0).reshape(5, 2))
    versions = {"fastviz": "0", "torch": "0", "model": {"name": "tiny", "sha1": "x"}}
    pixels_, recs = batch_records(grp, 1, 3, result, skip={"features.3/0005"}, seed=7, seconds=0.5,
                                  settings={"steps": 5}, versions=versions)
    assert [r["target"] for r in recs] == ["features.3/0006"]
    assert (recs[0]["index"], recs[0]["seed"], recs[0]["batch"], recs[0]["objective"]) == (6, 7, [1, 3], 9.0)
    assert recs[0]["curve"] == [1.0, 3.0, 5.0, 7.0, 9.0] and recs[0]["curve_steps"] == [1, 2, 3, 4, 5]
    assert pixels_[0].shape == (8, 8, 3) and pixels_[0].dtype == np.uint8
    validate_record(recs[0])


def test_killed_run_resumes_each_target_once(script, reference, tmp_path):
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(script), str(out), str(STEPS), str(BATCH), "slow"], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = out / "manifest.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if part.is_file() and len(part.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be killed: make it longer"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.jsonl").exists(), "killed before the end: only part files"
    done = {json.loads(line)["target"] for line in part.read_text().splitlines()}
    assert 4 <= len(done) < TOTAL
    r = run([sys.executable, str(script), str(out), str(STEPS), str(BATCH)])
    assert r["skipped"] == len(done) and r["rendered"] == TOTAL - len(done)
    recs = manifest(out)
    assert sorted(x["target"] for x in recs) == sorted(x["target"] for x in manifest(reference))
    assert len({x["target"] for x in recs}) == TOTAL, "each target once"
    assert without_timing(recs) == without_timing(manifest(reference))
    for rec in recs:
        assert np.array_equal(pixels(reference, rec), pixels(out, rec)), rec["file"]
    assert not list(out.rglob(".*.tmp"))
