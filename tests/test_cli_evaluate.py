"""fastviz evaluate, deconvnet and input-x-gradient on the command line (fastviz/cli/evaluate.py)."""

from __future__ import annotations


def test_evaluate_writes_table_json_and_curves(photos, tmp_path, capsys):
    import json

    from fastviz.cli import main

    out = tmp_path / "report"
    assert main(["evaluate", str(photos["chelsea"]), str(photos["coffee"]), "--methods", "saliency", "guided",
                 "--points", "4", "--percentiles", "30", "70", "--rand-images", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("saliency", "guided"):
        e = report["methods"][name]
        assert 0 < e["deletion_auc"] < 1 and 0 < e["insertion_auc"] < 1 and e["ms_per_image"] > 0
        assert len(e["curves"]["deletion"]) == 5 and len(e["per_image"]["road_combined"]) == 2
        assert len(e["curves"]["randomization_similarity"]) == 21  # Lite0's stages
        assert e["curves"]["deletion"][0] > e["curves"]["deletion"][-1]  # the cat goes with its pixels
    assert "| guided |" in (out / "report.md").read_text() and (out / "curves.png").stat().st_size > 0
    assert main(["evaluate", str(photos["chelsea"]), "--methods", "occlusion"]) == 2
    assert "method: expected one of" in capsys.readouterr().err


def test_deconvnet_and_input_x_gradient_commands(photos, tmp_path):
    from fastviz.cli import main

    assert main(["deconvnet", str(photos["coffee"]), "--out", str(tmp_path / "d")]) == 0
    assert main(["input-x-gradient", str(photos["coffee"]), "--target", "967", "--out", str(tmp_path / "i")]) == 0
    assert (tmp_path / "d" / "coffee_deconvnet.png").is_file()
    assert (tmp_path / "i" / "coffee_input_x_gradient.png").is_file()
