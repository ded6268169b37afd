"""The per-function table of docs/reliability.md: run the property-based test, tally, print markdown.

    OMP_NUM_THREADS=1 .venv/bin/python tests/fuzz_report.py [examples per argument, default 25]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    examples = sys.argv[1] if len(sys.argv) > 1 else "25"
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fuzz.json"
        env = dict(os.environ, FASTVIZ_FUZZ=examples, FASTVIZ_FUZZ_REPORT=str(out))
        run = subprocess.run([sys.executable, "-m", "pytest", str(here / "test_fuzz.py"), "-q", "-p",
                              "no:cacheprovider", "-k", "bad_argument", "--tb=line"], env=env, cwd=here.parent)
        report = json.loads(out.read_text())
    rows = report["functions"]
    print(f"| function | bad calls | arguments | kinds of bad value | non-FastvizError | state leaks |")
    print("|---|---:|---|---|---:|---:|")
    total = other = leaks = 0
    for name in sorted(rows, key=str.lower):
        r = rows[name]
        total, other, leaks = total + r["calls"], other + r["other_errors"], leaks + r["leaks"]
        print(f"| `{name}` | {r['calls']} | {', '.join(r['arguments'])} | {', '.join(r['kinds'])} | "
              f"{r['other_errors']} | {r['leaks']} |")
    print(f"| **all {len(rows)}** | **{total}** | | | **{other}** | **{leaks}** |")
    print(f"\n{report['examples_per_argument']} examples per argument; pytest exit status {run.returncode}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
