"""Pictures for docs/attribution_more.md: every method on chelsea and coffee, one PNG per method.

    python bench/cam_pictures.py [OUT_DIR]     (default docs/img/attribution_more; CUDA when available)
Each PNG is a 2 x 2 grid: photo | map, for chelsea (285) then coffee (967), at 160 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import fastviz as fv
from fastviz.averaged import integrated_gradients, smoothgrad
from fastviz.cam import gradcam, guided_gradcam, layercam, scorecam


def main(out: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = fv.load_model(device=device)
    photos = fv.sample_images()
    x = fv.load_images([photos["chelsea"], photos["coffee"]]).to(device)
    target = [285, 967]
    maps = {
        "gradcam": gradcam(model, x, target),
        "layercam": layercam(model, x, target),
        "scorecam": scorecam(model, x, target, batch_size=64),
        "guided_gradcam": guided_gradcam(model, x, target),
        "smoothgrad": smoothgrad(model, x, target, n=25, seed=0),
        "ig": integrated_gradients(model, x, target, points=64).attributions.abs().amax(1),
    }
    out.mkdir(parents=True, exist_ok=True)
    small = lambda t: F.interpolate(t.float().cpu(), size=(160, 160), mode="bilinear",  # noqa: E731
                                    align_corners=False, antialias=True).clamp(0, 1)
    xs = x.cpu()
    for name, m in maps.items():
        m = m.detach().cpu()
        if m.dim() == 4:
            shown = fv.normalize(m, "signed")
        elif name in ("smoothgrad", "ig"):
            shown = fv.overlay(xs, m, alpha=0.6, normalize_mode="percentile")
        else:
            shown = fv.overlay(xs, m, alpha=0.5)
        panels = torch.stack([xs[0], shown[0], xs[1], shown[1]])
        fv.save_image(fv.grid(small(panels), nrow=4), out / f"{name}.png")
        print(f"wrote {out / f'{name}.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img/attribution_more"))
