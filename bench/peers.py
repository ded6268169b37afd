"""fastviz beside its peers: same model, batch, image size and process; time per image.

    .venv/bin/python bench/peers.py [--batch 4] [--steps 16] [--threads 1] [--out docs/peers.md]

Peers (from PyPI): captum (saliency, guided backprop, integrated gradients, SmoothGrad via
NoiseTunnel, LayerGradCam), grad-cam (GradCAM, GuidedBackpropReLUModel), torch-lucent (channel
visualisation and class models with its standard transforms: lucent has no Yosinski
regularizers, so its closest offering is timed). When they do not import here, the script
creates `.venv-peers` beside the repo: a venv that sees this interpreter's packages (torch,
fastviz) through a .pth file, so the peers install on top of the same torch, and re-runs
itself there.

The model is EfficientNet-Lite0 (`fv.load_model().module`) behind the same normalisation for
everyone (an nn.Sequential(Normalize, net) taking [0, 1] images). Each row is the median of
`--repeats` calls after one warm-up call; fastviz and the peer alternate call by call so a
change in the machine's load hits both. The table is written to docs/peers.md.

Also checked, not only timed: whether captum's GuidedBackprop and grad-cam's guided model
differ from the plain gradient on Lite0 (they replace nn.ReLU only; Lite0 has ReLU6).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
PEER_PACKAGES = ["captum", "torch-lucent", "grad-cam"]


def peers_importable() -> bool:
    try:
        import captum  # noqa: F401
        import lucent  # noqa: F401
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_peers_venv() -> Path:
    """Create .venv-peers (sharing this interpreter's site-packages) and install the peers."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(PEERS_VENV)])
        import site

        here = site.getsitepackages()[0]
        there = subprocess.check_output([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                                        text=True).strip()
        # Shares torch and fastviz (its editable-install .pth too) instead of downloading a second
        # torch; pip sees them as installed.
        Path(there, "_fastviz_main_venv.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    code = "import captum, lucent, pytorch_grad_cam"
    if subprocess.call([str(py), "-c", code], stderr=subprocess.DEVNULL) != 0:
        print(f"installing {' '.join(PEER_PACKAGES)} into {PEERS_VENV} ...", file=sys.stderr)
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES])
    return py


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- timing --------------------------------------------------------------------------------
def alternate(fns: dict, repeats: int, warmup=None) -> dict:
    """Median seconds of each callable, calling them in turn (one warm-up call each first)."""
    for name, fn in fns.items():
        (warmup or {}).get(name, fn)()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=16, help="steps of the synthesis rows")
    ap.add_argument("--ig-steps", type=int, default=25)
    ap.add_argument("--smoothgrad-n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "peers.md"))
    args = ap.parse_args(argv)

    if not peers_importable():
        if Path(sys.prefix).resolve() == PEERS_VENV.resolve():
            print("peers still do not import in .venv-peers", file=sys.stderr)
            return 1
        py = ensure_peers_venv()
        return subprocess.call([str(py), __file__, *(argv if argv is not None else sys.argv[1:])])

    import warnings

    import numpy as np
    import torch
    from torch import nn

    import fastviz as fv
    from fastviz.averaged import integrated_gradients, smoothgrad
    from fastviz.cam import gradcam
    from fastviz.cli.common import tune_malloc

    warnings.filterwarnings("ignore")
    malloc = tune_malloc()
    torch.set_num_threads(args.threads)
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency
    from lucent.optvis import objectives, param
    from lucent.optvis import render as lucent_render
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    import captum
    import importlib.metadata as md

    B, S = args.batch, args.steps
    model = fv.load_model()
    net = model.module

    class Normalize(nn.Module):
        def forward(self, x):
            return model.normalize(x)

    wrapped = nn.Sequential(Normalize(), net).eval()  # what every peer gets: [0, 1] in, logits out
    x = fv.load_images(list(fv.sample_images().values()))
    x = x.repeat(-(-B // x.shape[0]), 1, 1, 1)[:B].contiguous()
    with torch.no_grad():
        targets = model(x).argmax(1)
    tl = targets.tolist()
    classes = [1, 130, 285, 980, 967, 20, 340, 504][:B] + list(range(max(0, B - 8)))
    layer = "_blocks.10"
    lucent_layer = "1_" + layer.replace(".", "_")  # lucent joins module names with "_"

    # -- correctness checks of the guided peers ------------------------------------------------
    plain = Saliency(wrapped).attribute(x, target=targets, abs=False)
    cap_guided = GuidedBackprop(wrapped).attribute(x, target=targets)
    fv_guided = fv.guided_backprop(model, x, target=targets)
    gc_guided = GuidedBackpropReLUModel(wrapped, device="cpu")(x[:1], target_category=tl[0])
    checks = {
        "captum GuidedBackprop == plain gradient": bool(torch.allclose(cap_guided, plain, atol=1e-6)),
        "grad-cam GuidedBackpropReLUModel == plain gradient": bool(np.allclose(
            gc_guided, plain[0].permute(1, 2, 0).numpy(), atol=1e-6)),
        "fastviz guided_backprop == plain gradient": bool(torch.allclose(fv_guided, plain, atol=1e-6)),
    }
    print("\n".join(f"{k}: {v}" for k, v in checks.items()))

    # -- the rows --------------------------------------------------------------------------------
    def cap_smoothgrad():
        nt = NoiseTunnel(Saliency(wrapped))
        sigma = float(0.15 * (x.amax() - x.amin()))
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=args.smoothgrad_n, stdevs=sigma,
                            nt_samples_batch_size=32, target=targets, abs=False)

    def gc_guided_all():
        g = GuidedBackpropReLUModel(wrapped, device="cpu")
        return [g(x[i:i + 1], target_category=tl[i]) for i in range(B)]

    def gc_gradcam():
        with GradCAM(model=wrapped, target_layers=[net._bn1]) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in tl])

    def lucent_channel(steps):
        obj = objectives.Objective.sum([objectives.channel(lucent_layer, c, batch=c) for c in range(B)])
        return lucent_render.render_vis(wrapped, obj, param_f=lambda: param.image(224, batch=B),
                                        thresholds=(steps,), preprocess=False, progress=False,
                                        show_image=False)

    def lucent_class(steps):
        @objectives.wrap_objective()
        def logit(c, b):
            return lambda hook: -hook("1__fc")[b, c]

        obj = logit(classes[0], 0)
        for b in range(1, B):
            obj = obj + logit(classes[b], b)
        return lucent_render.render_vis(wrapped, obj, param_f=lambda: param.image(224, batch=B),
                                        thresholds=(steps,), preprocess=False, progress=False,
                                        show_image=False)

    ig_steps, sg_n = args.ig_steps, args.smoothgrad_n
    rows = [
        ("saliency", "captum Saliency", lambda: fv.saliency(model, x, target=targets),
         lambda: Saliency(wrapped).attribute(x, target=targets, abs=True), None),
        ("guided backprop", "captum GuidedBackprop*", lambda: fv.guided_backprop(model, x, target=targets),
         lambda: GuidedBackprop(wrapped).attribute(x, target=targets), None),
        ("guided backprop", "grad-cam GuidedBackpropReLUModel* (one image a call)",
         lambda: fv.guided_backprop(model, x, target=targets), gc_guided_all, None),
        (f"integrated gradients ({ig_steps} steps)", "captum IntegratedGradients",
         lambda: integrated_gradients(model, x, target=targets, points=ig_steps, batch_size=32),
         lambda: IntegratedGradients(wrapped).attribute(x, target=targets, n_steps=ig_steps,
                                                        internal_batch_size=32), None),
        (f"SmoothGrad (n={sg_n})", "captum NoiseTunnel(Saliency)",
         lambda: smoothgrad(model, x, target=targets, n=sg_n, batch_size=32, seed=0), cap_smoothgrad, None),
        ("Grad-CAM", "grad-cam GradCAM", lambda: gradcam(model, x, target=targets), gc_gradcam, None),
        ("Grad-CAM", "captum LayerGradCam",
         lambda: gradcam(model, x, target=targets),
         lambda: LayerGradCam(wrapped, net._bn1).attribute(x, target=targets), None),
        (f"channel visualisation, {layer} ({S} steps)", "lucent render_vis (standard transforms)",
         lambda: fv.feature(model, layer, channels=range(B), steps=S, seed=0, param="pixel"),
         lambda: lucent_channel(S),
         {"fastviz": lambda: fv.feature(model, layer, channels=range(B), steps=2, param="pixel"),
          "peer": lambda: lucent_channel(2)}),
        (f"class models ({S} steps)", "lucent render_vis (standard transforms; no Yosinski)",
         lambda: fv.class_model(model, classes, steps=S, seed=0, param="pixel"),
         lambda: lucent_class(S),
         {"fastviz": lambda: fv.class_model(model, classes, steps=2, param="pixel"), "peer": lambda: lucent_class(2)}),
    ]
    load_before = os.getloadavg()
    results = []
    for method, peer, fv_fn, peer_fn, warm in rows:
        t = alternate({"fastviz": fv_fn, "peer": peer_fn}, args.repeats, warm)
        results.append((method, peer, t["fastviz"] / B, t["peer"] / B))
        print(f"{method:45s} fastviz {t['fastviz'] / B * 1e3:9.1f} ms/image   {peer:50s} "
              f"{t['peer'] / B * 1e3:9.1f} ms/image   x{t['peer'] / t['fastviz']:.2f}", flush=True)
    load_after = os.getloadavg()

    # -- the page ------------------------------------------------------------------------------
    versions = {"torch": torch.__version__, "fastviz": fv.__version__, "captum": captum.__version__,
                "torch-lucent": md.version("torch-lucent"), "grad-cam": md.version("grad-cam")}
    lines = [
        "# fastviz beside its peers (CPU)",
        "",
        f"Measured {datetime.date.today()} by `{Path(sys.executable).parent.parent.name}/bin/python "
        f"bench/peers.py --batch {B} --steps {S} --threads {args.threads}`, every number from one run "
        f"(one process; fastviz and the peer called in turn, median of {args.repeats} calls after a warm-up).",
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, shared with other work; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        f"- torch threads: {args.threads}; glibc malloc thresholds raised (mallopt): {malloc}; env "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}, "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_')}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"- Model: EfficientNet-Lite0 (pretrained), the same `nn.Sequential(Normalize, net)` for every "
        f"peer; batch {B}, 224x224 images in [0, 1].",
        "",
        "| method | fastviz ms/image | peer | peer ms/image | fastviz speed-up |",
        "|---|---:|---|---:|---:|",
    ]
    for method, peer, f, p in results:
        lines.append(f"| {method} | {f * 1e3:.1f} | {peer} | {p * 1e3:.1f} | {p / f:.2f}x |")
    lines += [
        "",
        "\\* Checked in the same run, on Lite0 (17 ReLU6 modules, no nn.ReLU):",
        "",
    ]
    for k, v in checks.items():
        lines.append(f"- {k}: **{v}**")
    lines += [
        "",
        "captum's GuidedBackprop and grad-cam's GuidedBackpropReLUModel replace `nn.ReLU` only, so on "
        "this network they silently return the plain gradient (their rows time a plain gradient); "
        "fastviz guides ReLU6 too.",
        "",
        "Notes: Grad-CAM peers are given the head's `_bn1` (the last map before pooling that a single "
        "module produces: Lite0 reuses its `_swish` module, which breaks hook-based peers); fastviz uses "
        "its default layer (the same map after the activation). Lucent has no Yosinski regularizers; its "
        "rows time its default (FFT parameterisation, pad/jitter/scale/rotate transforms, Adam lr 0.05), "
        "fastviz's the full default `Yosinski()`. grad-cam and lucent leave parameters trainable and call "
        "`.backward()`, so every step also computes weight gradients; captum differentiates with "
        "`torch.autograd.grad` with respect to the inputs only, which skips weight gradients too, so "
        "fastviz has no such edge over captum (its integrated gradients also run two extra forwards, "
        "of the image and the baseline, for the completeness check).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
