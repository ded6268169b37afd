"""Page faults per synthesis step, with glibc's default malloc and with fastviz's thresholds.

glibc returns large freed blocks to the OS and page-faults them back on the next allocation;
the engine keeps its buffers, but the network's activations and gradients are allocated by
torch every step. Run: `python bench/page_faults.py` (one process per setting, one thread).
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
import fastviz as fv
from fastviz.cli.common import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else False
m = fv.load_model()
fv.class_model(m, [1], steps=4)                     # warm up
f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
fv.class_model(m, [1], steps=20)
f1, t1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
print(json.dumps({"setting": sys.argv[1], "tuned": tuned, "faults_per_step": (f1 - f0) / 20,
                  "ms_per_step": (t1 - t0) / 20 * 1e3}))
"""


def main() -> int:
    rows = []
    for setting in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        if out.returncode:
            print(out.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['setting']:8s} malloc: {r['faults_per_step']:9.0f} minor page faults per step, "
              f"{r['ms_per_step']:6.1f} ms per step (class model, batch 1, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
