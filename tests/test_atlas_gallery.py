"""The atlas gallery (fastviz/atlas/gallery.py): one self-contained page, and in a real (headless) Chromium."""

from __future__ import annotations

import json
import re
import tempfile

import pytest
from PIL import Image

from fastviz.atlas import gallery_html

from atlas_helpers import ROOT, STEPS, TOTAL
from chromium import THUMBS_JS, VISIBLE_JS, Chromium, find_chromium, open_gallery

CHROMIUM = find_chromium()


def test_gallery_html_is_self_contained():
    rec = {"target": "class/0001_a", "file": "class/0001_a.png", "kind": "class", "layer": None, "index": 1,
           "label": "</script><b>x", "seed": 0, "objective": 1.0, "curve": [0.0, 1.0], "curve_steps": [1, 2],
           "seconds": 0.1, "settings": {"steps": 2}}
    page = gallery_html([rec])
    assert page.count("</script>") == 2, "a label cannot close the data script"
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "no network"
    assert 'loading = "lazy"' in page
    # The records reach the page as JSON data (the page's script builds the grid from them).
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == [rec]



@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
@pytest.mark.slow  # starts a browser
def test_gallery_in_headless_chromium(reference):
    browser = Chromium(CHROMIUM, tempfile.mkdtemp(prefix="fastviz-chromium-"), width=1280, height=900)
    try:
        open_gallery(browser, reference / "index.html")
        assert browser.eval(THUMBS_JS) == {"n": TOTAL, "loaded": TOTAL}, "every thumbnail loaded"
        assert browser.eval(VISIBLE_JS) == TOTAL
        set_query = ("(() => { const e = document.getElementById('q'); e.value = %s; "
                     "e.dispatchEvent(new Event('input')); return " + VISIBLE_JS + "; })()")
        assert browser.eval(set_query % "'class 7'") == 1
        assert browser.eval(set_query % "''") == TOTAL
        assert browser.eval("(() => { const s = document.getElementById('layer'); s.value = 'features.3'; "
                            "s.dispatchEvent(new Event('change')); return " + VISIBLE_JS + "; })()") == 8
        opened = browser.eval("(() => { document.querySelector('#grid figure:not([hidden])').click(); "
                              "const big = document.getElementById('big'); return new Promise(r => "
                              "big.complete ? r(0) : big.onload = r).then(() => ({open: document.getElementById("
                              "'view').classList.contains('open'), w: big.naturalWidth, points: document."
                              "querySelector('#plot polyline').getAttribute('points').split(' ').length})); })()")
        assert opened == {"open": True, "w": 32, "points": STEPS}
        shot = ROOT / "docs" / "img" / "atlas_gallery_test.png"
        browser.screenshot(shot)
        assert Image.open(shot).size == (1280, 900)
        assert browser.errors() == []
    finally:
        browser.close()
