"""GPU benchmark and check of the fused Yosinski step (fastviz.kernels.yosinski).

``bench_kernel()`` times, with ``triton.testing.do_bench`` medians, on 8x3x224x224 and
64x3x224x224 fp32, blur and no-blur steps:
- the fused step with the Triton radix select for its two thresholds (``select="radix"``, the
  default), the same step with ``torch.topk`` thresholds (``select="topk"``, the previous path),
  the step without the two clips (the floor the selects add to), the torch reference chain
  (``fastviz.regularizers.regularize_reference``) and a device-to-device copy that moves the same
  bytes; eagerly and replayed in a CUDA graph (the engine's graph backend replays it so);
- the threshold select alone on (B, 50176) maps: radix (8-bit digits, as the step uses, and
  11-bit: 3 passes instead of 4) vs topk vs kthvalue.
Rates are GB/s of the bytes a step must at least move: read x, read g, read d, write x (16 bytes a
value); "% of copy" is copy time / step time. It also checks on CUDA that the kernel equals the
reference on irregular shapes, that the radix select equals ``kthvalue`` exactly (ties, zeros,
constant rows), and that the step can be captured in a CUDA graph and replayed.

Runs on torch 2.11 + triton 3.6 and torch 2.14 + triton 3.8 (only ``do_bench(fn,
return_mode="median")`` and ``torch.cuda.CUDAGraph`` are used).

Run: ``python bench/kernel_bench.py [--json PATH] [--quick]`` (prints a short table last).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from fastviz.errors import FastvizError
from fastviz.regularizers import NONE, Yosinski, kth_smallest, percentile_rank, regularize_reference

SHAPES = [(8, 3, 224, 224), (64, 3, 224, 224)]
CHECK_SHAPES = [(1, 3, 17, 31), (3, 3, 223, 225)]
MEAN = torch.tensor([0.485, 0.456, 0.406])


def _inputs(shape, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, device=device, generator=gen) * 0.5
    d = torch.randn(shape, device=device, generator=gen)
    g = torch.randn(shape, device=device, generator=gen)
    mean = MEAN.to(device)
    return x, d, g, -mean, 1.0 - mean


def _compare(out: torch.Tensor, ref: torch.Tensor, scale: float) -> dict:
    """Max abs error, and how many pixels differ beyond 1e-5 * scale (threshold near-ties)."""
    err = (out - ref).abs()
    per_pixel = err.amax(dim=1)
    flipped = ~(per_pixel <= 1e-5 * scale)
    agreeing = err.masked_fill(flipped.unsqueeze(1), 0.0)
    return {
        "max_abs_err": float(err.max()),
        "max_abs_err_unflipped": float(agreeing.max()),
        "pixels_differ": int(flipped.sum()),
        "pixels": int(per_pixel.numel()),
        "nan": bool(out.isnan().any()),
    }


def _graph_check(step, out: torch.Tensor) -> dict:
    """Capture ``step()`` (which writes ``out``) in a CUDA graph, replay, compare with eager."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        eager = out.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        from triton.testing import do_bench

        return {
            "ok": bool(torch.equal(out, eager)),
            "replay_ms": do_bench(graph.replay, return_mode="median"),
        }
    except Exception as e:  # the report says why capture failed; nothing is hidden
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}


def _select_checks(dev) -> dict:
    """The radix select against kthvalue on CUDA, exact equality, ties and edge ranks."""
    from fastviz.kernels.radix_select import kth_smallest_rows

    gen = torch.Generator(device=dev).manual_seed(5)
    N = 224 * 224
    v = torch.randn(8, 3, N, device=dev, generator=gen).square().sum(1)
    v[1] = 0.0  # all zeros
    v[2] = 0.37  # constant
    v[3] = torch.randint(0, 3, (N,), device=dev, generator=gen).float() / 8  # three values
    v[4, : N // 2] = 0.0  # half zeros
    v[5] = torch.randn(N, device=dev, generator=gen)  # signed
    report = {}
    for p in (0.0, 1.0, 30.0, 99.0, 100.0):
        k = percentile_rank(p, N)
        got = kth_smallest_rows(v, k)
        want = torch.kthvalue(v, k, dim=1).values
        report[f"p{int(p)}"] = {"exact": bool(torch.equal(got, want)),
                                "rows_differ": int((got != want).sum())}
    aux = torch.rand(8, N, device=dev, generator=gen)
    t = torch.kthvalue(aux, percentile_rank(30.0, N), dim=1).values
    k = percentile_rank(30.0, N)
    got = kth_smallest_rows(v, k, aux=aux, aux_threshold=t)
    want = torch.kthvalue(torch.where(aux < t.unsqueeze(1), 0.0, v), k, dim=1).values
    report["masked_p30"] = {"exact": bool(torch.equal(got, want)), "rows_differ": int((got != want).sum())}
    return report


def bench_select(dev, batches=(8, 64)) -> dict:
    """ms of one (B, 50176) threshold select: Triton radix (8-bit digits, the step's; and 11-bit)
    vs topk vs kthvalue, eager and graph."""
    from triton.testing import do_bench

    from fastviz.kernels.radix_select import kth_smallest_rows

    out = {}
    N = 224 * 224
    k = percentile_rank(30.0, N)
    for B in batches:
        v = torch.randn(B, 3, N, device=dev).square().sum(1)
        t = torch.empty(B, device=dev)
        fns = {
            "radix": lambda: kth_smallest_rows(v, k, out=t),
            "radix11": lambda: kth_smallest_rows(v, k, out=t, radix_bits=11),
            "topk": lambda: t.copy_(kth_smallest(v, k)),
            "kthvalue": lambda: t.copy_(torch.kthvalue(v, k, dim=1).values),
        }
        row = {}
        for name, fn in fns.items():
            row[f"{name}_ms"] = do_bench(fn, return_mode="median")
            row[f"{name}_graph"] = _graph_check(fn, t)
        out[f"{B}x{N}"] = row
    return out


def bench_kernel(device: str = "cuda", quick: bool = False) -> dict:
    """Time and check the fused step on ``device`` (a CUDA device).

    Args:
        device: a CUDA device.
        quick: only 64x3x224x224 and no irregular-shape checks (a short device run).
    Returns:
        A JSON-able dict: ``cases`` keyed "BxCxHxW_blur|noblur" with ``kernel_ms`` (radix
        select), ``kernel_topk_ms`` (topk select), ``kernel_no_clip_ms`` (update, blur and clamp
        only), ``reference_ms``, ``copy_ms``, GB/s of each, ``speedup_vs_reference``,
        ``speedup_vs_topk``, ``fraction_of_copy`` (copy time / kernel time), the errors against
        the reference, and ``graph_*`` (capture, replay == eager, replay ms) for the radix step,
        the topk step and the reference; ``select`` (the select alone); ``select_checks``;
        ``checks`` on irregular shapes.
    Raises:
        FastvizError: ``device`` is not an available CUDA device.
    """
    import triton
    from triton.testing import do_bench

    from fastviz.kernels.yosinski import yosinski_step

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise FastvizError(f"bench_kernel needs a CUDA device, got {device!r}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(dev)
    reg = Yosinski()
    report = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "reg": repr(reg),
        "bytes_per_step": "4 * numel * 4 (read x, d, g; write x)",
        "timer": "triton.testing.do_bench median",
        "cases": {},
        "checks": {},
    }
    report["select_checks"] = _select_checks(dev)

    for shape in SHAPES[1:] if quick else SHAPES:
        x, d, g, lo, hi = _inputs(shape, dev, seed=1234)
        numel = x.numel()
        nbytes = 4 * numel * 4
        src = torch.empty(2 * numel, device=dev)
        dst = torch.empty_like(src)
        copy_ms = do_bench(lambda: dst.copy_(src), return_mode="median")
        scale = float(x.abs().max())
        for blur in (False, True):
            kw = dict(lr=0.1, reg=reg, blur=blur, lo=lo, hi=hi)
            out = torch.empty_like(x)
            ref = regularize_reference(x, d, g, **kw)
            yosinski_step(x, d, g, out=out, **kw)
            torch.cuda.synchronize()
            case = _compare(out, ref, scale)
            topk_out = torch.empty_like(x)
            yosinski_step(x, d, g, out=topk_out, select="topk", **kw)
            case["radix_equals_topk"] = bool(torch.equal(out, topk_out))
            kernel_ms = do_bench(lambda: yosinski_step(x, d, g, out=out, **kw), return_mode="median")
            topk_ms = do_bench(lambda: yosinski_step(x, d, g, out=out, select="topk", **kw), return_mode="median")
            reference_ms = do_bench(lambda: regularize_reference(x, d, g, **kw), return_mode="median")
            no_clip = dict(kw, reg=replace(reg, norm_percentile=0.0, contribution_percentile=0.0))
            no_clip_ms = do_bench(lambda: yosinski_step(x, d, g, out=out, **no_clip), return_mode="median")
            gbps = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
            case.update(
                kernel_ms=kernel_ms,
                kernel_topk_ms=topk_ms,
                reference_ms=reference_ms,
                copy_ms=copy_ms,
                kernel_no_clip_ms=no_clip_ms,
                kernel_gbps=gbps(kernel_ms),
                kernel_topk_gbps=gbps(topk_ms),
                reference_gbps=gbps(reference_ms),
                copy_gbps=gbps(copy_ms),
                speedup_vs_reference=reference_ms / kernel_ms,
                speedup_vs_topk=topk_ms / kernel_ms,
                fraction_of_copy=copy_ms / kernel_ms,
            )
            graph_out = torch.empty_like(x)
            case["graph_kernel"] = _graph_check(
                lambda: yosinski_step(x, d, g, out=graph_out, **kw), graph_out
            )
            case["graph_kernel_topk"] = _graph_check(
                lambda: yosinski_step(x, d, g, out=graph_out, select="topk", **kw), graph_out
            )
            ref_out = torch.empty_like(x)
            case["graph_reference"] = _graph_check(
                lambda: ref_out.copy_(regularize_reference(x, d, g, **kw)), ref_out
            )
            report["cases"][f"{'x'.join(map(str, shape))}_{'blur' if blur else 'noblur'}"] = case
        del x, d, g, src, dst, out, ref, topk_out

    report["select"] = bench_select(dev, batches=(64,) if quick else (8, 64))
    if quick:
        return report
    for shape in CHECK_SHAPES:
        for blur in (False, True):
            for p in (0.0, 30.0, 90.0):
                x, d, g, lo, hi = _inputs(shape, dev, seed=int(p) + 7 * blur)
                r = Yosinski(decay=0.01, norm_percentile=p, contribution_percentile=p)
                kw = dict(lr=0.1, reg=r, blur=blur, lo=lo, hi=hi)
                ref = regularize_reference(x, d, g, **kw)
                out = torch.full_like(x, math.nan)
                yosinski_step(x, d, g, out=out, **kw)
                key = f"{'x'.join(map(str, shape))}_{'blur' if blur else 'noblur'}_p{int(p)}"
                report["checks"][key] = _compare(out, ref, float(x.abs().max()))
                inplace = x.clone()
                yosinski_step(inplace, d, g, out=inplace, **kw)
                report["checks"][key + "_inplace"] = _compare(inplace, ref, float(x.abs().max()))
        x, d, g, lo, hi = _inputs(shape, dev, seed=99)
        kw = dict(reg=NONE, blur=False, lo=lo, hi=hi)
        out = torch.full_like(x, math.nan)
        yosinski_step(x, d, g, lr=torch.tensor(0.3, device=dev), out=out, **kw)
        report["checks"][f"{'x'.join(map(str, shape))}_lr_tensor"] = _compare(
            out, regularize_reference(x, d, g, lr=0.3, **kw), float(x.abs().max())
        )
    return report


def _ms(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _pct(copy_ms, ms) -> str:
    return f"{100 * copy_ms / ms:.0f}%" if isinstance(ms, (int, float)) and ms > 0 else "-"


def table(report: dict) -> str:
    """The short markdown table of a ``bench_kernel`` report (one row per case)."""
    lines = [
        f"fused Yosinski step on {report['device']}, torch {report['torch']}, triton {report['triton']}, "
        f"{report['timer']} (ms; graph = CUDA-graph replay)",
        "",
        "| case | radix step | topk step | torch chain | copy | no-clip step | radix GB/s | % of copy | "
        "x chain | x topk | graph: radix / topk / chain | % of copy, graph |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, c in report["cases"].items():
        graph = " / ".join(_ms(c.get(key, {}).get("replay_ms"))
                           for key in ("graph_kernel", "graph_kernel_topk", "graph_reference"))
        lines.append(
            f"| {name} | {_ms(c['kernel_ms'])} | {_ms(c['kernel_topk_ms'])} | {_ms(c['reference_ms'])} | "
            f"{_ms(c['copy_ms'])} | {_ms(c['kernel_no_clip_ms'])} | {c['kernel_gbps']:.0f} | "
            f"{100 * c['fraction_of_copy']:.0f}% | {c['speedup_vs_reference']:.2f}x | "
            f"{c['speedup_vs_topk']:.2f}x | {graph} | {_pct(c['copy_ms'], c.get('graph_kernel', {}).get('replay_ms'))} |"
        )
    for name, c in report.get("select", {}).items():
        graph = " / ".join(_ms(c.get(f"{m}_graph", {}).get("replay_ms")) for m in ("radix", "topk", "kthvalue"))
        lines.append(f"| one select on {name} maps (radix, topk, kthvalue; radix 11-bit) | {_ms(c['radix_ms'])} | "
                     f"{_ms(c['topk_ms'])} | kthvalue {_ms(c['kthvalue_ms'])} | 11-bit {_ms(c['radix11_ms'])} "
                     f"| | | | | | {graph} | |")
    checks = report.get("select_checks", {})
    exact = all(v["exact"] for v in checks.values()) if checks else None
    worst = max((c.get("max_abs_err", 0.0) for c in report["cases"].values()), default=float("nan"))
    same = all(c.get("radix_equals_topk", False) for c in report["cases"].values())
    lines.append("")
    lines.append(f"radix select == kthvalue exactly ({len(checks)} checks incl. ties): {exact}; "
                 f"radix step == topk step bit for bit: {same}; max abs err vs reference {worst:.2e}; "
                 f"graph capture ok: {all(c.get('graph_kernel', {}).get('ok', False) for c in report['cases'].values())}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the whole report here")
    ap.add_argument("--quick", action="store_true", help="64x3x224x224 only, no irregular-shape checks")
    args = ap.parse_args()
    rep = bench_kernel(quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
    else:
        print(json.dumps(rep, indent=1))
    print(table(rep))
