"""fastviz gradcam / scorecam / ig on the command line (fastviz/cli/cams.py)."""

from __future__ import annotations


def test_cam_and_ig_commands_write_maps(photos, tmp_path):
    from fastviz.cli import main

    out = tmp_path / "g"
    assert main(["gradcam", str(photos["coffee"]), "--layer", "_blocks.10", "--out", str(out)]) == 0
    assert any(out.iterdir())
    assert main(["scorecam", str(photos["coffee"]), "--layer", "_blocks.15", "--chunk", "64",
                 "--out", str(tmp_path / "s")]) == 0
    # --points, and --steps as its old name
    for flag in ("--points", "--steps"):
        assert main(["ig", str(photos["coffee"]), flag, "4", "--out", str(tmp_path / flag[2:])]) == 0
