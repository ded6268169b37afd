"""An atlas against `class_model` on the same targets: what writing costs on top of rendering.

Each round renders CLASSES (16 classes, batches of BATCH, STEPS steps) twice, interleaved:
`fv.atlas` into a fresh directory (PNGs encoded in a thread beside the loop, manifest lines,
atlas.json, the model's sha1, the merged manifest and index.html at the end) and, in the
untimed setup, `fv.class_model` with the same batches and seeds (what the atlas calls).
extra_info: targets_per_s of both and overhead = atlas / class_model - 1 (the target: < 5%).

    .venv/bin/python -m pytest bench/test_bench_atlas.py --benchmark-only \
        --benchmark-columns=median,iqr,ops
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import fastviz as fv
from conftest import paired

STEPS = 16
BATCH = 8
CLASSES = [1, 130, 285, 980, 967, 20, 340, 504, 417, 945, 309, 99, 817, 71, 948, 530]
TARGET = 0.05


def test_atlas_vs_class_model(benchmark, model, setting):
    dirs: list[str] = []

    def atlas():
        out = tempfile.mkdtemp(prefix="fastviz-bench-atlas-")
        dirs.append(out)
        return fv.atlas(model, out, classes=CLASSES, steps=STEPS, batch_size=BATCH, progress=False)

    def class_models():
        for a in range(0, len(CLASSES), BATCH):
            fv.class_model(model, CLASSES[a:a + BATCH], steps=STEPS, seed=a, batch_size=BATCH)

    try:
        timing = paired(benchmark, atlas, class_models, rounds=5)
        r = timing["fn"]
        assert (r.rendered, r.total) == (len(CLASSES), len(CLASSES))
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    # Under --benchmark-disable (a smoke run) there are no stats: the output check above is the test.
    atlas_s = benchmark.stats.stats.median if benchmark.stats is not None else timing["floor_s"]
    render_s = timing["floor_s"]
    overhead = atlas_s / render_s - 1
    benchmark.extra_info.update(setting, steps=STEPS, batch=BATCH, targets=len(CLASSES),
                                atlas_targets_per_s=len(CLASSES) / atlas_s,
                                class_model_targets_per_s=len(CLASSES) / render_s,
                                overhead=overhead, target=TARGET,
                                class_model_times=timing["floor_times"])
    print(f"\natlas {len(CLASSES) / atlas_s:.2f} targets/s, class_model {len(CLASSES) / render_s:.2f} "
          f"targets/s: overhead {100 * overhead:+.1f}% (target < {100 * TARGET:.0f}%)")
