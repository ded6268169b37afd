"""`fastviz evaluate`: which map to trust, measured on your images.

Per method: deletion AUC (lower is better), insertion AUC (higher), ROAD combined (higher), the
randomisation similarity (mean Spearman correlation over the cascade; lower = the map depends
more on the weights), and the milliseconds per image of the map itself. Writes report.md,
report.json and curves.png into --out.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from .. import io, metrics, sanity
from .attribution import batches
from .common import add_model_args, add_out_arg, model_from_args, out_dir

DEFAULT_METHODS = ["saliency", "guided", "gradcam", "smoothgrad", "ig"]


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="faithfulness and sanity of attribution maps: deletion, insertion, "
                                        "ROAD, randomisation; a table and curves")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help=f"maps to judge (default: {' '.join(DEFAULT_METHODS)}); any of "
                        f"{', '.join(sanity.METHODS)} or the aliases guided, ig, ixg")
    p.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    p.add_argument("--points", "--steps", type=int, default=50, dest="points",
                   help="deletion / insertion curve points (default 50; --steps is the old name)")
    p.add_argument("--percentiles", nargs="+", type=float, default=list(range(10, 100, 10)),
                   help="ROAD: percent of pixels removed (default 10 20 ... 90). Each is two sparse "
                        "solves per image on the CPU, 0.1-10 s each at 224x224: the slow part")
    p.add_argument("--no-road", action="store_true", help="skip ROAD")
    p.add_argument("--rand-images", type=int, default=4,
                   help="images for the randomisation check (the first N; 0 skips it; default 4)")
    add_model_args(p)
    add_out_arg(p, "out/evaluate")
    p.set_defaults(func=run)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write(path: Path, text: str) -> None:
    """Whole or not at all (docs/design.md, rule 11): a temporary name, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def evaluate(model, files: list[Path], methods: list[str], points: int = 50, percentiles=range(10, 100, 10),
             rand_images: int = 4, batch_size: int = 8) -> dict:
    """All metrics of every method on every file: {method: {summary..., curves...}}."""
    results = {}
    for name in methods:
        fn = sanity.map_method(name)
        dele, ins, road, ms, n = [], [], [], 0.0, 0
        rand_x = []
        for chunk, x in batches(files, batch_size, name):
            x = x.to(model.device)
            _sync(model.device)
            t = time.perf_counter()
            maps = fn(model, x, None)
            _sync(model.device)
            ms += (time.perf_counter() - t) * 1e3
            n += x.shape[0]
            dele.append(metrics.deletion(model, x, maps, points=points))
            ins.append(metrics.insertion(model, x, maps, points=points))
            if percentiles:
                road.append(metrics.road(model, x, maps, percentiles=percentiles))
            if len(rand_x) * batch_size < rand_images:
                rand_x.append(x.cpu())
        cat = lambda rs, f: torch.cat([getattr(r, f) for r in rs])  # noqa: E731
        entry = {
            "deletion_auc": cat(dele, "auc").mean().item(),
            "insertion_auc": cat(ins, "auc").mean().item(),
            "ms_per_image": ms / n,
            "images": n,
            "curves": {
                "fractions": dele[0].fractions.tolist(),
                "deletion": cat(dele, "curve").mean(0).tolist(),
                "insertion": cat(ins, "curve").mean(0).tolist(),
            },
            "per_image": {"deletion_auc": cat(dele, "auc").tolist(), "insertion_auc": cat(ins, "auc").tolist()},
        }
        if road:
            entry.update(road_combined=cat(road, "combined").mean().item(), road_morf=cat(road, "morf").mean().item(),
                         road_lerf=cat(road, "lerf").mean().item())
            entry["curves"].update(road_percentiles=road[0].percentiles.tolist(),
                                   road_morf=cat(road, "morf").mean(0).tolist(),
                                   road_lerf=cat(road, "lerf").mean(0).tolist())
            entry["per_image"]["road_combined"] = cat(road, "combined").tolist()
        if rand_images > 0:
            xr = torch.cat(rand_x)[:rand_images].to(model.device)
            r = sanity.randomization_check(model, xr, name)
            sim = r.similarity.nanmean(0)
            entry["randomization_similarity"] = sim.mean().item()
            entry["curves"]["randomization_stages"] = r.stages
            entry["curves"]["randomization_similarity"] = sim.tolist()
        results[name] = entry
    return results


def markdown(results: dict, model_name: str, n_images: int) -> str:
    lines = [f"# Which map to trust: {model_name}, {n_images} images", "",
             "| method | deletion AUC (lower better) | insertion AUC (higher) | ROAD combined (higher) "
             "| randomisation similarity (lower) | ms / image |",
             "|---|---|---|---|---|---|"]
    for name, e in results.items():
        rand = f"{e['randomization_similarity']:.3f}" if "randomization_similarity" in e else "-"
        road = f"{e['road_combined']:.4f}" if "road_combined" in e else "-"
        lines.append(f"| {name} | {e['deletion_auc']:.3f} | {e['insertion_auc']:.3f} | {road} "
                     f"| {rand} | {e['ms_per_image']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    for name, e in results.items():
        c = e["curves"]
        ax[0].plot(c["fractions"], c["deletion"], label=name)
        ax[1].plot(c["fractions"], c["insertion"], label=name)
        if "road_morf" in c:
            line = ax[2].plot(c["road_percentiles"], c["road_morf"], label=f"{name} MoRF")[0]
            ax[2].plot(c["road_percentiles"], c["road_lerf"], "--", color=line.get_color())
        if "randomization_similarity" in c:
            ax[3].plot(range(len(c["randomization_stages"])), c["randomization_similarity"], label=name)
    ax[0].set(title="deletion (lower AUC better)", xlabel="fraction of pixels deleted", ylabel="probability")
    ax[1].set(title="insertion (higher AUC better)", xlabel="fraction of pixels inserted")
    ax[2].set(title="ROAD: MoRF solid, LeRF dashed", xlabel="% of pixels removed")
    ax[3].set(title="cascading randomisation", xlabel="stages randomised (top first)", ylabel="Spearman")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def run(args) -> int:
    from ..errors import FastvizError

    for name in args.methods:
        sanity.map_method(name)  # unknown names fail before any work
    if args.rand_images < 0:
        raise FastvizError(f"--rand-images: expected >= 0, got {args.rand_images}")
    model = model_from_args(args)
    files = io._expand(args.paths)
    out = out_dir(args.out)
    percentiles = [] if args.no_road else args.percentiles
    results = evaluate(model, files, args.methods, args.points, percentiles, args.rand_images,
                       args.batch_size)
    report = {"model": args.model, "device": str(model.device), "images": [str(f) for f in files],
              "points": args.points, "percentiles": percentiles, "rand_images": args.rand_images,
              "methods": results}
    _write(out / "report.json", json.dumps(report, indent=1))
    table = markdown(results, args.model, len(files))
    _write(out / "report.md", table)
    drew = plot(results, out / "curves.png")
    print(table)
    print(f"wrote report.md, report.json{', curves.png' if drew else ' (no matplotlib: no plot)'} into {out}/")
    return 0
