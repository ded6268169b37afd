"""Dataset examples (fastviz/examples/): the streaming top-k equals a brute-force sort of every
activation, also with decoding workers, after an interruption and resume, after a kill, and with
2 ranks under torchrun; ties, scores, receptive fields, crops, files, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastviz as fv
from fastviz.examples.topk import TopK
from tiny_net import tiny

from atlas_helpers import env

N_IMAGES, SIDE, BATCH, K = 300, 32, 16, 5
LAYERS = ["features.0", "features.3"]  # a conv (before BN and an inplace ReLU) and the last ReLU6


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """300 small PNGs: smooth random fields, so that channels' maxima differ from image to image."""
    out = tmp_path_factory.mktemp("photos")
    gen = torch.Generator().manual_seed(1)
    low = torch.rand(N_IMAGES, 3, 6, 6, generator=gen)
    imgs = torch.nn.functional.interpolate(low, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    imgs = (imgs + 0.15 * torch.rand(imgs.shape, generator=gen)).clamp(0, 1)
    for i, img in enumerate(imgs):
        arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(out / f"img{i:04d}.png")
    return out


def reference(model, x: torch.Tensor, layers, k: int, score="max", batch: int = BATCH) -> dict:
    """Brute force: every activation of every image (whole forwards, same batches), then sorted by
    (score descending, index ascending)."""
    acts = {n: [] for n in layers}
    hooks = [model.layer(n).register_forward_hook(lambda _m, _i, out, n=n: acts[n].append(out.clone()))
             for n in layers]
    try:
        with torch.no_grad():
            for a in range(0, len(x), batch):
                model(x[a:a + batch])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n in layers:
        a = torch.cat(acts[n])                     # (N, C, h, w)
        if score == "max":
            s = a.flatten(2).max(2).values
        elif score == "mean":
            s = a.flatten(2).mean(2)
        else:
            s = a[:, :, score[0], score[1]]
        s = s.t().numpy()                         # (C, N)
        idx = np.stack([np.lexsort((np.arange(len(x)), -row))[:k] for row in s])
        out[n] = (torch.from_numpy(idx), torch.from_numpy(np.take_along_axis(s, idx, 1)))
    return out


@pytest.fixture(scope="module")
def decoded(folder) -> torch.Tensor:
    return fv.load_images(folder, size=SIDE)


@pytest.fixture(scope="module")
def truth(decoded) -> dict:
    m = tiny()
    m.module.features[2].inplace = False  # the reference reads features.0 after the inplace ReLU ran
    return reference(m, decoded, LAYERS, K)


def same(ex: dict, truth: dict) -> None:
    for n in LAYERS:
        idx, sc = truth[n]
        assert torch.equal(ex[n].indices, idx), n
        # the same arithmetic (same batches, same ops): equal up to float reordering at most
        torch.testing.assert_close(ex[n].scores, sc, rtol=1e-6, atol=1e-6)


def test_folder_scan_equals_brute_force_on_300_images(folder, truth):
    ex = fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K, batch_size=BATCH)
    same(ex, truth)
    e = ex["features.3"]
    assert e.images == N_IMAGES and e.skipped == [] and e.names[0] == "img0000.png"
    assert e.indices.shape == (8, K) and bool((e.scores[:, :-1] >= e.scores[:, 1:]).all())


def test_decoding_workers_give_the_same_lists(folder, truth):
    ex = fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K, batch_size=BATCH, num_workers=2)
    same(ex, truth)


class Stop(Exception):
    pass


def test_interrupted_scan_resumes_to_the_same_lists(folder, truth, tmp_path):
    def stop_at_half(done, total):
        if done >= total // 2:
            raise Stop

    with pytest.raises(Stop):
        fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K, batch_size=BATCH, checkpoint=tmp_path,
                            checkpoint_every=2, progress=stop_at_half)
    assert (tmp_path / "scan.rank0.pt").is_file()
    seen = []
    ex = fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K, batch_size=BATCH, checkpoint=tmp_path,
                             checkpoint_every=2, progress=lambda d, t: seen.append(d))
    same(ex, truth)
    assert seen[0] > N_IMAGES // 3, "resumed after the saved batches, not from the start"
    # other settings are refused, naming the argument; force starts over
    with pytest.raises(fv.FastvizError, match="checkpoint: .* other settings .*k"):
        fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K + 1, batch_size=BATCH, checkpoint=tmp_path)
    fv.dataset_examples(tiny(), folder, layer=LAYERS, k=K + 1, batch_size=BATCH, checkpoint=tmp_path, force=True)


def test_ties_go_to_the_lower_index_and_scores_mean_and_neuron():
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(10, 3, 16, 16, generator=gen)
    x = torch.cat([base, base, base])            # every image three times: every score tied 3 ways
    m = tiny()
    for score in ("max", "mean", (3, 5)):
        ex = fv.dataset_examples(m, x, layer="features.3", k=6, score=score, batch_size=7)
        ref = reference(m, x, ["features.3"], 6, score, batch=7)["features.3"]
        assert torch.equal(ex.indices, ref[0]), score
        first = ex.indices[:, 0]
        assert bool((first < 10).all()), "the copy with the lowest index comes first"
        assert torch.equal(ex.indices[:, 1], first + 10) and torch.equal(ex.indices[:, 2], first + 20)
    assert bool((ex.positions == torch.tensor([3, 5])).all())


def test_receptive_field_of_two_3x3_convs_is_5x5_and_crops_cut_it():
    m = tiny()
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = fv.dataset_examples(m, x, layer="features.3", k=3, field=1.0)
    assert ex.field_size == (5, 5)
    for c in range(8):
        for j in range(3):
            y, xx = ex.positions[c, j].tolist()
            assert ex.boxes[c, j].tolist() == [max(0, y - 2), max(0, xx - 2), min(32, y + 3), min(32, xx + 3)]
    crops = ex.crops(4)
    assert crops.shape == (3, 3, 5, 5)
    t, l, b, r = ex.windows(4)[0].tolist()
    assert torch.equal(crops[0], x[ex.indices[4, 0], :, t:b, l:r])
    assert not torch.equal(ex.crops(4, overlay=True), crops)


def test_receptive_field_of_a_strided_net():
    from tiny_net import tiny_net

    ex = fv.dataset_examples(tiny_net(), torch.rand(4, 3, 32, 32), layer="2", k=2, field=1.0)
    # conv 3x3 stride 2, conv 3x3 stride 2 (no padding): 7x7, moving 4 pixels per map step
    assert ex.map_size == (7, 7) and ex.field_size == (7, 7)
    from fastviz.examples.field import receptive_field
    rows, cols = receptive_field(tiny_net(), "2", (32, 32), (7, 7), torch.device("cpu"), mass=1.0)
    assert rows[:, 0].tolist() == [0, 4, 8, 12, 16, 20, 24] and bool((rows[:, 1] - rows[:, 0] == 7).all())
    # the effective field (the middle half of the gradient's mass) sits inside the theoretical one
    eff, _ = receptive_field(tiny_net(), "2", (32, 32), (7, 7), torch.device("cpu"), mass=0.5)
    assert bool((eff[:, 0] >= rows[:, 0]).all() and (eff[:, 1] <= rows[:, 1]).all())
    assert bool(((eff[:, 1] - eff[:, 0]) < 7).any())


def test_save_writes_crops_and_a_manifest(tmp_path):
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = fv.dataset_examples(tiny(), x, layer=LAYERS, channels=[1, 6], k=4)
    for e in ex.values():
        e.save(tmp_path)
    lines = [json.loads(s) for s in (tmp_path / "examples.jsonl").read_text().splitlines()]
    assert [ln["target"] for ln in lines] == ["features.0/0001", "features.0/0006", "features.3/0001",
                                              "features.3/0006"]
    for ln in lines:
        assert len(ln["examples"]) == 4
        for e in ln["examples"]:
            assert Image.open(tmp_path / e["file"]).size == Image.open(tmp_path / e["overlay"]).size
    e3 = lines[2]["examples"][0]
    assert e3["image"] == int(ex["features.3"].indices[1, 0]) and e3["score"] == pytest.approx(
        float(ex["features.3"].scores[1, 0]))
    assert set(json.loads((tmp_path / "examples.json").read_text())["layers"]) == set(LAYERS)
    # unscanned channels read -1 / nan, and asking for their crops names the argument
    assert int(ex["features.3"].indices[0, 0]) == -1
    with pytest.raises(fv.FastvizError, match="c: channel 0 .* was not scanned"):
        ex["features.3"].crops(0)


def test_state_size_does_not_grow_with_the_images():
    t = TopK(16, 9, "cpu")
    size = t.nbytes()
    for b in range(50):
        t.update(torch.rand(64, 16), torch.arange(b * 64, (b + 1) * 64), torch.zeros(64, 16, dtype=torch.long))
    assert t.nbytes() == size == 16 * 9 * (4 + 8 + 8)


# -- bad input ----------------------------------------------------------------------------------
def test_a_corrupt_file_is_skipped_named_and_counted(folder, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted(folder.iterdir())[:30]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "img0007.png").write_bytes(b"not a png at all")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ex = fv.dataset_examples(tiny(), src, layer="features.3", k=4, batch_size=8, num_workers=1)
    assert any("img0007.png" in str(x.message) and "data: skipped" in str(x.message) for x in w)
    assert ex.images == 29 and [i for i, _ in ex.skipped] == [7]
    assert 7 not in ex.indices.flatten().tolist()
    ex.save(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "examples.json").read_text())["layers"]["features.3"]
    assert info["images"] == 29 and info["skipped"][0]["name"] == "img0007.png"


def test_every_file_unreadable_is_one_clear_error(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\0" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(fv.FastvizError, match="data: none of its 3 images could be read; the first: .*bad0.jpg"):
            fv.dataset_examples(tiny(), tmp_path, layer="features.3", k=2)


def test_bad_input_names_the_argument(tmp_path):
    m = tiny()
    x = torch.rand(6, 3, 32, 32)
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(data=tmp_path / "empty", layer="features.3"), "holds no image files"),
        (dict(data=tmp_path / "nowhere", layer="features.3"), "data: no such file"),
        (dict(data=42, layer="features.3"), "data: expected a folder"),
        (dict(data=x, layer="features.9"), "layer: no module named"),
        (dict(data=x, layer="features.3", channels=[8]), "channels: .*8 is out of range"),
        (dict(data=x, layer="features.3", k=0), "k: expected"),
        (dict(data=x, layer="features.3", score="median"), "score: expected"),
        (dict(data=x, layer="features.3", score=(40, 0)), "score: position"),
        (dict(data=x, layer="features.3", batch_size=0), "batch_size"),
        (dict(data=x, layer="features.3", num_workers=-1), "num_workers"),
        (dict(data=x * 4, layer="features.3"), "data: .*\\[0, 1\\]"),
    ]
    for kw, msg in cases:
        data = kw.pop("data")
        with pytest.raises(fv.FastvizError, match=msg):
            fv.dataset_examples(m, data, **kw)


def test_k_larger_than_the_data_warns_and_keeps_all():
    with pytest.warns(UserWarning, match="k: 9 is more than the 4 images"):
        ex = fv.dataset_examples(tiny(), torch.rand(4, 3, 32, 32), layer="features.3", k=9)
    assert ex.k == 4 and sorted(ex.indices[0].tolist()) == [0, 1, 2, 3]


class Pairs(torch.utils.data.Dataset):
    """(image, label) items, one broken, one normalised as torchvision transforms often leave them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == 3:
            raise OSError("disk on fire")
        if i == 5:
            return (self.x[i] - 0.5) / 0.1, 0
        return self.x[i], i % 2


def test_a_torch_dataset_with_workers_skips_bad_items_with_their_reason():
    x = torch.rand(12, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ex = fv.dataset_examples(tiny(), Pairs(x), layer="features.3", k=3, batch_size=4, num_workers=2)
    text = " ".join(str(i.message) for i in w)
    assert "item 3: OSError: disk on fire" in text and "item 5: ValueError" in text
    assert [i for i, _ in ex.skipped] == [3, 5] and ex.images == 10 and ex.image_size == (32, 32)


# -- a kill and torchrun (slow tier) -----------------------------------------------------------
SCRIPT = '''
import json, os, sys, time
import fastviz as fv
from tiny_net import tiny
folder, out, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
ex = fv.dataset_examples(tiny(), folder, layer=["features.0", "features.3"], k=5, batch_size=16,
                         checkpoint=out, checkpoint_every=1,
                         progress=(lambda d, t: time.sleep(0.2)) if slow else None)
if os.environ.get("RANK", "0") == "0":
    print("RESULT " + json.dumps({n: [e.indices.tolist(), e.scores.tolist(), e.images] for n, e in ex.items()}),
          flush=True)
'''


def _result(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][0][7:])


def _check(res: dict, truth: dict) -> None:
    for n in LAYERS:
        assert res[n][0] == truth[n][0].tolist(), n
        np.testing.assert_allclose(res[n][1], truth[n][1].numpy(), rtol=1e-6, atol=1e-6)
        assert res[n][2] == N_IMAGES


@pytest.mark.slow  # a subprocess killed half way, then run again
def test_killed_scan_resumes_to_the_same_lists(folder, truth, tmp_path):
    script = tmp_path / "scan.py"
    script.write_text(SCRIPT)
    out = tmp_path / "state"
    p = subprocess.Popen([sys.executable, str(script), str(folder), str(out), "slow"], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "scan.rank0.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    saved = torch.load(out / "scan.rank0.pt", weights_only=True)["done"]
    assert 0 < saved < (N_IMAGES + 15) // 16, "killed half way"
    r = subprocess.run([sys.executable, str(script), str(folder), str(out), "fast"], env=env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    _check(_result(r.stdout), truth)


@pytest.mark.slow  # torchrun, 2 processes (gloo)
def test_two_ranks_under_torchrun_merge_exactly(folder, truth, tmp_path):
    script = tmp_path / "scan.py"
    script.write_text(SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    r = subprocess.run([*torchrun, str(script), str(folder), str(tmp_path / "state"), "fast"], env=env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check(_result(r.stdout), truth)
    assert sorted(p.name for p in (tmp_path / "state").glob("scan.rank*.pt")) == ["scan.rank0.pt", "scan.rank1.pt"]


# -- the atlas with dataset examples ------------------------------------------------------------
def test_atlas_with_a_dataset_records_each_units_examples(tmp_path):
    from fastviz.atlas import validate_record

    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fv.atlas(tiny(), tmp_path, layers="features.3", channels=[2, 5], steps=3, batch_size=2, dataset=x,
             examples_k=4, progress=False, jitter=2)
    recs = [json.loads(s) for s in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [r["target"] for r in recs] == ["features.3/0002", "features.3/0005"]
    ex = fv.dataset_examples(tiny(), x, layer="features.3", channels=[2, 5], k=4)
    for r in recs:
        validate_record(r)
        assert [e["image"] for e in r["examples"]] == ex.indices[r["index"]].tolist()
        assert all((tmp_path / e["overlay"]).is_file() for e in r["examples"])
    assert '"overlay":"features.3/0005_e0_act.png"' in (tmp_path / "index.html").read_text()
    with pytest.raises(fv.FastvizError, match="dataset: .*give layers"):
        fv.atlas(tiny(), tmp_path / "b", classes=[1], dataset=x, progress=False)


@pytest.mark.slow  # starts a browser
def test_a_unit_page_shows_its_examples_in_headless_chromium(tmp_path):
    from chromium import Chromium, find_chromium, open_gallery

    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fv.atlas(tiny(), tmp_path, layers="features.3", steps=3, batch_size=4, dataset=x, examples_k=4,
             progress=False, jitter=2)
    browser = Chromium(exe, str(tmp_path / "profile"), width=1280, height=900)
    try:
        browser.send("Page.navigate", url=f"file://{tmp_path / 'index.html'}#features.3/5")
        browser.wait_event("Page.loadEventFired")
        page = browser.eval(
            "(async () => { const imgs = [...document.querySelectorAll('#examples img')];"
            " await Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));"
            " return {open: document.getElementById('view').classList.contains('open'),"
            " title: document.getElementById('title').textContent, n: imgs.length,"
            " loaded: imgs.filter(i => i.naturalWidth > 0).length,"
            " captions: [...document.querySelectorAll('#examples figcaption')].map(c => c.textContent)}; })()")
        assert page["open"] and page["title"] == "features.3/0005"
        assert page["n"] == page["loaded"] == 4
        ex = fv.dataset_examples(tiny(), x, layer="features.3", k=4)
        assert page["captions"][0].split()[1] == str(int(ex.indices[5, 0]))
        assert browser.errors() == []
    finally:
        browser.close()
