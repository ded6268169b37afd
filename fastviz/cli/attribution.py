"""`fastviz predict | saliency | guided | deconvnet | input-x-gradient | layers`."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from .. import attribution, image, io
from .common import add_model_args, add_out_arg, model_from_args, out_dir, parse_targets, slug


def _add_files(p):
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--batch-size", type=int, default=8)


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images")
    _add_files(p)
    add_model_args(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", default=None, help="also write predictions.json into this folder")
    p.set_defaults(func=run_predict)

    for name, helptext in (("saliency", "saliency maps (|d score / d pixel|, max over RGB)"),
                           ("guided", "guided backpropagation images"),
                           ("deconvnet", "deconvnet images (Zeiler & Fergus: ReLU backward = relu(gradient))"),
                           ("input-x-gradient", "input x gradient images (signed, per channel)")):
        p = sub.add_parser(name, help=helptext)
        _add_files(p)
        add_model_args(p)
        p.add_argument("--target", nargs="*", help="class index for all images, or one per image (default: top-1)")
        add_out_arg(p, f"out/{name}")
        p.set_defaults(func=run_explain, methods=(name,))

    p = sub.add_parser("layers", help="list the dotted layer names of a model with output shapes")
    add_model_args(p)
    p.set_defaults(func=run_layers)


def batches(files: list[Path], size: int, desc: str):
    for i in tqdm(range(0, len(files), size), desc=desc, unit="batch"):
        chunk = files[i:i + size]
        yield chunk, io.load_images(chunk)


def run_predict(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    results = {}
    for chunk, x in batches(files, args.batch_size, "predict"):
        for f, top in zip(chunk, attribution.predict(model, x, k=args.k)):
            results[str(f)] = [{"class": c, "label": lab, "probability": round(p, 5)} for c, lab, p in top]
            print(f"{f}: " + ", ".join(f"{c} {lab} {p:.3f}" for c, lab, p in top))
    if args.out:
        path = out_dir(args.out) / "predictions.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return 0


def explain(model, files: list[Path], out: Path, methods, target=None, batch_size: int = 8) -> dict:
    """Top-5 predictions and the requested maps for every file; PNGs into `out`."""
    results = {}
    for i, (chunk, x) in enumerate(batches(files, batch_size, "explain")):
        t = target[i * batch_size:(i + 1) * batch_size] if isinstance(target, list) else target
        x = x.to(model.device)
        preds = attribution.predict(model, x, k=5)
        maps = {}
        if "saliency" in methods:
            maps["saliency"] = attribution.saliency(model, x, t).cpu()
        if "guided" in methods:
            maps["guided"] = attribution.guided_backprop(model, x, t).cpu()
        if "deconvnet" in methods:
            maps["deconvnet"] = attribution.deconvnet(model, x, t).cpu()
        if "input-x-gradient" in methods:
            maps["input-x-gradient"] = attribution.input_x_gradient(model, x, t).cpu()
        x = x.cpu()
        for j, f in enumerate(chunk):
            stem = slug(f.stem)
            image.save_image(x[j], out / f"{stem}.png")
            if "saliency" in maps:
                s = maps["saliency"][j]
                image.save_image(image.heatmap(s, normalize_mode="percentile"), out / f"{stem}_saliency.png")
                image.save_image(image.overlay(x[j], s, normalize_mode="percentile"), out / f"{stem}_saliency_overlay.png")
            for name in ("guided", "deconvnet", "input-x-gradient"):  # signed images
                if name in maps:
                    image.save_image(image.normalize(maps[name][j], "signed"),
                                     out / f"{stem}_{name.replace('-', '_')}.png")
            results[str(f)] = [{"class": c, "label": lab, "probability": round(p, 5)} for c, lab, p in preds[j]]
    (out / "predictions.json").write_text(json.dumps(results, indent=2))
    return results


def run_explain(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    out = out_dir(args.out)
    explain(model, files, out, args.methods, parse_targets(args.target, len(files)), args.batch_size)
    print(f"wrote {len(files)} x {', '.join(args.methods)} into {out}/")
    return 0


def run_layers(args) -> int:
    import torch

    from ..hooks import session

    model = model_from_args(args)
    shapes = {}
    with session(model) as s:
        for name in model.layer_names():
            def grab(_m, _i, o, name=name):
                if isinstance(o, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(o.shape[1:])
            s.add_forward_hook(model.layer(name), grab)
        size = model.input_size or (224, 224)
        with torch.no_grad():
            model(torch.zeros(1, model.channels or 3, *size, device=model.device))
    for name in model.layer_names():
        kind = type(model.layer(name)).__name__
        print(f"{name:40s} {kind:24s} {shapes.get(name, '')}")
    return 0
