"""GPU benchmark and check of the fused Yosinski step (fastviz.kernels.yosinski).

``bench_kernel()`` times, with ``triton.testing.do_bench`` medians, the fused step, the torch
reference chain (``fastviz.regularizers.regularize_reference``) and a device-to-device copy that
moves the same bytes, on 8x3x224x224 and 64x3x224x224 fp32, blur and no-blur steps. Rates are
GB/s of the bytes a step must at least move: read x, read g, read d, write x (16 bytes a value).
It also checks on CUDA that the kernel equals the reference, and that the step can be captured
in a CUDA graph and replayed.

Run: ``python -m bench.kernel_bench`` (prints JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from fastviz.errors import FastvizError
from fastviz.regularizers import NONE, Yosinski, regularize_reference

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


def bench_kernel(device: str = "cuda") -> dict:
    """Time and check the fused step on ``device`` (a CUDA device).

    Returns:
        A JSON-able dict: ``cases`` keyed "BxCxHxW_blur|noblur" with ``kernel_ms``,
        ``reference_ms``, ``copy_ms``, ``kernel_no_clip_ms`` (update, blur and clamp only, no
        threshold selection), GB/s of each, ``speedup_vs_reference``, ``fraction_of_copy``
        (copy time / kernel time), the errors against the reference and the CUDA-graph checks;
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

    for shape in SHAPES:
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
            kernel_ms = do_bench(lambda: yosinski_step(x, d, g, out=out, **kw), return_mode="median")
            reference_ms = do_bench(lambda: regularize_reference(x, d, g, **kw), return_mode="median")
            no_clip = dict(kw, reg=replace(reg, norm_percentile=0.0, contribution_percentile=0.0))
            no_clip_ms = do_bench(lambda: yosinski_step(x, d, g, out=out, **no_clip), return_mode="median")
            gbps = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
            case.update(
                kernel_ms=kernel_ms,
                reference_ms=reference_ms,
                copy_ms=copy_ms,
                kernel_no_clip_ms=no_clip_ms,
                kernel_gbps=gbps(kernel_ms),
                reference_gbps=gbps(reference_ms),
                copy_gbps=gbps(copy_ms),
                speedup_vs_reference=reference_ms / kernel_ms,
                fraction_of_copy=copy_ms / kernel_ms,
            )
            graph_out = torch.empty_like(x)
            case["graph_kernel"] = _graph_check(
                lambda: yosinski_step(x, d, g, out=graph_out, **kw), graph_out
            )
            ref_out = torch.empty_like(x)
            case["graph_reference"] = _graph_check(
                lambda: ref_out.copy_(regularize_reference(x, d, g, **kw)), ref_out
            )
            report["cases"][f"{'x'.join(map(str, shape))}_{'blur' if blur else 'noblur'}"] = case
        del x, d, g, src, dst, out, ref

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


if __name__ == "__main__":
    print(json.dumps(bench_kernel(), indent=1))
