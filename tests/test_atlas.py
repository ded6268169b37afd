"""fv.atlas: stable files, manifest schema, resume after a kill, refused setting changes,
2 ranks under torchrun (gloo) == 1 process, and the gallery in a real (headless) Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastviz as fv
from tiny_net import tiny
from fastviz.atlas import MANIFEST_SCHEMA, gallery_html, validate_record

ROOT = Path(__file__).resolve().parents[1]

# A tiny classifier, built the same way in every process (seeded): 10 classes, 8 channels.
TINY = '''
import json, sys
import fastviz as fv
from tiny_net import tiny  # tests/ is on PYTHONPATH (env())

if __name__ == "__main__":
    out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # "slow": the progress callback (called after each batch is written) sleeps, so that a test
    # can kill the run halfway on any machine; it does not change what is rendered.
    slow = len(sys.argv) > 4 and sys.argv[4] == "slow"
    import time
    r = fv.atlas(tiny(), out, classes="all", layers=["features.3"], steps=steps, batch_size=batch,
                 jitter=2, progress=(lambda done, total: time.sleep(0.3)) if slow else False)
    import os
    if os.environ.get("RANK", "0") == "0":  # one line: two ranks' prints can interleave in the pipe
        print("RESULT " + json.dumps({"rendered": r.rendered, "skipped": r.skipped, "total": r.total,
                                      "world": r.world_size}), flush=True)
'''
TOTAL = 18          # 10 classes + 8 channels
STEPS, BATCH = 30, 2


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("atlas_script") / "tiny_atlas.py"
    p.write_text(TINY)
    return p


def env() -> dict:
    # One thread in every process: the 1-process and the 2-rank runs then do the same arithmetic.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))


def run(args: list[str], timeout: float = 300) -> dict:
    p = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[0][7:])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(out: Path, rec: dict) -> np.ndarray:
    return np.asarray(Image.open(out / rec["file"]))


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


@pytest.fixture(scope="module")
def reference(script, tmp_path_factory) -> Path:
    """A complete 1-process atlas of the tiny network."""
    out = tmp_path_factory.mktemp("atlas_ref")
    r = run([sys.executable, str(script), str(out), str(STEPS), str(BATCH)])
    assert r == {"rendered": TOTAL, "skipped": 0, "total": TOTAL, "world": 1}
    return out


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


def test_measured_batch_size_is_recorded(tmp_path):
    m = tiny()
    r = fv.atlas(m, tmp_path, classes="all", steps=2, progress=False)
    assert 1 <= r.batch_size <= 10
    assert json.loads((tmp_path / "atlas.json").read_text())["settings"]["batch_size"] == r.batch_size


def test_cli_names_files_by_class(tmp_path):
    from fastviz.cli import main

    out = tmp_path / "cli"
    assert main(["atlas", "--classes", "130", "1", "--layers", "_blocks.6", "--channels", "0,5", "--steps", "2",
                 "--size", "32", "--batch-size", "2", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "_blocks.6/0000.png", "_blocks.6/0005.png", "class/0001_goldfish.png", "class/0130_flamingo.png"]
    assert main(["atlas", "--classes", "1", "--steps", "3", "--size", "32", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 2


def test_gallery_html_is_self_contained():
    rec = {"target": "class/0001_a", "file": "class/0001_a.png", "kind": "class", "layer": None, "index": 1,
           "label": "</script><b>x", "seed": 0, "objective": 1.0, "curve": [0.0, 1.0], "curve_steps": [1, 2],
           "seconds": 0.1, "settings": {"steps": 2}}
    page = gallery_html([rec])
    assert page.count("</script>") == 2, "a label cannot close the data script"
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "no network"
    assert 'loading = "lazy"' in page


CHROMIUM = None
try:
    sys.path.insert(0, str(Path(__file__).parent))
    from chromium import THUMBS_JS, VISIBLE_JS, Chromium, find_chromium, open_gallery

    CHROMIUM = find_chromium()
finally:
    sys.path.pop(0)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_gallery_in_headless_chromium(reference):
    browser = Chromium(CHROMIUM, tempfile.mkdtemp(prefix="fastviz-chromium-"), width=1280, height=900)
    try:
        open_gallery(browser, reference / "index.html")
        assert browser.eval(THUMBS_JS) == {"n": TOTAL, "loaded": TOTAL}, "every thumbnail loaded"
        assert browser.eval(VISIBLE_JS) == TOTAL
        set_query = ("(() => { const e = document.getElementById('q'); e.value = %s; "
                     "e.dispatchEvent(new Event('input')); return " + VISIBLE_JS + "; })()")
        assert browser.eval(set_query % "'class 7'") == 1
        assert browser.eval(set_query % "''") == TOTAL
        assert browser.eval("(() => { const s = document.getElementById('layer'); s.value = 'features.3'; "
                            "s.dispatchEvent(new Event('change')); return " + VISIBLE_JS + "; })()") == 8
        opened = browser.eval("(() => { document.querySelector('#grid figure:not([hidden])').click(); "
                              "const big = document.getElementById('big'); return new Promise(r => "
                              "big.complete ? r(0) : big.onload = r).then(() => ({open: document.getElementById("
                              "'view').classList.contains('open'), w: big.naturalWidth, points: document."
                              "querySelector('#plot polyline').getAttribute('points').split(' ').length})); })()")
        assert opened == {"open": True, "w": 32, "points": STEPS}
        shot = ROOT / "docs" / "img" / "atlas_gallery_test.png"
        browser.screenshot(shot)
        assert Image.open(shot).size == (1280, 900)
        assert browser.errors() == []
    finally:
        browser.close()
