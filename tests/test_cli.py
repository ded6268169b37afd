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
    assert "--target: expected 1 or 1 classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nonsense"])
