"""`fastviz demo`: the main job on the pretrained default and the sample photos.

Writes top-5 predictions, saliency (heatmap and overlay) and guided backprop for every sample
photo; with `--synthesis` (as `make demo` runs it) also class models, channel visualisations,
DeepDream and an inversion: the pictures of docs/methods.md.
"""

from __future__ import annotations

import torch

from .. import image, io, render
from .attribution import explain
from .common import add_model_args, add_out_arg, model_from_args, out_dir

DEMO_CLASSES = [1, 130, 285, 980]  # goldfish, flamingo, Egyptian cat, volcano


def register(sub) -> None:
    p = sub.add_parser("demo", help="predictions, saliency and guided backprop for the sample photos")
    add_model_args(p)
    add_out_arg(p, "out/demo")
    p.add_argument("--synthesis", action="store_true",
                   help="also render class models, channels, DeepDream and an inversion")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    model = model_from_args(args)
    photos = io.sample_images()
    out = out_dir(args.out)
    results = explain(model, list(photos.values()), out, ("saliency", "guided"), batch_size=4)
    for f, top in results.items():
        best = top[0]
        print(f"{f.split('/')[-1]:22s} {best['class']:4d} {best['label']:24s} {best['probability']:.3f}")
    print(f"wrote predictions.json and saliency / overlay / guided PNGs for {len(photos)} photos into {out}/")
    if args.synthesis:
        synthesis(model, photos, out)
    return 0


def synthesis(model, photos: dict, out) -> None:
    # The default (MACO, 4 crops) in the top row, the classic pixel + Yosinski below it.
    r = render.class_model(model, DEMO_CLASSES, progress=True)
    classic = render.class_model(model, DEMO_CLASSES, steps=200, param="pixel", progress=True)
    image.save_image(image.grid(torch.cat([r.images, classic.images]), nrow=4), out / "class_models.png")
    r = render.feature(model, "_blocks.10", range(4), steps=256, progress=True)
    classic = render.feature(model, "_blocks.10", range(4), steps=128, param="pixel", progress=True)
    image.save_image(image.grid(torch.cat([r.images, classic.images]), nrow=4), out / "channels_blocks10.png")
    cat = io.load_images(photos["chelsea"])
    r = render.deepdream(model, cat, "_blocks.8", progress=True)
    image.save_image(image.grid(torch.cat([cat, r.images]), nrow=2), out / "deepdream_chelsea.png")
    coffee = io.load_images(photos["coffee"])
    r = render.invert(model, coffee, "_blocks.6", steps=200, progress=True)
    image.save_image(image.grid(torch.cat([coffee, r.images]), nrow=2), out / "invert_coffee_blocks6.png")
    print(f"wrote class_models.png, channels_blocks10.png, deepdream_chelsea.png, invert_coffee_blocks6.png into {out}/")
