"""Rule 1: every public call gives the user's network back as it came, also when it raises.

Each case runs on a network that starts in *training* mode with some parameters frozen and an
inplace ReLU, so that a call which forgets to restore eval/requires_grad/inplace is caught.
"""

import tempfile

import pytest
import torch

import fastviz as fv
from tiny_net import Net


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = Net().train()
    net.features[0].bias.requires_grad_(False)
    return fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32, labels=[str(i) for i in range(10)])


X = torch.rand(2, 3, 32, 32)
N = fv.Neuron("features.3", channel=1)

# (name, call) pairs; each call takes the model. Other test files extend these lists.
CALLS = [
    ("predict", lambda m: fv.predict(m, X, k=3)),
    ("saliency", lambda m: fv.saliency(m, X)),
    ("saliency neuron", lambda m: fv.saliency(m, X, N)),
    ("guided_backprop", lambda m: fv.guided_backprop(m, X, [1, 2])),
    ("neuron_gradient", lambda m: fv.neuron_gradient(m, X, N)),
    ("neuron_gradient guided", lambda m: fv.neuron_gradient(m, X, N, guided=True)),
]
BAD_CALLS = [
    ("predict k", lambda m: fv.predict(m, X, k=11)),
    ("saliency target", lambda m: fv.saliency(m, X, target=10)),
    ("saliency shape", lambda m: fv.saliency(m, X[:, :2])),
    ("guided targets", lambda m: fv.guided_backprop(m, X, [1, 2, 3])),
    ("neuron layer", lambda m: fv.neuron_gradient(m, X, fv.Neuron("features.9", 0))),
    ("neuron channel", lambda m: fv.neuron_gradient(m, X, fv.Neuron("features.3", 99), guided=True)),
]


# Synthesis, the CAM family, the averaged gradients and inspection, on the same small net.
CALLS += [
    ("class_model", lambda m: fv.class_model(m, [1, 2], steps=3)),
    ("feature", lambda m: fv.feature(m, "features.3", [0, 1], steps=2, jitter=2)),
    ("neuron", lambda m: fv.neuron(m, N, steps=2)),
    ("deepdream", lambda m: fv.deepdream(m, X[:1], "features.3", octaves=2, steps_per_octave=2, jitter=2)),
    ("invert", lambda m: fv.invert(m, X[:1], "features.3", steps=2)),
    ("render_objective", lambda m: fv.render_objective(m, fv.channel("features.3", [0]) - fv.dream("features.3"),
                                                       1, steps=2)),
    ("gradcam", lambda m: fv.gradcam(m, X, layer="features.3")),
    ("guided_gradcam", lambda m: fv.guided_gradcam(m, X, layer="features.3")),
    ("scorecam", lambda m: fv.scorecam(m, X, layer="features.3", batch_size=3)),
    ("layercam", lambda m: fv.layercam(m, X)),
    ("smoothgrad", lambda m: fv.smoothgrad(m, X, n=3, batch_size=4)),
    ("integrated_gradients", lambda m: fv.integrated_gradients(m, X, points=4, batch_size=3)),
    ("filters", lambda m: fv.filters(m)),
    ("filter_grid", lambda m: fv.filter_grid(m)),
    ("embed", lambda m: fv.embed(m, torch.rand(6, 3, 32, 32), method="pca")),
]
# The lowered copy (fastviz/lower/): the loop's default, attribution's option.
CALLS += [
    ("class_model lower=False", lambda m: fv.class_model(m, [1, 2], steps=2, lower=False)),
    ("saliency lower", lambda m: fv.saliency(m, X, lower=True)),
    ("neuron_gradient lower guided", lambda m: fv.neuron_gradient(m, X, N, guided=True, lower=True)),
]
BAD_CALLS += [
    ("saliency lower target", lambda m: fv.saliency(m, X, target=10, lower=True)),
    ("neuron lower layer", lambda m: fv.neuron_gradient(m, X, fv.Neuron("features.9", 0), lower=True)),
]
BAD_CALLS += [
    ("class_model class", lambda m: fv.class_model(m, [10])),
    ("class_model nan", lambda m: fv.class_model(m, [1], steps=2, lr=float("nan"))),
    ("feature channel", lambda m: fv.feature(m, "features.3", [8], steps=1)),
    ("deepdream layer", lambda m: fv.deepdream(m, X[:1], "features.7")),
    ("invert shape", lambda m: fv.invert(m, X[:, :1], "features.3")),
    ("gradcam layer", lambda m: fv.gradcam(m, X, layer="nope")),
    ("scorecam target", lambda m: fv.scorecam(m, X, target=99)),
    ("smoothgrad n", lambda m: fv.smoothgrad(m, X, n=0)),
    ("integrated_gradients method", lambda m: fv.integrated_gradients(m, X, method="simpson")),
    ("embed too few", lambda m: fv.embed(m, torch.rand(2, 3, 32, 32), method="tsne")),
    ("class_model meta device", lambda m: fv.class_model(m, [1], steps=1, device="meta")),
    ("features meta device", lambda m: fv.features(m, X, device="meta")),
    ("predict nan pixels", lambda m: fv.predict(m, X.masked_fill(X > 0.9, float("nan")))),
    ("deepdream normalised photo", lambda m: fv.deepdream(m, (X[:1] - 0.5) / 0.25, "features.3")),
]

# The atlas writes into a fresh directory per call.
CALLS += [
    ("atlas", lambda m: fv.atlas(m, tempfile.mkdtemp(), classes=[1, 2], layers="features.3", channels=[0],
                                 steps=2, batch_size=2, progress=False)),
]
BAD_CALLS += [
    ("atlas classes", lambda m: fv.atlas(m, tempfile.mkdtemp(), classes=[10], steps=1)),
    ("atlas nan in the loop", lambda m: fv.atlas(m, tempfile.mkdtemp(), classes=[1], steps=1, batch_size=1,
                                                 lr=float("nan"), progress=False)),
]


# Faithfulness metrics, the randomisation check, deconvnet and input x gradient.
MAPS = torch.rand(2, 32, 32)
CALLS += [
    ("deconvnet", lambda m: fv.deconvnet(m, X, [1, 2])),
    ("input_x_gradient", lambda m: fv.input_x_gradient(m, X)),
    ("deletion", lambda m: fv.deletion(m, X, MAPS, points=3)),
    ("insertion", lambda m: fv.insertion(m, X, MAPS, points=3)),
    ("road", lambda m: fv.road(m, X, MAPS, percentiles=[30, 70])),
    ("randomization_check", lambda m: fv.randomization_check(m, X, "guided_backprop")),
]
BAD_CALLS += [
    ("deconvnet target", lambda m: fv.deconvnet(m, X, target=10)),
    ("input_x_gradient shape", lambda m: fv.input_x_gradient(m, X[:, :2])),
    ("deletion maps", lambda m: fv.deletion(m, X, MAPS[:1])),
    ("insertion target", lambda m: fv.insertion(m, X, MAPS, target=10)),
    ("road percentiles", lambda m: fv.road(m, X, MAPS, percentiles=[100])),
    ("randomization_check stages", lambda m: fv.randomization_check(m, X, "saliency", stages=["nope"])),
    ("randomization_check target", lambda m: fv.randomization_check(m, X, "saliency", target=10)),
]

# Layer-wise relevance propagation (the model's own modules are never swapped: a copy is).
CALLS += [
    ("lrp", lambda m: fv.lrp(m, X, [1, 2])),
    ("lrp gamma box rules", lambda m: fv.lrp(m, X, composite="epsilon_gamma_box",
                                             rules={"fc": fv.rules.Epsilon(0.01)})),
    ("randomization_check lrp", lambda m: fv.randomization_check(m, X, "lrp")),
]
BAD_CALLS += [
    ("lrp target", lambda m: fv.lrp(m, X, target=10)),
    ("lrp composite", lambda m: fv.lrp(m, X, composite="epsilon_plus_box")),
    ("lrp rule name", lambda m: fv.lrp(m, X, rules={"features.9": fv.rules.ZPlus()})),
    ("lrp rule kind", lambda m: fv.lrp(m, X, rules={"features.2": fv.rules.ZPlus()})),
    ("attention_rollout cnn", lambda m: fv.attention_rollout(m, X)),  # no attention to read
    ("transformer_attribution cnn", lambda m: fv.transformer_attribution(m, X, 1)),
]

# Parameterisations, transforms and diversity.
CALLS += [
    ("class_model pixel", lambda m: fv.class_model(m, [1, 2], steps=2, param="pixel")),
    ("class_model fft diversity", lambda m: fv.class_model(m, [1, 1], steps=2, param="fft", diversity=1.0,
                                                           diversity_layer="features.3")),
    ("feature maco transforms", lambda m: fv.feature(m, "features.3", [0], steps=2, param="maco",
                                                     transforms=fv.Transforms(rotate=10, crops=2))),
]
BAD_CALLS += [
    ("class_model param", lambda m: fv.class_model(m, [1], param="wavelet")),
    ("class_model maco reg", lambda m: fv.class_model(m, [1], steps=1, param="maco", reg=fv.Yosinski())),
    ("class_model diversity layer", lambda m: fv.class_model(m, [1, 1], steps=1, diversity=1.0)),
    ("class_model transforms", lambda m: fv.class_model(m, [1], steps=1, transforms="big")),
]

# Dataset examples: the scan, the crops with the activation overlay, and the save.
CALLS += [
    ("dataset_examples", lambda m: fv.dataset_examples(m, torch.rand(6, 3, 32, 32), layer=["features.0", "features.3"],
                                                       k=2, batch_size=4)),
    ("dataset_examples crops save", lambda m: fv.dataset_examples(m, X, layer="features.3", k=2).save(
        tempfile.mkdtemp())),
]
BAD_CALLS += [
    ("dataset_examples layer", lambda m: fv.dataset_examples(m, X, layer="no.such.layer")),
    ("dataset_examples channels", lambda m: fv.dataset_examples(m, X, layer="features.3", channels=[8])),
]


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
def test_model_unchanged_after_call(model, snapshot, name, call):
    snap = snapshot(model.module)
    call(model)
    snap.assert_unchanged()


@pytest.mark.parametrize("name,call", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_model_unchanged_after_error(model, snapshot, name, call):
    snap = snapshot(model.module)
    with pytest.raises(fv.FastvizError):
        call(model)
    snap.assert_unchanged()


def test_session_restores_on_an_exception_inside(model, snapshot):
    from fastviz.hooks import session

    snap = snapshot(model.module)
    with pytest.raises(RuntimeError, match="boom"):
        with session(model, no_inplace=True) as s:
            s.add_forward_hook(model.layer("features.2"), lambda *a: None)
            assert not model.module.training and not model.layer("features.2").inplace
            raise RuntimeError("boom")
    snap.assert_unchanged()


def test_no_state_and_no_gpu_only_import_at_import_time():
    """docs/design.md, rule 10 and the CPU path: importing fastviz chooses no device and imports no Triton
    kernel (Triton decides interpreter mode when a kernel is defined)."""
    import subprocess
    import sys

    code = ("import sys, torch; n = torch.get_num_threads(); import fastviz; "
            "assert 'fastviz.kernels.yosinski' not in sys.modules and 'triton' not in sys.modules, "
            "sorted(m for m in sys.modules if 'triton' in m); "
            "assert torch.get_num_threads() == n; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "clean", out.stderr


def test_the_cpu_engine_uses_the_torch_reference(model, monkeypatch):
    import fastviz.regularizers as regs

    seen = []
    real = regs.regularize_reference
    monkeypatch.setattr(regs, "regularize_reference", lambda *a, **k: seen.append(1) or real(*a, **k))
    fv.class_model(model, [1], steps=2, param="pixel")
    assert len(seen) == 2
