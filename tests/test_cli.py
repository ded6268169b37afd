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
    assert main(["class", "130", "--decay", "0.01", "--steps", "1"]) == 2  # maco has no Yosinski step
    assert "reg: the Yosinski regularizer applies to param='pixel' only" in capsys.readouterr().err
