"""The atlas on disk: the manifest's schema and validator, the manifest lines of a batch, atomic
writes, the per-rank part files and their merge, and what is already done (resume).

Resumable (docs/design.md, rule 11): each PNG is written to a temporary name and renamed, then its
manifest line is appended to the rank's part file (`manifest.rank<r>.jsonl`, by `writer`); a rerun
reads the manifest and the part files and skips the targets that are done. At the end rank 0
merges the parts into `manifest.jsonl` (temporary name + rename) and writes `index.html`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import FastvizError
from ..io import atomic_write
from ..examples.result import EXAMPLES_MANIFEST
from .gallery import gallery_html

MANIFEST = "manifest.jsonl"
SETTINGS = "atlas.json"
INDEX = "index.html"
CURVE_POINTS = 64

# The manifest line, as a JSON Schema (draft 2020-12). docs/atlas.md prints the same dict.
MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fastviz atlas manifest line",
    "type": "object",
    "required": ["target", "file", "kind", "layer", "index", "label", "seed", "batch", "settings",
                 "objective", "curve", "curve_steps", "seconds", "versions"],
    "properties": {
        "target": {"type": "string", "description": "stable id: the file path without .png"},
        "file": {"type": "string", "description": "the PNG, relative to the atlas directory"},
        "kind": {"enum": ["class", "channel"]},
        "layer": {"type": ["string", "null"], "description": "null for class models"},
        "index": {"type": "integer", "minimum": 0, "description": "class or channel index"},
        "label": {"type": ["string", "null"], "description": "class name, null for channels"},
        "seed": {"type": "integer", "description": "the seed of the batch (atlas seed + batch start)"},
        "batch": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                  "description": "[start, stop) rows of the target's group rendered together"},
        "settings": {"type": "object", "description": "the atlas settings (atlas.json)"},
        "objective": {"type": "number", "description": "the objective at the last step"},
        "curve": {"type": "array", "items": {"type": "number"}, "description": "objective per step (sampled)"},
        "curve_steps": {"type": "array", "items": {"type": "integer"}, "description": "the steps of curve"},
        "seconds": {"type": "number", "minimum": 0, "description": "rendering time of the batch / rows"},
        "examples": {"type": "array", "description": "dataset examples (atlas(dataset=...)), best first",
                     "items": {"type": "object", "required": ["file", "overlay", "image", "name", "score", "box"]}},
        "versions": {"type": "object", "required": ["fastviz", "torch", "model"],
                     "properties": {"fastviz": {"type": "string"}, "torch": {"type": "string"},
                                    "model": {"type": "object", "required": ["name", "sha1"]}}},
    },
}


def validate_record(record, schema: dict = MANIFEST_SCHEMA, where: str = "record") -> None:
    """Check `record` against the subset of JSON Schema that MANIFEST_SCHEMA uses.

    Raises:
        FastvizError: naming the first field that does not fit.
    """
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "null": type(None), "boolean": bool}
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(record, types[t]) and not (t in ("integer", "number") and isinstance(record, bool))
                 for t in allowed)
        if not ok:
            raise FastvizError(f"{where}: expected {schema['type']}, got {type(record).__name__}")
    if "enum" in schema and record not in schema["enum"]:
        raise FastvizError(f"{where}: expected one of {schema['enum']}, got {record!r}")
    if "minimum" in schema and record < schema["minimum"]:
        raise FastvizError(f"{where}: expected >= {schema['minimum']}, got {record!r}")
    if isinstance(record, dict):
        for key in schema.get("required", []):
            if key not in record:
                raise FastvizError(f"{where}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in record:
                validate_record(record[key], sub, f"{where}.{key}")
    if isinstance(record, list):
        if not schema.get("minItems", 0) <= len(record) <= schema.get("maxItems", len(record)):
            raise FastvizError(f"{where}: {len(record)} items, expected "
                               f"{schema.get('minItems')}-{schema.get('maxItems')}")
        for i, item in enumerate(record):
            validate_record(item, schema.get("items", {}), f"{where}[{i}]")


def jsonable(value):
    """Settings as JSON: numbers, strings, lists and dicts as they are, anything else by repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.device):
        return str(value)
    return repr(value)


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (fsync'd temporary name, then rename)."""
    with atomic_write(path, fsync=True) as tmp:
        tmp.write_bytes(data)


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file (a line cut by a kill is ignored)."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def part_files(out: Path) -> list[Path]:
    return sorted(out.glob("manifest.rank*.jsonl"))


def records(out: Path) -> dict[str, dict]:
    """target -> record, from manifest.jsonl and the part files, keeping only those with their PNG."""
    recs: dict[str, dict] = {}
    for path in [out / MANIFEST, *part_files(out)]:
        for r in read_jsonl(path):
            if isinstance(r, dict) and "target" in r and "file" in r:
                recs.setdefault(r["target"], r)
    return {t: r for t, r in recs.items() if (out / r["file"]).is_file()}


def sampled_curve(history_row: torch.Tensor) -> tuple[list[float], list[int]]:
    n = history_row.shape[0]
    if n <= CURVE_POINTS:
        steps = list(range(n))
    else:
        steps = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})
    return [float(history_row[s]) for s in steps], [s + 1 for s in steps]


def batch_records(grp, a: int, b: int, result, *, skip: set[str], seed: int, seconds: float,
                  settings: dict, versions: dict) -> tuple[list, list[dict]]:
    """The PNG pixels and manifest lines of rows a..b of a group, less the targets in `skip`.

    Args:
        grp: the group (`plan.Group`) the rows belong to.
        a, b: the rows [a, b) rendered together.
        result: what `class_model` / `feature` returned for them (images (B, 3, H, W) in [0, 1],
            history (steps, B)).
        skip: target names already done (rendered again only because they share the batch).
        seed: the batch's seed; seconds: rendering time per row.
        settings, versions: as in atlas.json.

    Returns:
        (pixels, records): one (H, W, 3) uint8 array and one manifest line per target written.
    """
    pixels = (result.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows, recs = [], []
    for i in range(b - a):
        name = grp.names[a + i]
        if name in skip:
            continue
        curve, curve_steps = sampled_curve(result.history[:, i])
        rows.append(pixels[i])
        recs.append({"target": name, "file": name + ".png", "kind": grp.kind, "layer": grp.layer,
                     "index": grp.indices[a + i], "label": grp.labels[a + i], "seed": seed,
                     "batch": [a, b], "settings": settings, "objective": curve[-1], "curve": curve,
                     "curve_steps": curve_steps, "seconds": round(seconds, 6), "versions": versions})
    return rows, recs


def finish(out: Path, order: list[str]) -> None:
    """Rank 0, after every rank is done: merge the parts into manifest.jsonl, write index.html."""
    recs = records(out)
    # Dataset examples (examples.jsonl, written by atlas(dataset=...)) join their unit's line.
    for line in read_jsonl(out / EXAMPLES_MANIFEST):
        if isinstance(line, dict) and line.get("target") in recs and "examples" in line:
            recs[line["target"]]["examples"] = line["examples"]
    rank = {t: i for i, t in enumerate(order)}
    ordered = sorted(recs.values(), key=lambda r: (rank.get(r["target"], len(rank)), r["target"]))
    write_atomic(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())
    for p in part_files(out):
        p.unlink()
    write_atomic(out / INDEX, gallery_html(ordered).encode())
