"""The GPU check: times the engine on a CUDA device and prints one short table last.

Run by `bench/gpu_check.sh` after the GPU tests. Sections (each guarded: a failure is reported
in the table, the rest still runs; a deadline keeps the whole under `--budget` seconds):
  floor   one forward + backward to the input, parameters frozen, per batch size
  loop    class models with the full Yosinski regularizer, eager vs CUDA graph, batch 1/8/64
  amp     the same with bf16 autocast for the network, graph, batch 64 and 256
  kernel  the fused regularizer (radix-select thresholds) vs the same with topk thresholds vs the
          torch chain vs a device copy, eager and graph; the select alone (bench/kernel_bench.py)
  1000    all 1000 ImageNet class models, 256 steps, in batches (projected if over the deadline)
Writes results.json, kernel_table.md and class_models.png (100 of the 1000, 112 px) into --out.
`--only kernel --quick-kernel` runs the kernel section alone, for a short device run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastviz as fv  # noqa: E402

T0 = time.perf_counter()


def left(budget: float) -> float:
    return budget - (time.perf_counter() - T0)


def floor_ms(model, batch: int, reps: int = 20, amp: bool = False) -> float:
    """Median ms of forward + backward to the input, parameters frozen, on CUDA events."""
    x = torch.rand(batch, 3, 224, 224, device="cuda", requires_grad=True)
    times = []
    with fv.hooks.session(model):
        for i in range(reps + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                s = model(x)[:, 0].sum()
            torch.autograd.grad(s, x)
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def loop_rate(model, batch: int, backend: str, steps: int, amp: bool = False, lower: bool = True) -> dict:
    classes = [(37 * i) % 1000 for i in range(batch)]
    # The classic method (pixel + Yosinski): the figures of docs/performance.md.
    fv.class_model(model, classes, steps=4, backend=backend, amp=amp, lower=lower, param="pixel")  # compile kernels, cuDNN plans
    r = fv.class_model(model, classes, steps=steps, backend=backend, amp=amp, lower=lower, param="pixel")
    return {"steps_per_s": r.info["steps_per_second"], "backend": r.info["backend"],
            "ms_per_step": 1e3 / r.info["steps_per_second"], "capture_s": r.info["seconds"] - r.info["loop_seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for the whole script")
    ap.add_argument("--only", default="", help="comma-separated sections to run (floor,lrp,loop,amp,kernel,1000)")
    ap.add_argument("--quick-kernel", action="store_true", help="kernel section: 64x3x224x224 only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device")
        return 1
    import triton

    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "triton": triton.__version__, "date": time.strftime("%Y-%m-%d")}
    rows: list[tuple[str, str]] = []
    only = {name for name in args.only.split(",") if name}
    # The kernel section needs no network: a kernel-only run loads none.
    model = fv.load_model(device="cuda") if not only or only - {"kernel"} else None
    mem_gb = torch.cuda.get_device_properties(0).total_memory / 2**30

    def section(name, fn):
        if only and name not in only:
            return
        if left(args.budget) < 20:
            rows.append((name, "skipped: out of time"))
            return
        n = len(rows)
        try:
            fn()
        except Exception as e:
            traceback.print_exc()
            rows.append((name, f"FAILED {type(e).__name__}: {str(e)[:120]}"))
        finally:
            torch.cuda.empty_cache()
        for row in rows[n:]:
            print(f"[{time.perf_counter() - T0:6.1f}s] | {row[0]} | {row[1]} |", flush=True)
        (out / "results.json").write_text(json.dumps(res, indent=1, default=str))

    def floors():
        res["floor_ms"] = {b: floor_ms(model, b) for b in (1, 8, 64)}
        res["floor_ms_amp"] = {b: floor_ms(model, b, amp=True) for b in (64, 256)}
        rows.append(("floor ms (fwd+bwd to input) b1/b8/b64", " / ".join(f"{v:.2f}" for v in res["floor_ms"].values())))
        rows.append(("floor ms bf16 b64/b256", " / ".join(f"{v:.2f}" for v in res["floor_ms_amp"].values())))

    def loops():
        res["loop"] = {}
        for b in (1, 8, 64):
            e = loop_rate(model, b, "eager", 48)
            g = loop_rate(model, b, "graph", 48)
            res["loop"][b] = {"eager": e, "graph": g}
            fl = res.get("floor_ms", {}).get(b)
            rows.append((f"class model b{b}: eager / graph steps/s",
                         f"{e['steps_per_s']:.0f} / {g['steps_per_s']:.0f} = {g['steps_per_s'] / e['steps_per_s']:.2f}x"
                         + (f"; graph step {g['ms_per_step']:.2f} ms vs floor {fl:.2f}" if fl else "")))
            # The lowered network (the default) against the network as loaded, both in the graph.
            p = loop_rate(model, b, "graph", 48, lower=False)
            res["loop"][b]["graph_not_lowered"] = p
            rows.append((f"class model b{b} graph: not lowered / lowered ms/step",
                         f"{p['ms_per_step']:.2f} / {g['ms_per_step']:.2f} = {g['ms_per_step'] / p['ms_per_step']:.2f}x"))

    def amps():
        res["amp"] = {}
        for b in (64, 256):
            g = loop_rate(model, b, "graph", 32, amp=True)
            res["amp"][b] = g
            rows.append((f"class model bf16 graph b{b}", f"{g['ms_per_step']:.2f} ms/step = "
                         f"{b * g['steps_per_s']:.0f} image-steps/s"))

    def kernel():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from kernel_bench import bench_kernel, table

        k = bench_kernel("cuda", quick=args.quick_kernel)
        res["kernel"] = k
        (out / "kernel_table.md").write_text(table(k) + "\n")
        print(table(k), flush=True)
        for name, c in k["cases"].items():
            g, gt, gr = (c.get(key, {}) or {} for key in ("graph_kernel", "graph_kernel_topk", "graph_reference"))
            nan = float("nan")
            rows.append((f"kernel {name}: radix select / topk / torch chain / copy, ms",
                         f"{c['kernel_ms']:.3f} / {c['kernel_topk_ms']:.3f} / {c['reference_ms']:.3f} / "
                         f"{c['copy_ms']:.3f}; {c['kernel_gbps']:.0f} GB/s = {100 * c['fraction_of_copy']:.0f}% of copy, "
                         f"{c['speedup_vs_reference']:.2f}x the chain, {c['speedup_vs_topk']:.2f}x topk; "
                         f"graph {g.get('replay_ms', nan):.3f} / {gt.get('replay_ms', nan):.3f} / "
                         f"{gr.get('replay_ms', nan):.3f} ms = {100 * c['copy_ms'] / g.get('replay_ms', nan):.0f}% of copy"))
        for name, c in k.get("select", {}).items():
            rows.append((f"one threshold select {name}: radix / topk / kthvalue / radix 11-bit, ms",
                         f"{c['radix_ms']:.3f} / {c['topk_ms']:.3f} / {c['kthvalue_ms']:.3f} / {c['radix11_ms']:.3f}"))
        exact = all(v["exact"] for v in k.get("select_checks", {}).values())
        same = all(c.get("radix_equals_topk", False) for c in k["cases"].values())
        rows.append(("kernel exactness", f"radix select == kthvalue: {exact}; radix step == topk step: {same}; "
                     f"max abs err vs reference {max(c.get('max_abs_err', 0) for c in k['cases'].values()):.2e}"))

    def thousand():
        batch = 1000 if mem_gb > 70 else 250
        steps = 256
        per_step = res.get("amp", {}).get(256, {}).get("ms_per_step")
        projected = per_step / 256 * 1000 * steps / 1e3 if per_step else None
        n = 1000
        if projected is not None and projected * 1.3 > left(args.budget) - 15:
            n = max(batch // 4, int(1000 * (left(args.budget) - 25) / (projected * 1.3)) // 50 * 50)
            batch = min(batch, n)
        t = time.perf_counter()
        r = fv.class_model(model, list(range(n)), steps=steps, batch_size=batch, amp=True, backend="graph",
                           param="pixel")
        total = time.perf_counter() - t
        with torch.no_grad():
            top = torch.cat([model(r.images[i:i + 250].cuda()).argmax(1).cpu() for i in range(0, n, 250)])
        hit = float((top == torch.arange(n)).float().mean())
        res["thousand"] = {"classes": n, "steps": steps, "batch": batch, "seconds": total,
                           "projected_1000_s": total * 1000 / n, "top1_is_class": hit, "backend": r.info["backend"]}
        label = "1000 class models x 256 steps" if n == 1000 else f"{n} class models x 256 (1000 projected)"
        rows.append((label, f"{total:.1f} s (bf16, graph, batch {batch}); 1000 -> {total * 1000 / n:.1f} s; "
                     f"top-1 = own class for {hit:.1%}"))
        small = torch.nn.functional.interpolate(r.images[:100], size=112, mode="area")
        fv.save_image(fv.grid(small, nrow=10), out / "class_models.png")

    def relevance():
        # LRP (epsilon-plus-flat) beside the floor of the same batch, and its agreement with the
        # CPU result (the rules run in autograd Functions; nothing CUDA-specific is expected).
        x = fv.load_images(list(fv.sample_images().values())).cuda()
        x = x.repeat(-(-8 // x.shape[0]), 1, 1, 1)[:8].contiguous()
        for _ in range(2):
            fv.lrp(model, x, 285)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            r = fv.lrp(model, x, 285)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / 10 * 1e3
        cpu = fv.lrp(fv.load_model(), x[:2].cpu(), 285).relevance
        diff = float((r.relevance[:2].cpu() - cpu).norm() / cpu.norm())
        res["lrp"] = {"ms_b8": ms, "floor_ms_b8": res.get("floor_ms", {}).get(8), "cpu_rel_diff": diff}
        fl = res["lrp"]["floor_ms_b8"]
        rows.append(("lrp b8 ms (ratio to floor); rel. diff to the CPU",
                     f"{ms:.2f}" + (f" ({ms / fl:.2f}x)" if fl else "") + f"; {diff:.1e}"))

    section("floor", floors)
    section("lrp", relevance)
    section("loop", loops)
    section("amp", amps)
    section("kernel", kernel)
    section("1000", thousand)

    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\n## fastviz GPU check: {res['device']}, torch {res['torch']}, triton {res['triton']}, "
          f"{res['date']}, {time.perf_counter() - T0:.0f} s")
    print("| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
