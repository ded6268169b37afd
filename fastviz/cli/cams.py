"""`fastviz gradcam | guided-gradcam | scorecam | layercam | smoothgrad | ig`: maps and overlays."""

from __future__ import annotations

from pathlib import Path

from .. import averaged, cam, image, io
from .attribution import batches
from .common import add_model_args, add_out_arg, model_from_args, out_dir, parse_targets, slug

HELP = {
    "gradcam": "Grad-CAM maps (Selvaraju et al.) of a layer (default: the last feature map)",
    "guided-gradcam": "guided Grad-CAM images (Grad-CAM x guided backprop)",
    "scorecam": "Score-CAM maps (Wang et al. 2020): one masked forward per channel",
    "layercam": "LayerCAM maps (Jiang et al. 2021)",
    "smoothgrad": "SmoothGrad maps (Smilkov et al.): gradients averaged over noisy copies",
    "ig": "integrated gradients (Sundararajan et al.), with the completeness error per image",
}


def register(sub) -> None:
    for name, helptext in HELP.items():
        p = sub.add_parser(name, help=helptext)
        p.add_argument("paths", nargs="+", help="image files or folders")
        p.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
        add_model_args(p)
        p.add_argument("--target", nargs="*", help="class index for all images, or one per image (default: top-1)")
        if name in ("gradcam", "guided-gradcam", "scorecam", "layercam"):
            p.add_argument("--layer", default=None, help="dotted layer name (default: the last feature map)")
        if name == "scorecam":
            p.add_argument("--chunk", type=int, default=32, help="masked images per forward (default 32)")
        if name == "smoothgrad":
            p.add_argument("-n", type=int, default=25, help="noisy copies per image (default 25)")
            p.add_argument("--noise", type=float, default=0.15, help="noise level, fraction of the image range")
            p.add_argument("--squared", action="store_true", help="average squared gradients")
            p.add_argument("--seed", type=int, default=0)
        if name == "ig":
            p.add_argument("--points", "--steps", type=int, default=50, dest="points",
                           help="points on the path (default 50; --steps is the old name)")
            p.add_argument("--method", default="trapezoid", choices=averaged.IG_METHODS)
            p.add_argument("--spacing", default="cubic", choices=averaged.IG_SPACINGS)
            p.add_argument("--baseline", type=float, default=None, help="flat baseline value (default 0: black)")
        if name in ("smoothgrad", "ig"):
            p.add_argument("--chunk", type=int, default=32, help="gradient evaluations per pass (default 32)")
        add_out_arg(p, f"out/{name}")
        p.set_defaults(func=run, command_name=name)


def compute(model, x, method: str, target, args):
    """(B, H, W) map (or (B, 3, H, W) for guided-gradcam) of one method, and a note per image."""
    if method == "gradcam":
        return cam.gradcam(model, x, target, layer=args.layer), None
    if method == "guided-gradcam":
        return cam.guided_gradcam(model, x, target, layer=args.layer), None
    if method == "scorecam":
        return cam.scorecam(model, x, target, layer=args.layer, batch_size=args.chunk), None
    if method == "layercam":
        return cam.layercam(model, x, target, layer=args.layer), None
    if method == "smoothgrad":
        return averaged.smoothgrad(model, x, target, n=args.n, noise=args.noise, squared=args.squared,
                                   batch_size=args.chunk, seed=args.seed), None
    r = averaged.integrated_gradients(model, x, target, baseline=args.baseline, points=args.points,
                                      method=args.method, batch_size=args.chunk, spacing=args.spacing)
    notes = [f"completeness error {e:.4f} of score difference {d:.4f}"
             for e, d in zip(r.completeness_error.tolist(), r.score_difference.tolist())]
    return r.attributions.abs().amax(1), notes


def save(x, maps, stem: str, method: str, out: Path) -> None:
    name = method.replace("-", "_")
    if maps.dim() == 3:  # (3, H, W): guided Grad-CAM is a signed image
        image.save_image(image.normalize(maps, "signed"), out / f"{stem}_{name}.png")
        return
    mode = "minmax" if method in ("gradcam", "scorecam", "layercam") else "percentile"
    image.save_image(image.heatmap(maps, normalize_mode=mode), out / f"{stem}_{name}.png")
    image.save_image(image.overlay(x, maps, normalize_mode=mode), out / f"{stem}_{name}_overlay.png")


def run(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    out = out_dir(args.out)
    target = parse_targets(args.target, len(files))
    for i, (chunk, x) in enumerate(batches(files, args.batch_size, args.command_name)):
        t = target[i * args.batch_size:(i + 1) * args.batch_size] if isinstance(target, list) else target
        maps, notes = compute(model, x.to(model.device), args.command_name, t, args)
        maps = maps.cpu()
        for j, f in enumerate(chunk):
            save(x[j], maps[j], slug(f.stem), args.command_name, out)
            if notes:
                print(f"{f}: {notes[j]}")
    print(f"wrote {len(files)} x {args.command_name} into {out}/")
    return 0
