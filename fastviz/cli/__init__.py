"""The `fastviz` command: parses arguments, calls the public API, writes files; nothing else.

Each subcommand family lives in its own module with a `register(subparsers)` function that adds
its parsers and sets `func` (called with the parsed arguments, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import FastvizError

# Modules that register subcommands, in the order `fastviz --help` lists them.
FAMILIES = ("attribution", "lrp", "synthesis", "cams", "inspection", "benchmark", "demo", "evaluate", "atlas",
            "examples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{family}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .common import tune_malloc

    tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastvizError as e:
        print(f"fastviz: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
