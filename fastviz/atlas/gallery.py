"""The atlas gallery: `index.html`, one self-contained page (no server, no network) built from
the package's gallery/index.html, gallery.css and gallery.js with the manifest records inlined
as JSON. Thumbnails in a grid (lazy-loaded), a filter by name and by layer, and on click the
image at full size with its objective curve as inline SVG and, when the atlas has them, the
unit's dataset examples (crops with the activation overlaid, the plain crop on hover, scores);
`index.html#flamingo` opens filtered, `index.html#_blocks.10/5` opens unit 5 of _blocks.10.
"""

from __future__ import annotations

import json
from importlib import resources

# What the page needs of a manifest record (the full record stays in manifest.jsonl).
PAGE_FIELDS = ("target", "file", "kind", "layer", "index", "label", "seed", "objective", "curve",
               "curve_steps", "seconds")
EXAMPLE_FIELDS = ("file", "overlay", "name", "score")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("gallery", name).read_text(encoding="utf-8")


def gallery_html(records: list[dict]) -> str:
    """The static gallery page for manifest `records`; image paths are relative to the page."""
    slim = [dict({k: r[k] for k in PAGE_FIELDS}, settings={"steps": r["settings"]["steps"]},
                 **({"examples": [{k: e[k] for k in EXAMPLE_FIELDS} for e in r["examples"]]}
                    if r.get("examples") else {}))
            for r in records]
    data = json.dumps(slim, separators=(",", ":")).replace("<", "\\u003c")  # no "</script>" inside
    page = _asset("index.html").replace("/*__CSS__*/", _asset("gallery.css"))
    return page.replace("/*__JS__*/", _asset("gallery.js")).replace("__DATA__", data)
