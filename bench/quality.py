"""Are the class models readable? Render with each parameterisation, judge with held-out networks.

For each setting, render class models of CLASSES on EfficientNet-Lite0, then report the class's
top-1 / top-5 rate and mean probability from Lite0 (rendered on) and EfficientNet-Lite1 (input 240,
never optimised on), each under 4 views (the whole picture, two random 80-100% crops, the
mirror image); the spectral slope of the pictures (`fastviz.param.spectral_slope`); the loop's ms
per image-step against the floor (one forward + backward to the input of the same number of
network rows, parameters frozen, measured in the same process just before). Writes
out/quality/results.json, out/quality/<setting>.pt and the side-by-side grid docs/img/quality_grid.jpg.

Settings: pixel (the classic pixel + Yosinski), fft, maco (the default), maco-2026-11 (the
default of 2026-11: the magnitude spectrum of unwindowed photo crops, whose border cross
drew stripes, and no contrast gain; rebuilt here by `maco_spectrum.magnitude(..., periodic=False)`
from the 3 crop scales it used), maco-448 (the default on a 448 x 448 canvas, crops resized to
224: a picture to print; judged after resizing), and lucent: the peer's `render_vis` with its
defaults (FFT image with decorrelated colour, standard transforms, Adam lr 0.05, parameters left
as lucent leaves them) on the same network and classes, all rows in one batch. Asking for lucent
re-runs the script in `.venv-peers` (bench/peers.py makes it). A name may carry its own step
count, `maco@64`.

`--every K` also judges the pictures every K steps (fastviz: `snapshot_every`; lucent: its
`thresholds`): the loop has no schedule tied to the number of steps (constant lr), so the
snapshot at step k is the picture a k-step run gives, and one run gives the time-to-quality
curve. Each result also carries the picture statistics of `fastviz.picture_stats` (stripes,
contrast, colourfulness) beside the sample photos' (bench/maco_spectrum.py).

    MALLOC_MMAP_THRESHOLD_=536870912 MALLOC_TRIM_THRESHOLD_=1073741824 OMP_NUM_THREADS=1 \\
        .venv/bin/python bench/quality.py [--steps 256] [--settings pixel,fft,maco,lucent] [--classes 1,130,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastviz as fv
from fastviz.cli.common import tune_malloc
from fastviz.hooks import session
from fastviz.picture_stats import axis_power, colourfulness, contrast, spectral_slope

CLASSES = [1, 20, 130, 285, 309, 340, 417, 504, 850, 948, 967, 980]
SETTINGS = {
    "pixel": dict(param="pixel", reg=fv.Yosinski()),     # the classic method
    "fft": dict(param="fft"),                            # lucent's recipe, frozen network
    "maco": dict(param="maco"),                          # the class-model default
    "maco-2026-11": dict(param="maco"),                  # the default of 2026-11 (old_maco)
    "maco-448": dict(param="maco", size=448),            # a picture to print
    "lucent": None,                                      # the peer itself (lucent_class_models)
}
ROOT = Path(__file__).resolve().parents[1]


def views(images: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """(4, B, 3, size, size): whole, two random 80-100% crops, mirror."""
    g = torch.Generator().manual_seed(seed)
    h, w = images.shape[-2:]
    out = [F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)]
    for _ in range(2):
        crops = []
        for im in images:
            s = int(h * (0.8 + 0.2 * float(torch.rand(1, generator=g))))
            y, x = (int(torch.randint(0, h - s + 1, (1,), generator=g)) for _ in range(2))
            crops.append(F.interpolate(im[None, :, y:y + s, x:x + s], size=(size, size), mode="bilinear",
                                       antialias=True, align_corners=False))
        out.append(torch.cat(crops))
    out.append(out[0].flip(-1))
    return torch.stack(out)


def judge(model: fv.Model, images: torch.Tensor, classes: list[int]) -> dict:
    v = views(images, model.input_size[0])
    with torch.no_grad():
        prob = torch.stack([model(x).softmax(1) for x in v])  # (4, B, 1000)
    target = torch.tensor(classes)
    p = prob[:, range(len(classes)), target]
    top5 = (prob.topk(5, dim=2).indices == target[None, :, None]).any(2)
    top1 = prob.argmax(2) == target[None]
    return {"top1": float(top1.float().mean()), "top5": float(top5.float().mean()),
            "p": float(p.mean()), "top5_per_class": top5.float().mean(0).tolist(), "p_per_class": p.mean(0).tolist()}


def floor_ms(model: fv.Model, rows: int, reps: int = 3) -> float:
    """Median ms of one forward + backward to the input of `rows` rows, parameters frozen."""
    x = torch.rand(rows, 3, 224, 224, requires_grad=True)
    ts = []
    with session(model) as s:
        for _ in range(reps + 1):
            t = time.perf_counter()
            _, logits = s.forward(x, [], stop=False)
            (g,) = torch.autograd.grad(logits[:, 0].sum(), x)
            ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts[1:])


@contextlib.contextmanager
def old_maco():
    """The MACO default of 2026-11: the spectrum of unwindowed crops (3 scales), gain 1."""
    from maco_spectrum import magnitude, photo_crops

    from fastviz import param

    log_mag = magnitude(photo_crops(scales=(1.0, 0.7, 0.5)), periodic=False).clamp_min(1e-6).log().numpy()
    before = param._photo_log_magnitude, param.Maco.__init__.__defaults__
    param._photo_log_magnitude = lambda: log_mag
    param.Maco.__init__.__defaults__ = (None, 1.0, 1.0)
    try:
        yield
    finally:
        param._photo_log_magnitude, param.Maco.__init__.__defaults__ = before


def picture_stats(images: torch.Tensor) -> dict:
    """Medians of the picture statistics (docs/quality.md compares them with the photos')."""
    return {"stripes": float(axis_power(images).median()), "contrast": float(contrast(images).median()),
            "colourfulness": float(colourfulness(images).median()), "slope": float(spectral_slope(images).median())}


def lucent_class_models(model: fv.Model, classes: list[int], steps: int, every: int | None = None
                        ) -> tuple[torch.Tensor, float, list]:
    """lucent's `render_vis` with its defaults, one row per class; (images, loop seconds,
    [(step, images)] at every `every` steps: its thresholds)."""
    from lucent.optvis import objectives, param
    from lucent.optvis import render as lucent_render
    from torch import nn

    class Normalize(nn.Module):
        def forward(self, x):
            return model.normalize(x)

    wrapped = nn.Sequential(Normalize(), model.module).eval()  # [0, 1] in, as lucent's images are

    @objectives.wrap_objective()
    def logit(c, b):
        return lambda hook: -hook("1__fc")[b, c]  # lucent minimises; its names join with "_"

    obj = sum((logit(c, b) for b, c in enumerate(classes[1:], 1)), logit(classes[0], 0))
    thresholds = tuple(range(every, steps, every)) + (steps,) if every else (steps,)
    torch.manual_seed(0)
    t = time.perf_counter()
    out = lucent_render.render_vis(wrapped, obj, param_f=lambda: param.image(224, batch=len(classes)),
                                   thresholds=thresholds, preprocess=False, progress=False, show_image=False)
    seconds = time.perf_counter() - t
    images = [torch.from_numpy(o).permute(0, 3, 1, 2).float().contiguous() for o in out]
    return images[-1], seconds, list(zip(thresholds[:-1], images[:-1]))


def in_peers_venv(argv: list[str]) -> int:
    """Re-run this script in .venv-peers (which has lucent), with the same arguments."""
    sys.path.insert(0, str(ROOT / "bench"))
    from peers import ensure_peers_venv

    return subprocess.call([str(ensure_peers_venv()), __file__, *argv])


FEATURE_LAYER, FEATURE_CHANNELS = "_blocks.10", [0, 1, 2, 3, 4, 5]
FEATURE_SETTINGS = {
    "pixel": dict(param="pixel", reg=fv.Yosinski(), steps=200),           # the classic default
    "fft": dict(param="fft", steps=256),                                  # the default: 1-px jitter
    "fft-lucent": dict(param="fft", transforms="lucent", steps=256),      # lucent's transforms
}


def features(out: Path) -> None:
    """Channel visualisations of FEATURE_LAYER: the channel's mean activation on each picture."""
    lite0 = fv.load_model()
    results, rows = {}, []
    for name, kw in FEATURE_SETTINGS.items():
        t0 = time.perf_counter()
        r = fv.feature(lite0, FEATURE_LAYER, FEATURE_CHANNELS, **kw)
        with session(lite0) as s, torch.no_grad():
            a = s.forward(r.images, [FEATURE_LAYER])[0][FEATURE_LAYER].mean((2, 3))
        act = a[range(len(FEATURE_CHANNELS)), FEATURE_CHANNELS]
        results[name] = {"steps": kw["steps"], "activation": act.tolist(), "mean_activation": float(act.mean()),
                         "slope": float(spectral_slope(r.images).median()), "seconds": time.perf_counter() - t0}
        print(f"feature {name}: mean channel activation {float(act.mean()):.1f} {[round(v, 1) for v in act.tolist()]}"
              f" | slope {results[name]['slope']:.2f} | {results[name]['seconds']:.0f} s", flush=True)
        rows.append(r.images)
    (out / "features.json").write_text(json.dumps(results, indent=1))
    fv.save_image(fv.grid(torch.cat(rows), nrow=len(FEATURE_CHANNELS)), ROOT / "docs" / "img" / "quality_features.jpg")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--classes", default=",".join(map(str, CLASSES)))
    ap.add_argument("--out", default=str(ROOT / "out" / "quality"))
    ap.add_argument("--features", action="store_true", help="channel visualisations instead of class models")
    ap.add_argument("--again", action="store_true", help="render settings already in results.json anew")
    ap.add_argument("--every", type=int, default=None, help="also judge the pictures every K steps")
    ap.add_argument("--grid", default="maco-2026-11,maco,lucent", help="the rows of docs/img/quality_grid.jpg")
    args = ap.parse_args()
    malloc = tune_malloc()
    torch.set_num_threads(1)
    if args.features:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return features(Path(args.out))
    classes = [int(c) for c in args.classes.split(",")]
    settings = args.settings.split(",")
    for name in settings:
        if name.partition("@")[0] not in SETTINGS:
            ap.error(f"unknown setting {name!r}: expected {', '.join(SETTINGS)}, optionally @steps")
    if any(n.startswith("lucent") for n in settings):
        try:
            import lucent  # noqa: F401
        except ImportError:
            raise SystemExit(in_peers_venv(sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lite0, lite1 = fv.load_model(), fv.load_model("efficientnet-lite1")
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for name in settings:
        base, _, at = name.partition("@")
        steps = int(at) if at else args.steps
        path = out / f"{name}.pt"
        if path.exists() and results.get(name, {}).get("steps") == steps and not args.again:
            print(f"{name}: done already ({path}; --again renders it anew)")
            continue
        t0 = time.perf_counter()
        if base == "lucent":
            images, loop_seconds, snaps = lucent_class_models(lite0, classes, steps, args.every)
            views_per_image = 1
        else:
            with old_maco() if base == "maco-2026-11" else contextlib.nullcontext():
                r = fv.class_model(lite0, classes, steps=steps, snapshot_every=args.every, **SETTINGS[base])
            images, loop_seconds, views_per_image = r.images, r.info["loop_seconds"], r.info["views"]
            snaps = [(k, im) for k, im in r.snapshots if k < steps]
        seconds = time.perf_counter() - t0
        step_ms = 1000 * loop_seconds / steps / len(classes)
        floor = floor_ms(lite0, len(classes) * views_per_image) / len(classes)
        res = {"steps": steps, "classes": classes, "views": views_per_image,
               "seconds": seconds, "ms_per_image_step": step_ms,
               "floor_ms_per_image": floor, "cost_vs_floor": step_ms / floor,
               "slope": float(spectral_slope(images).median()), "stats": picture_stats(images),
               "lite0": judge(lite0, images, classes), "lite1": judge(lite1, images, classes),
               "curve": [{"step": k, "lite1": judge(lite1, im, classes), "stats": picture_stats(im)}
                         for k, im in snaps],
               "malloc": malloc, "date": time.strftime("%Y-%m-%d %H:%M")}
        torch.save(images, path)
        results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        results[name] = res  # re-read first: two processes may share the file
        (out / "results.json").write_text(json.dumps(results, indent=1))
        for c in res["curve"]:
            print(f"  {name} at step {c['step']}: Lite1 top5 {c['lite1']['top5']:.0%} p {c['lite1']['p']:.2f}")
        print(f"{name}: Lite1 top5 {res['lite1']['top5']:.0%} p {res['lite1']['p']:.2f} | Lite0 top5 "
              f"{res['lite0']['top5']:.0%} p {res['lite0']['p']:.2f} | slope {res['slope']:.2f} | "
              f"{step_ms:.0f} ms/image-step, {res['cost_vs_floor']:.2f}x floor of {views_per_image} rows "
              f"| {seconds:.0f} s", flush=True)
    names = [n for n in args.grid.split(",") if (out / f"{n}.pt").exists()]
    if names:
        fit = lambda x: F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        rows = torch.cat([fit(torch.load(out / f"{n}.pt")) for n in names])
        fv.save_image(fv.grid(rows, nrow=len(classes)), ROOT / "docs" / "img" / "quality_grid.jpg")
        print("grid rows:", names)
    if (out / "maco-448.pt").exists():
        big = torch.load(out / "maco-448.pt")
        fv.save_image(fv.grid(big[:4], nrow=2), ROOT / "docs" / "img" / "quality_print.jpg")


if __name__ == "__main__":
    main()
