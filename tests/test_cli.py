"""The `fastviz` command, run in-process on the real model and photos."""

import json

import pytest

from fastviz.cli import main


def test_predict_saliency_guided_layers(photos, tmp_path, capsys):
    assert main(["predict", str(photos["chelsea"]), "--out", str(tmp_path)]) == 0
    assert "285 Egyptian cat" in capsys.readouterr().out
    assert main(["saliency", str(photos["chelsea"]), str(photos["coffee"]), "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "chelsea_saliency_overlay.png").is_file()
    preds = json.loads((tmp_path / "s" / "predictions.json").read_text())
    assert [v[0]["class"] for v in preds.values()] == [285, 967]
    assert main(["guided", str(photos["coffee"]), "--target", "967", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "coffee_guided.png").is_file()
    assert main(["layers"]) == 0
    assert "_blocks.10" in capsys.readouterr().out


def test_errors_exit_2_with_a_message(photos, tmp_path, capsys):
    assert main(["saliency", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["saliency", str(photos["chelsea"]), "--target", "1", "2"]) == 2
    assert "--target: expected one class for all images or one per image (1), got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_synthesis_commands_write_grids(photos, tmp_path, capsys):
    assert main(["class", "1", "285", "--steps", "1", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "grid.png").is_file() and (tmp_path / "c" / "0285_egyptian_cat.png").is_file()
    assert main(["feature", "_blocks.4", "1", "2", "--steps", "1", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "blocks_4_0002.png").is_file()
    assert main(["dream", str(photos["chelsea"]), "--layer", "_blocks.4", "--octaves", "1",
                 "--steps-per-octave", "1", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "chelsea_dream.png").is_file()
    assert main(["invert", str(photos["coffee"]), "--layer", "_blocks.4", "--steps", "1",
                 "--out", str(tmp_path / "i")]) == 0
    assert "class models: 2 images" in capsys.readouterr().out
    assert main(["class", "1000", "--steps", "1"]) == 2
    assert "classes: class index 1000 is out of range" in capsys.readouterr().err


def test_synthesis_method_flags(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["class", "130", "130", "--param", "fft", "--transforms", "none", "--diversity", "1",
                 "--steps", "1", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    assert main(["class", "130", "--param", "pixel", "--decay", "0.01", "--steps", "1", "--out", str(out)]) == 0
    assert main(["class", "130", "--size", "320", "--steps", "1", "--out", str(tmp_path / "big")]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "big" / "0130_flamingo.png").size == (320, 320)
    assert main(["class", "130", "--decay", "0.01", "--steps", "1"]) == 2  # maco has no Yosinski step
    assert "reg: the Yosinski regularizer applies to param='pixel' only" in capsys.readouterr().err


def test_examples_command_writes_crops_and_a_manifest(photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        (folder / photos[name].name).write_bytes(photos[name].read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "ex"
    with pytest.warns(UserWarning, match="data: skipped .*broken.jpg"):
        assert main(["examples", str(folder), "--layer", "_blocks.10", "--channels", "0-2", "--k", "2",
                     "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    assert "3 channels x 2 from 4 images (1 skipped)" in capsys.readouterr().out
    lines = [json.loads(s) for s in (out / "examples.jsonl").read_text().splitlines()]
    assert [ln["target"] for ln in lines] == ["_blocks.10/0000", "_blocks.10/0001", "_blocks.10/0002"]
    assert all((out / e["overlay"]).is_file() for ln in lines for e in ln["examples"])
    info = json.loads((out / "examples.json").read_text())["layers"]["_blocks.10"]
    assert info["images"] == 4 and info["skipped"][0]["name"] == "broken.jpg"
    assert main(["examples", str(tmp_path / "nowhere"), "--layer", "_blocks.10", "--out", str(out)]) == 2
    assert "data: no such file or folder" in capsys.readouterr().err


@pytest.mark.slow  # the demo crops (280 images) through Lite0
def test_examples_demo_needs_no_download(tmp_path, capsys):
    assert main(["examples", "demo", "--layer", "_blocks.10", "--channels", "0-3", "--k", "4",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert "4 channels x 4 from 280 images (0 skipped)" in capsys.readouterr().out


def test_atlas_command_with_a_dataset_and_channel_ranges(photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        (folder / photos[name].name).write_bytes(photos[name].read_bytes())
    out = tmp_path / "atlas"
    assert main(["atlas", "--layers", "_blocks.10", "--channels", "0-1", "--steps", "1", "--batch-size", "2",
                 "--dataset", str(folder), "--examples-k", "2", "--out", str(out), "--no-progress"]) == 0
    recs = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["target"] for r in recs] == ["_blocks.10/0000", "_blocks.10/0001"]
    assert all(len(r["examples"]) == 2 and (out / r["examples"][0]["file"]).is_file() for r in recs)
