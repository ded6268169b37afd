"""fastviz lrp on the command line (fastviz/cli/lrp.py), and lrp in the trust report's methods."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def test_lrp_command_writes_signed_maps_and_a_report(photos, tmp_path):
    from fastviz.cli import main

    out = tmp_path / "lrp"
    assert main(["lrp", str(photos["chelsea"]), str(photos["coffee"]), "--target", "285", "967",
                 "--composite", "epsilon_gamma_box", "--out", str(out)]) == 0
    report = json.loads((out / "lrp.json").read_text())
    assert report["composite"] == "epsilon_gamma_box"
    assert [v["class"] for v in report["images"].values()] == [285, 967]
    heat = Image.open(out / "chelsea_lrp.png")
    assert heat.size == (224, 224)
    # blue-white-red: most of the picture is near white (relevance ~ 0), and some of it is red
    px = np.asarray(heat.convert("RGB")).reshape(-1, 3).astype(int)
    red = (px[:, 0] > 200) & (px[:, 1] < 150) & (px[:, 2] < 150)
    white = px.min(1) > 200
    assert red.sum() > 100 and white.mean() > 0.5


def test_lrp_is_a_trust_method():
    from fastviz import sanity

    assert "lrp" in sanity.METHODS
