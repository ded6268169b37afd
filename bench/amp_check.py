"""bf16 autocast (amp=True) on the CPU: the gradient error it brings and whether class models stay recognised.

    OMP_NUM_THREADS=1 .venv/bin/python bench/amp_check.py [--steps 64]

1. Input gradient of the class score (lowered EfficientNet-Lite0, the sample photos, batch 8):
   relative L2 error of bf16 autocast against fp32, and the cosine between them.
2. Class models of goldfish, flamingo, Egyptian cat, volcano at `--steps` steps with the default
   parameterisation (maco, 4 crops a step), rendered in fp32 and with amp=True, judged by the
   held-out EfficientNet-Lite1 as in bench/quality.py (4 views of each picture): top-5 rate
   and mean probability of the class. On a CPU without native bf16 the bf16 render is about
   12x slower than fp32 (64 steps: minutes).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

import fastviz as fv
from fastviz.hooks import session
from fastviz.lower import lowered
from quality import judge

CLASSES = [1, 130, 285, 980]


def grad(model, x, target, amp):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with session(model):
        xi = x.clone().requires_grad_(True)
        with ctx:
            out = model(xi)
        score = out.float()[range(x.shape[0]), target].sum()
        (g,) = torch.autograd.grad(score, xi)
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--skip-fp32", action="store_true", help="render only the bf16 class models")
    a = ap.parse_args()
    m, judge_model = fv.load_model(), fv.load_model("efficientnet-lite1")
    photos = fv.load_images(list(fv.sample_images().values()))
    x = photos.repeat(-(-8 // photos.shape[0]), 1, 1, 1)[:8]
    lm = lowered(m, x)
    with torch.no_grad():
        target = m(x).argmax(1).tolist()
    g32, g16 = grad(lm, x, target, False), grad(lm, x, target, True)
    err = float((g16 - g32).norm() / g32.norm())
    cos = float(torch.nn.functional.cosine_similarity(g16.flatten(1), g32.flatten(1)).mean())
    print(f"gradient, bf16 vs fp32 (lowered, batch 8): rel L2 error {err:.3f}, mean cosine {cos:.4f}", flush=True)
    for amp in ([True] if a.skip_fp32 else [False, True]):
        r = fv.class_model(m, CLASSES, steps=a.steps, seed=0, amp=amp)
        j = judge(judge_model, r.images, CLASSES)
        print(f"amp={amp}, {a.steps} steps: Lite1 top-5 {j['top5']:.0%}, p {j['p']:.2f} "
              f"(per class {[round(v, 2) for v in j['p_per_class']]}), "
              f"{r.info['loop_seconds']:.0f} s in the loop", flush=True)
        fv.save_image(fv.grid(r.images), f"out/amp_check_{'bf16' if amp else 'fp32'}.png")


if __name__ == "__main__":
    main()
