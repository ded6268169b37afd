"""`fastviz atlas`: every class and/or every channel of some layers into one directory.

Works under torchrun: `torchrun --nproc-per-node 8 -m fastviz atlas --classes all --out DIR`.
"""

from __future__ import annotations

from ..atlas import atlas
from ..errors import FastvizError
from ..regularizers import Yosinski
from .common import add_model_args, model_from_args, rank_device
from .synthesis import _add_reg_args, _method


def _indices(values: list[str] | None, what: str):
    """'all', integers or ranges like 0-63 (space- or comma-separated) -> 'all' | list[int] | None."""
    from .examples import parse_indices

    return parse_indices(values, what)


def register(sub) -> None:
    p = sub.add_parser("atlas", help="render every class / channel into a directory with a gallery "
                                     "(resumable; shards under torchrun)")
    p.add_argument("--classes", nargs="+", default=None, metavar="all|N",
                   help="'all' or class indices: one class model each")
    p.add_argument("--layers", nargs="+", default=[], metavar="LAYER", help="layers whose channels to render")
    p.add_argument("--channels", nargs="+", default=["all"], metavar="all|N|A-B",
                   help="'all' (default), channel indices or ranges (0-63), for every --layers")
    p.add_argument("--dataset", default=None, metavar="FOLDER|demo",
                   help="images whose top --examples-k per channel go beside each unit (a folder, or 'demo')")
    p.add_argument("--examples-k", type=int, default=9, help="dataset examples per unit (default 9)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes for --dataset (default 0)")
    p.add_argument("--out", required=True, help="the atlas directory (rerun the same command to resume)")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch (default: the atlas's recorded size, else measured once)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's input size)")
    p.add_argument("--backend", default="auto", choices=("auto", "eager", "graph"))
    p.add_argument("--force", action="store_true", help="start over where the directory's settings differ")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    _add_reg_args(p, None)
    p.set_defaults(func=run_atlas)


def run_atlas(args) -> int:
    import os

    classes = _indices(args.classes, "classes")
    channels = _indices(args.channels, "channels")
    if classes is None and not args.layers:
        raise FastvizError("give --classes and/or --layers")
    # Under torchrun the rank picks its GPU (LOCAL_RANK); load on the CPU and let atlas move it.
    device = rank_device(args)
    model = model_from_args(args)
    kw = dict(backend=args.backend) if args.backend != "auto" else {}
    # Only what differs from the calls' defaults is passed, so Python and CLI runs resume each other.
    method = _method(args)
    if method.get("param") is not None:
        kw["param"] = method["param"]
    if method.get("transforms") != "auto":
        kw["transforms"] = method["transforms"]
    if method.get("diversity"):
        kw["diversity"] = method["diversity"]
    if "reg" in method and method["reg"] != Yosinski():
        kw["reg"] = method["reg"]
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.size is not None:
        kw["size"] = args.size
    examples = {}
    if args.dataset is not None:
        from .examples import dataset_arg

        examples = dict(dataset=dataset_arg(args.dataset), examples_k=args.examples_k, num_workers=args.workers)
    r = atlas(model, args.out, classes=classes, layers=args.layers, channels=channels,
               steps=args.steps, seed=args.seed, batch_size=args.batch_size, device=device,
               force=args.force, progress=not args.no_progress, **kw, **examples)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"atlas: {r.rendered} rendered, {r.skipped} already done, {r.total} in {r.out}/ "
              f"(batch {r.batch_size}, {r.world_size} process{'es' if r.world_size > 1 else ''}, "
              f"{r.seconds:.1f} s); open {r.index}")
    return 0
