"""The pictures of docs/examples.md: a Lite0 atlas of a few `_blocks.10` channels with the demo
crops' dataset examples, a table image (feature visualisation | top examples with the activation
overlaid | plain crops) and the gallery's unit page in headless Chromium.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/examples_pictures.py [OUT]   (OUT default out/examples_atlas)
Writes docs/img/examples_blocks10.png and, where Chromium is installed, docs/img/examples_gallery.png.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import fastviz as fv

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = [0, 1, 2, 3]
K, SHOWN, CELL = 9, 5, 112


def table(out: Path, dest: Path) -> None:
    recs = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    W = CELL * (1 + 2 * SHOWN) + 40
    H = 24 + len(recs) * (CELL + 22)
    page = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(page)
    draw.text((4, 6), "feature visualisation", fill="black")
    draw.text((CELL + 24, 6), f"top {SHOWN} of {K} demo crops, activation overlaid", fill="black")
    draw.text((CELL * (1 + SHOWN) + 34, 6), "the same crops (receptive field)", fill="black")
    for row, r in enumerate(recs):
        y = 24 + row * (CELL + 22)
        page.paste(Image.open(out / r["file"]).convert("RGB").resize((CELL, CELL)), (0, y))
        draw.text((2, y + CELL + 4), r["target"], fill="black")
        for j, e in enumerate(r["examples"][:SHOWN]):
            for col, key in ((1 + j, "overlay"), (1 + SHOWN + j, "file")):
                x = CELL * col + (20 if col <= SHOWN else 30)
                page.paste(Image.open(out / e[key]).convert("RGB").resize((CELL, CELL)), (x, y))
                if key == "overlay":
                    draw.text((x + 2, y + CELL + 4), f"{e['score']:.2f} {e['name'][:14]}", fill="black")
    dest.parent.mkdir(parents=True, exist_ok=True)
    page.save(dest)


def screenshot(out: Path, dest: Path) -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from chromium import Chromium, find_chromium

    exe = find_chromium()
    if exe is None:
        print("chromium is not installed: no gallery screenshot")
        return False
    browser = Chromium(exe, str(out / ".chromium"), width=1280, height=900)
    try:
        browser.send("Page.navigate", url=f"file://{(out / 'index.html').resolve()}#_blocks.10/{CHANNELS[2]}")
        browser.wait_event("Page.loadEventFired")
        n = browser.eval("(async () => { const imgs = [...document.querySelectorAll('#examples img, #big')];"
                         " await Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));"
                         " return imgs.filter(i => i.naturalWidth > 0).length; })()")
        print(f"gallery: {n} images loaded on the unit page; errors: {browser.errors()}")
        browser.screenshot(dest)
    finally:
        browser.close()
    return True


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "examples_atlas"
    t = time.perf_counter()
    r = fv.atlas(fv.load_model(), out, layers="_blocks.10", channels=CHANNELS, steps=128, batch_size=len(CHANNELS),
                 dataset=fv.demo_set().images, examples_k=K, progress=True)
    print(f"atlas + examples: {time.perf_counter() - t:.0f} s ({r.rendered} rendered)")
    table(out, ROOT / "docs" / "img" / "examples_blocks10.png")
    screenshot(out, ROOT / "docs" / "img" / "examples_gallery.png")


if __name__ == "__main__":
    main()
