"""`fastviz demo`: the main job on the pretrained default and the sample photos."""

from __future__ import annotations

from .. import io
from .attribution import explain
from .common import add_model_args, add_out_arg, model_from_args, out_dir


def register(sub) -> None:
    p = sub.add_parser("demo", help="predictions, saliency and guided backprop for the sample photos")
    add_model_args(p)
    add_out_arg(p, "out/demo")
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
    return 0
