"""Pictures for docs/methods.md: LRP on the sample photos beside saliency, one JPEG.

    python bench/lrp_pictures.py [OUT]     (default docs/img/methods/lrp.jpg)

Rows: chelsea (285), coffee (967), astronaut (top-1). Columns: the photo, saliency, then LRP with
epsilon_plus_flat (the default), epsilon_gamma_box and epsilon_alpha2_beta1_flat. LRP is signed:
red is evidence for the class, blue against, white nothing, each map scaled by its 99.5th
percentile of |relevance| so that zero is white in every panel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import fastviz as fv

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")


def main(out: Path) -> None:
    model = fv.load_model()
    photos = fv.sample_images()
    x = fv.load_images([photos["chelsea"], photos["coffee"], photos["astronaut"]])
    target = torch.tensor([285, 967, fv.predict(model, x[2:], k=1)[0][0][0]])
    cols = [x, fv.heatmap(fv.saliency(model, x, target), normalize_mode="percentile")]
    for name in COMPOSITES:
        r = fv.lrp(model, x, target, composite=name)
        cols.append(fv.heatmap(r.maps, colormap="bwr", normalize_mode="signed"))
        print(name, "conservation", [round(float(c), 4) for c in r.conservation])
    panels = torch.stack(cols, 1).flatten(0, 1)
    small = F.interpolate(panels.float(), size=(192, 192), mode="bilinear", align_corners=False,
                          antialias=True).clamp(0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    fv.save_image(fv.grid(small, nrow=len(cols)), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img/methods/lrp.jpg"))
