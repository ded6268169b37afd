"""`fastviz class | feature | neuron | dream | invert`: synthesis with progress bars and grid PNGs."""

from __future__ import annotations

from pathlib import Path

from .. import image, io, render
from ..param import PARAMS
from ..regularizers import Yosinski
from .common import add_model_args, add_out_arg, model_from_args, out_dir, slug


def _add_loop_args(p, steps: int = 256) -> None:
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="rows rendered at once (default: all)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "eager", "graph"))
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the network")
    p.add_argument("--size", type=int, default=None,
                   help="side of the picture in pixels (default: the network's input); a larger "
                        "picture, to print, is seen by the network in random crops resized to its input")


REG_FIELDS = ("decay", "blur_every", "blur_sigma", "norm_percentile", "contribution_percentile")


def _add_reg_args(p, default_param: str | None) -> None:
    """--param, --transforms, --diversity and the Yosinski flags; default_param None: each
    target kind keeps its own default (class models maco, channels fft)."""
    shown = default_param or "class: maco, channel: fft"
    p.add_argument("--param", choices=PARAMS, default=default_param,
                   help=f"image parameterisation (default {shown}; pixel = the classic method "
                        "with the Yosinski regularizer)")
    p.add_argument("--transforms", choices=("auto", "none", "lucent", "maco"), default="auto",
                   help="random views per step: auto = the param's default (maco: 4 crops of 50-100%%, "
                        "fft: lucent's pad/jitter/scale/rotate for class models, a 1-pixel jitter for "
                        "channels and neurons, pixel: none)")
    p.add_argument("--diversity", type=float, default=0.0, help="weight of the diversity term (Olah 2017)")
    d = Yosinski()
    for name in REG_FIELDS:
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(d, name)), default=None,
                       help=f"Yosinski regularizer, --param pixel only (default {getattr(d, name)})")


def _method(args) -> dict:
    """param, transforms, diversity and (pixel) the Yosinski regularizer from the flags."""
    given = {n: getattr(args, n) for n in REG_FIELDS if getattr(args, n) is not None}
    kw = dict(param=args.param, transforms=args.transforms, diversity=args.diversity)
    if given or args.param == "pixel":
        kw["reg"] = Yosinski(**given)  # with another param, the engine says the flags need pixel
    return kw


def _add_target_parser(sub, name: str, help: str, targets: tuple[str, ...], param: str, out: str, func,
                       steps: int = 256):
    """A synthesis subcommand: its positional targets, then the shared model / loop / method flags."""
    p = sub.add_parser(name, help=help)
    for t in targets:
        p.add_argument(t, nargs="+" if t in ("classes", "channels") else None, type=str if t == "layer" else int)
    add_model_args(p)
    _add_loop_args(p, steps)
    _add_reg_args(p, param)
    add_out_arg(p, out)
    p.set_defaults(func=func)


def register(sub) -> None:
    _add_target_parser(sub, "class", "class models by gradient ascent (MACO by default; --param pixel: Yosinski)",
                       ("classes",), "maco", "out/class", run_class, steps=96)
    _add_target_parser(sub, "feature", "channel visualisation of a layer", ("layer", "channels"), "fft",
                       "out/feature", run_feature)

    p = sub.add_parser("dream", help="DeepDream on photos")
    p.add_argument("paths", nargs="+")
    p.add_argument("--layer", required=True)
    p.add_argument("--octaves", type=int, default=4)
    p.add_argument("--steps-per-octave", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    add_out_arg(p, "out/dream")
    p.set_defaults(func=run_dream)

    p = sub.add_parser("invert", help="reconstruct photos from a layer's representation")
    p.add_argument("paths", nargs="+")
    p.add_argument("--layer", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    add_out_arg(p, "out/invert")
    p.set_defaults(func=run_invert)


def _loop_kwargs(args) -> dict:
    kw = dict(steps=args.steps, seed=args.seed, batch_size=args.batch_size, backend=args.backend, amp=args.amp)
    if args.size is not None:
        kw["size"] = args.size
    if args.lr is not None:
        kw["lr"] = args.lr
    return kw


def _write(r, out: Path, names: list[str], title: str) -> None:
    for img, name in zip(r.images, names):
        image.save_image(img, out / f"{name}.png")
    path = image.save_image(image.grid(r.images), out / "grid.png")
    print(f"{title}: {len(names)} images and {path.name} in {out}/ "
          f"({r.info['backend']}, {r.info['seconds']:.1f} s)")


def run_class(args) -> int:
    model = model_from_args(args)
    r = render.class_model(model, args.classes, progress=True, device=model.device,
                           **_method(args), **_loop_kwargs(args))
    labels = model.labels or [str(c) for c in range(max(args.classes) + 1)]
    _write(r, out_dir(args.out), [f"{c:04d}_{slug(labels[c])}" for c in args.classes], "class models")
    return 0


def run_feature(args) -> int:
    model = model_from_args(args)
    r = render.feature(model, args.layer, args.channels, progress=True, device=model.device,
                       **_method(args), **_loop_kwargs(args))
    _write(r, out_dir(args.out), [f"{slug(args.layer)}_{c:04d}" for c in args.channels], "features")
    return 0


def run_dream(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    x = io.load_images(files)
    r = render.deepdream(model, x, args.layer, octaves=args.octaves, steps_per_octave=args.steps_per_octave,
                         lr=args.lr, seed=args.seed, progress=True)
    _write(r, out_dir(args.out), [f"{slug(f.stem)}_dream" for f in files], "deepdream")
    return 0


def run_invert(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    x = io.load_images(files)
    r = render.invert(model, x, args.layer, steps=args.steps, seed=args.seed, progress=True)
    _write(r, out_dir(args.out), [f"{slug(f.stem)}_{slug(args.layer)}" for f in files], "inversions")
    return 0
