"""What the atlas tests share: a tiny atlas script run in subprocesses (1 process or torchrun),
the 1-process reference atlas (a session fixture), and readers of its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# A tiny classifier, built the same way in every process (seeded): 10 classes, 8 channels.
TINY = '''
import json, sys
import fastviz as fv
from tiny_net import tiny  # tests/ is on PYTHONPATH (env())

if __name__ == "__main__":
    out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # "slow": the progress callback (called after each batch is written) sleeps, so that a test
    # can kill the run halfway on any machine; it does not change what is rendered.
    slow = len(sys.argv) > 4 and sys.argv[4] == "slow"
    import time
    r = fv.atlas(tiny(), out, classes="all", layers=["features.3"], steps=steps, batch_size=batch,
                 jitter=2, progress=(lambda done, total: time.sleep(0.3)) if slow else False)
    import os
    if os.environ.get("RANK", "0") == "0":  # one line: two ranks' prints can interleave in the pipe
        print("RESULT " + json.dumps({"rendered": r.rendered, "skipped": r.skipped, "total": r.total,
                                      "world": r.world_size}), flush=True)
'''
TOTAL = 18          # 10 classes + 8 channels
STEPS, BATCH = 30, 2


@pytest.fixture(scope="session")
def script(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("atlas_script") / "tiny_atlas.py"
    p.write_text(TINY)
    return p


def env() -> dict:
    # One thread in every process: the 1-process and the 2-rank runs then do the same arithmetic.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))


def run(args: list[str], timeout: float = 300) -> dict:
    p = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[0][7:])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(out: Path, rec: dict) -> np.ndarray:
    return np.asarray(Image.open(out / rec["file"]))


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


@pytest.fixture(scope="session")
def reference(script, tmp_path_factory) -> Path:
    """A complete 1-process atlas of the tiny network."""
    out = tmp_path_factory.mktemp("atlas_ref")
    r = run([sys.executable, str(script), str(out), str(STEPS), str(BATCH)])
    assert r == {"rendered": TOTAL, "skipped": 0, "total": TOTAL, "world": 1}
    return out


