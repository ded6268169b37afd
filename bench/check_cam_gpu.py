"""GPU check of the CAM family, SmoothGrad and IG: CUDA equals CPU, no host sync, IG completeness.

    python bench/check_cam_gpu.py
Prints one line per check; exits non-zero when a check fails.
"""

from __future__ import annotations

import sys
import warnings

import torch

import fastviz as fv
from fastviz.averaged import _smoothgrad_mean, integrated_gradients, smoothgrad
from fastviz.cam import gradcam, guided_gradcam, layercam, scorecam
from fastviz.hooks import session


def rel(a, b):
    return float((a.cpu() - b.cpu()).norm() / b.cpu().norm().clamp_min(1e-30))


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA"
    # Exact float32 on both sides: cuDNN's default TF32 convolutions alone move input gradients
    # through 16 blocks by several percent, which would hide a real difference.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    failed = 0
    cpu = fv.load_model()
    gpu = fv.load_model(device="cuda")
    photos = fv.sample_images()
    x = fv.load_images([photos["chelsea"], photos["coffee"]])
    xg = x.cuda()
    calls = {
        "gradcam": lambda m, x: gradcam(m, x),
        "layercam": lambda m, x: layercam(m, x),
        "guided_gradcam": lambda m, x: guided_gradcam(m, x),
        "scorecam": lambda m, x: scorecam(m, x, layer="_blocks.0", batch_size=7),
        "smoothgrad0": lambda m, x: smoothgrad(m, x, n=3, noise=0.0),
        "ig": lambda m, x: integrated_gradients(m, x, points=8, batch_size=5).attributions,
    }
    for name, call in calls.items():
        want = call(cpu, x)
        call(gpu, xg)  # warm-up: layer checks, default layer, cuDNN
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                got = call(gpu, xg)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchron" in str(w.message)]
        r = rel(got, want)
        ok = r < 2e-2
        failed += not ok
        print(f"{name:16s} cuda vs cpu relative error {r:.2e} {'ok' if ok else 'FAIL'}; "
              f"host syncs inside the call: {len(syncs)} {syncs[:2]}")

    # SmoothGrad with the same explicit noise on both devices.
    noise = torch.randn((8, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    t, sigma = torch.tensor([285, 967]), torch.tensor([0.15, 0.15])
    with session(cpu):
        want = _smoothgrad_mean(cpu, x, t, 4, sigma, False, 3, lambda i, n: noise[i:i + n])
    with session(gpu):
        got = _smoothgrad_mean(gpu, xg, t.cuda(), 4, sigma.cuda(), False, 3, lambda i, n: noise[i:i + n].cuda())
    r = rel(got, want)
    failed += r >= 2e-2
    print(f"smoothgrad noise  cuda vs cpu relative error {r:.2e}")

    print("IG completeness, n=64 (relative = error / |F(x) - F(baseline)|), chelsea 285, coffee 967")
    for baseline in (None, 0.5):
        for spacing in ("cubic", "uniform"):
            for method in ("trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
                r = integrated_gradients(gpu, xg, points=64, method=method, spacing=spacing,
                                         baseline=baseline, batch_size=128)
                relv = (r.completeness_error / r.score_difference.abs()).tolist()
                print(f"  baseline {str(baseline):4s} {spacing:7s} {method:14s} error "
                      f"{[round(v, 3) for v in r.completeness_error.tolist()]} relative "
                      f"{[round(v, 4) for v in relv]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
