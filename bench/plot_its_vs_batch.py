"""Plot iterations per second against batch size from a pytest-benchmark JSON of the render suite.

    FASTVIZ_BENCH_BATCHES=1,2,4,8,16 .venv/bin/python -m pytest bench/test_bench_render.py \
        -k class_model --benchmark-only --benchmark-json=out/its_vs_batch.json
    .venv/bin/python bench/plot_its_vs_batch.py out/its_vs_batch.json docs/img/its_vs_batch_cpu.png

Two panels: steps per second of the whole batch (falls as rows are added) and image-steps per
second (rows x steps / s: the throughput that batching buys), each for the class-model loop and
for its floor measured in the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(src: str, dst: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(src).read_text())
    rows = sorted((b["extra_info"]["batch"], b["extra_info"]) for b in data["benchmarks"]
                  if b["name"].startswith("test_class_model")
                  and b["extra_info"].get("variant", "lowered") == "lowered")
    if not rows:
        raise SystemExit(f"{src}: no test_class_model benchmarks")
    batch = [b for b, _ in rows]
    loop = [e["loop_steps_per_s"] for _, e in rows]
    floor = [e["floor_per_s"] for _, e in rows]
    info = rows[0][1]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    for ax, scale, label in ((axes[0], [1] * len(batch), "steps / s"),
                             (axes[1], batch, "image-steps / s (batch x steps / s)")):
        ax.plot(batch, [v * s for v, s in zip(loop, scale)], "o-", label="class_model, Yosinski()")
        ax.plot(batch, [v * s for v, s in zip(floor, scale)], "s--", label="floor (fwd + bwd)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch, [str(b) for b in batch])
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"EfficientNet-Lite0, 224x224, CPU, {info['threads']} thread(s)", fontsize=10)
    fig.tight_layout()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
