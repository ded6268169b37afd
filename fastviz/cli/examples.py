"""`fastviz examples`: the dataset images that excite each channel of a layer most, into a folder.

`fastviz examples photos/ --layer _blocks.10 --k 9 --out examples/` scans the folder once (resumes
after a kill: run the same command again), then writes each unit's crops, plain and with its
activation overlaid, with examples.jsonl and examples.json. `fastviz examples demo` scans the
crops of the bundled sample photos (`fastviz.demo_set`): no download. Works under torchrun.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FastvizError
from .common import add_model_args, model_from_args, rank_device


def parse_indices(values: list[str] | None, what: str):
    """'all', integers and ranges ('0-63'), space- or comma-separated -> 'all' | list[int] | None."""
    if not values:
        return None
    if values == ["all"]:
        return "all"
    out: list[int] = []
    try:
        for part in values:
            for v in filter(None, part.split(",")):
                a, sep, b = v.partition("-")
                out.extend(range(int(a), int(b) + 1) if sep else [int(v)])
    except ValueError as e:
        raise FastvizError(f"--{what}: expected 'all', indices or ranges like 0-63, got {' '.join(values)!r}") from e
    return out


def register(sub) -> None:
    p = sub.add_parser("examples", help="the dataset images that excite each channel most (top-k, with "
                                        "receptive-field crops; resumable; shards under torchrun)")
    p.add_argument("data", help="a folder of images, or 'demo' (crops of the bundled sample photos)")
    p.add_argument("--layer", nargs="+", required=True, metavar="LAYER", help="layer(s) whose channels to rank")
    p.add_argument("--channels", nargs="+", default=["all"], metavar="all|N|A-B",
                   help="'all' (default), indices or ranges, e.g. 0-63")
    p.add_argument("--k", type=int, default=9, help="examples per channel (default 9)")
    p.add_argument("--score", default="max", help="max (default), mean, or a neuron's position y,x")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="decoding processes (default: 2, or 1 on a one-core machine)")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--force", action="store_true", help="start over where the folder holds another scan")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    p.set_defaults(func=run_examples)


def dataset_arg(data: str):
    """A folder or file as is; 'demo' (when no such path exists) is the demo crops."""
    if data == "demo" and not Path(data).exists():
        from ..demo_data import demo_set

        return demo_set().images
    return data


def score_arg(text: str):
    if text in ("max", "mean"):
        return text
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise FastvizError(f"--score: expected max, mean or y,x, got {text!r}") from None
    return (y, x)


def run_examples(args) -> int:
    from ..examples import dataset_examples

    device = rank_device(args)
    model = model_from_args(args)
    out = Path(args.out)
    ex = dataset_examples(model, dataset_arg(args.data), layer=args.layer,
                          channels=parse_indices(args.channels, "channels"), k=args.k,
                          score=score_arg(args.score), batch_size=args.batch_size, num_workers=args.workers,
                          device=device, checkpoint=out, force=args.force, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        for layer, e in ex.items():
            e.save(out)
            print(f"examples: {layer}: {len(e.channels)} channels x {e.k} from {e.images} images "
                  f"({len(e.skipped)} skipped), receptive field {e.field_size[0]}x{e.field_size[1]} px")
        print(f"wrote crops, examples.jsonl and examples.json into {out}/")
    return 0
