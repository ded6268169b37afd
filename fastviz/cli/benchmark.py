"""`fastviz bench`: the benchmark suite as a regression check on the user's own model.

A thin layer over pytest-benchmark, run in a fresh process (so the malloc setting and the
thread count apply from its start):

    fastviz bench --model resnet18 --save before        # .benchmarks/<machine>/0001_before.json
    ... change the code ...
    fastviz bench --model resnet18 --compare before --threshold 5

`--compare NAME` loads the latest run saved as NAME (or a run number, or a JSON path) and fails
(exit status 1) when any benchmark's median got more than `--threshold` percent slower
(pytest-benchmark's `--benchmark-compare-fail=median:PCT%`). Anything after `--` goes to pytest
(e.g. `-- -k saliency`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import FastvizError
from .common import MALLOC_THRESHOLD

# The suite lives in the source tree beside the package (an editable install sees it).
DEFAULT_BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_THRESHOLD // 2),
              "MALLOC_TRIM_THRESHOLD_": str(MALLOC_THRESHOLD)}


def register(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite; save a baseline or compare against one",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet-lite0",
                   help="model to benchmark: efficientnet-lite0 (default), resnet18, alexnet, ...")
    p.add_argument("--weights", default="auto",
                   help="'auto' (Lite0's packaged weights, random for others), 'default', 'none' or a file")
    p.add_argument("--layer", default=None, help="layer of the channel objective (default: a middle layer)")
    p.add_argument("--threads", default="auto", help="torch threads (default: 1 when the machine is loaded)")
    p.add_argument("--save", metavar="NAME", default=None, help="save this run as NAME")
    p.add_argument("--compare", metavar="NAME", default=None,
                   help="compare against the latest run saved as NAME (or a run number or JSON file)")
    p.add_argument("--threshold", metavar="PCT", type=float, default=10.0,
                   help="with --compare: fail when a median is more than PCT%% slower (default 10)")
    p.add_argument("--storage", default=".benchmarks", help="where runs are saved (default: .benchmarks)")
    p.add_argument("--bench-dir", default=None,
                   help=f"the benchmark files (default: {DEFAULT_BENCH_DIR})")
    p.add_argument("--json", default=None, help="also write this run's results to a JSON file")
    p.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. -- -k saliency)")
    p.set_defaults(func=run_bench)


def find_run(storage: Path, name: str) -> Path:
    """The saved run `name`: a JSON path, a run number ("0003") or a saved name (latest wins)."""
    as_path = Path(name)
    if as_path.suffix == ".json" and as_path.is_file():
        return as_path
    runs = sorted(storage.glob("*/[0-9][0-9][0-9][0-9]_*.json"), key=lambda f: (f.name, f.stat().st_mtime))
    matches = [f for f in runs if f.stem.split("_", 1)[1] == name or f.stem.split("_", 1)[0] == name]
    if not matches:
        saved = sorted({f.stem.split("_", 1)[1] for f in runs})
        raise FastvizError(f"--compare: no run saved as {name!r} in {str(storage)!r}; "
                           f"saved: {', '.join(saved) or 'none (run with --save NAME first)'}")
    return max(matches, key=lambda f: f.stat().st_mtime)


def pytest_command(args) -> tuple[list[str], dict[str, str]]:
    """The pytest command line and environment for these arguments."""
    bench_dir = Path(args.bench_dir) if args.bench_dir else DEFAULT_BENCH_DIR
    if not bench_dir.is_dir():
        raise FastvizError(f"--bench-dir: no benchmark folder at {str(bench_dir)!r}; the suite ships "
                           f"with the source tree (bench/), pass its path")
    if not args.threshold > 0:
        raise FastvizError(f"--threshold: expected a percentage > 0, got {args.threshold}")
    storage = Path(args.storage).resolve()
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "--benchmark-only",
           "-p", "no:cacheprovider", f"--rootdir={bench_dir.parent}",
           f"--benchmark-storage=file://{storage}",
           "--benchmark-columns=median,iqr,ops", "--benchmark-sort=name"]
    if args.save:
        cmd.append(f"--benchmark-save={args.save}")
    if args.compare:
        run = find_run(storage, args.compare)
        print(f"fastviz bench: comparing against {run}", file=sys.stderr)
        cmd += [f"--benchmark-compare={run}", f"--benchmark-compare-fail=median:{args.threshold:g}%"]
    if args.json:
        cmd.append(f"--benchmark-json={args.json}")
    cmd += list(args.pytest_args or [])
    # A fresh pytest, not a worker of whatever runs this one (pytest-benchmark disables timing
    # when it sees PYTEST_XDIST_WORKER).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    for k, v in MALLOC_ENV.items():
        env.setdefault(k, v)
    env.update(FASTVIZ_BENCH_MODEL=args.model, FASTVIZ_BENCH_WEIGHTS=str(args.weights),
               FASTVIZ_BENCH_THREADS=str(args.threads))
    if args.layer:
        env["FASTVIZ_BENCH_LAYER"] = args.layer
    return cmd, env


def run_bench(args) -> int:
    cmd, env = pytest_command(args)
    rc = subprocess.call(cmd, env=env)
    if rc != 0 and args.compare:
        print(f"fastviz bench: failed (pytest exit status {rc}); a median more than "
              f"{args.threshold:g}% slower than {args.compare!r} fails the comparison", file=sys.stderr)
    return 1 if rc else 0
