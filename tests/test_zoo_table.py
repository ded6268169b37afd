"""Every public method on timm architectures of many families, with random weights and small
inputs: the expected outcome of each (architecture, method) cell is written down in `TABLE`,
so that a change in behaviour fails here.

A cell is either `ok` (the call returns a finite result of the documented shape) or a refusal
code (the call raises `fv.FastvizError` whose message matches the code's reason: the method is
not defined for that architecture, and the message says why). After every cell, also after a
refusal, the network is as it went in (docs/design.md, rule 1): the same module objects,
`training` flags, `requires_grad`, no hooks left, no `.grad`, the same state_dict values and
timm's `fused_attn` flags as they were. Each network starts in training mode with one parameter
frozen, so a call that forgets to restore either is caught.

Each network is built once per module (the cache keeps the last one only, so the memory is one
network's). The fast tier runs a representative subset (a CNN, a ViT with a class token, a
small Swin; the cheap methods); the rest is `slow`. docs/any_model.md shows the same table.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import pytest
import torch

import fastviz as fv

timm = pytest.importorskip("timm")


@dataclass(frozen=True)
class Arch:
    """A timm network built small: its name, the keyword arguments that shrink it, the input
    side it is built for, a mid-level layer for the layer objectives and `Neuron`s, and that
    layer's channel count as timm declares it (the embedding width of a transformer stage)."""
    timm_name: str
    family: str
    layer: str
    channels: int
    size: int = 64
    kwargs: dict = field(default_factory=dict)


SMALL_SWIN = dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
ARCHS = {
    "resnet18": Arch("resnet18", "ResNet", "layer3", 256),
    "efficientnet_b0": Arch("efficientnet_b0", "EfficientNet (SiLU, squeeze-excitation)", "blocks.3", 80),
    "mobilenetv3_small_100": Arch("mobilenetv3_small_100", "MobileNetV3 (hardswish)", "blocks.2", 40),
    "convnext_atto": Arch("convnext_atto", "ConvNeXt (LayerNorm2d)", "stages.2", 160),
    "regnetx_002": Arch("regnetx_002", "RegNet", "s3", 152),
    "densenet121": Arch("densenet121", "DenseNet", "features.denseblock3", 1024),
    "vit_tiny": Arch("vit_tiny_patch16_224", "ViT, class token", "blocks.5", 192, kwargs=dict(img_size=64)),
    "deit_tiny_distilled": Arch("deit_tiny_distilled_patch16_224", "DeiT, distillation token", "blocks.5", 192,
                                kwargs=dict(img_size=64)),
    "vit_tiny_reg4": Arch("vit_tiny_patch16_224", "ViT, 4 register tokens", "blocks.5", 192,
                          kwargs=dict(img_size=64, reg_tokens=4)),
    "swin": Arch("swin_tiny_patch4_window7_224", "Swin ((B, H, W, C) stages)", "layers.2", 128, kwargs=SMALL_SWIN),
    "levit_128s": Arch("levit_128s", "LeViT (tokens, no prefix)", "stages.1", 256, kwargs=dict(img_size=64)),
    "mobilevit_xxs": Arch("mobilevit_xxs", "MobileViT (attention over unfolded patches)", "stages.3", 64),
    "fastvit_t8": Arch("fastvit_t8", "FastViT (RepMixer, hybrid)", "stages.2", 192),
    # EfficientFormer's attention biases are laid out for 224 input: a fixed-size model.
    "efficientformer_l1": Arch("efficientformer_l1", "EfficientFormer (fixed 224 input)", "stages.2", 224, size=224),
}

# Refusal codes: the reason a method is not defined for a network, as its message says it.
REASONS = {
    "att": r"has no attention module fastviz can read: none of its modules is an attention module",
    # LeViT's and EfficientFormer's attention takes its softmax inline: no module to capture it at
    "inl": r"has no attention module fastviz can read: its attention modules \(Attention at '[\w.]+'.* inline",
    "win": r"uses windowed attention \(WindowAttention\); attention rollout needs global attention",
    # attention within unfolded patches, (B * 4, heads, N, N): refused where it is captured
    "unf": r"model: mobilevit_xxs: the attention probabilities of 'stages\.2\.1\.transformer\.0\.attn' have "
           r"shape \(\d+, 4, 16, 16\) for a batch of \d+, and their first dimension is not the batch",
    "ln": r"layer_norm .*AttnLRP",
    "mm": r"matmul .*AttnLRP",
    "fx": r"cannot trace ByobNet with torch.fx",
    "sub": r"computes sub \(sub in stages\.0\.blocks\.0\.token_mixer .*which no LRP rule covers",  # x - pool(x)
    "lnm": r"has no LRP rule.*AttnLRP",
    "bad_t": r"target: class index 10 is out of range for 10 classes",
    "bad_l": r"layer: no module named 'nope'",
    # the channel count the layer is read with: a token layer's embedding width, never its tokens
    "bad_c": r"channels: '{layer}' has {channels} channels, got 100000",
}

COLUMNS = list(ARCHS)
# rows: methods; columns: ARCHS in order (res, effb0, mnv3, cnx, reg, dense, vit, deit, reg4, swin,
# levit, mvit, fvit, eform). Read down a column for a family, across a row for a method.
TABLE = """
method                    res   effb0 mnv3  cnx   reg   dense vit   deit  reg4  swin  levit mvit  fvit  eform
predict                   ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
saliency                  ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
saliency_lower            ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
guided_backprop           ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
deconvnet                 ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
input_x_gradient          ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
neuron_gradient           ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
last_channel              ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
gradcam                   ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
gradcam_layer             ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
guided_gradcam            ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
layercam                  ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
scorecam                  ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
smoothgrad                ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
integrated_gradients      ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
lrp                       ok    ok    ok    ln    ok    ok    ln    ln    ln    lnm   mm    fx    sub   sub
attention_rollout         att   att   att   att   att   att   ok    ok    ok    win   inl   unf   att   inl
transformer_attribution   att   att   att   att   att   att   ok    ok    ok    win   inl   unf   att   inl
class_model               ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
class_model_large         ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
feature                   ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
neuron                    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
deepdream                 ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
invert                    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
features                  ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
embed                     ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
filters                   ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
filter_grid               ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
dataset_examples          ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
deletion                  ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
insertion                 ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
road                      ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
randomization_check       ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok    ok
bad_target                bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t bad_t
bad_layer                 bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l bad_l
bad_channel               bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c bad_c
"""


def _parse(table: str) -> dict[tuple[str, str], str]:
    rows = [line.split() for line in table.strip().splitlines()]
    head, body = rows[0][1:], rows[1:]
    assert len(head) == len(COLUMNS), "one column per architecture"
    cells = {}
    for method, *codes in body:
        assert len(codes) == len(COLUMNS), f"{method}: {len(codes)} cells for {len(COLUMNS)} architectures"
        for arch, code in zip(COLUMNS, codes):
            assert code == "ok" or code in REASONS, f"{method}/{arch}: unknown code {code!r}"
            cells[(arch, method)] = code
    return cells


EXPECT = _parse(TABLE)

# The default CAM layer (`fv.cam.default_layer`): the input of the global pooling for a CNN,
# the last block's first norm for a ViT, a Swin and EfficientFormer (pytorch-grad-cam's
# convention for them), the deepest stage with more than one position for LeViT (its head
# averages the tokens in its forward; at 64 px its last stage is 1x1).
CAM_LAYER = {
    "resnet18": "global_pool.pool",
    "efficientnet_b0": "global_pool.pool",
    "mobilenetv3_small_100": "global_pool.pool",
    "convnext_atto": "head.global_pool.pool",
    "regnetx_002": "head.global_pool.pool",
    "densenet121": "global_pool.pool",
    "vit_tiny": "blocks.11.norm1",
    "deit_tiny_distilled": "blocks.11.norm1",
    "vit_tiny_reg4": "blocks.11.norm1",
    "swin": "layers.3.blocks.0.norm1",
    "mobilevit_xxs": "head.global_pool.pool",
    "levit_128s": "stages.1",
    "fastvit_t8": "head.global_pool.pool",
    "efficientformer_l1": "stages.3.blocks.4.norm1",
}

# (arch, method) -> why the cell fails today, for cells whose fix lies outside this table's reach
KNOWN: dict[tuple[str, str], str] = {}

FAST_ARCHS = {"resnet18", "vit_tiny", "swin"}
SLOW_METHODS = {"scorecam", "randomization_check", "embed", "class_model", "class_model_large"}


# -- building the networks once ---------------------------------------------------------------
class _Zoo:
    """Builds a network on first use and keeps only the last one (the table runs column by column)."""

    def __init__(self):
        self.key, self.model = None, None

    def get(self, key: str) -> fv.Model:
        if key != self.key:
            self.key, self.model = None, None
            a = ARCHS[key]
            torch.manual_seed(0)
            net = timm.create_model(a.timm_name, pretrained=False, num_classes=10,
                                    # the cfg keeps 224 when img_size shrinks the network: say what it takes
                                    pretrained_cfg_overlay=dict(input_size=(3, a.size, a.size)), **a.kwargs)
            net.train()
            next(iter(net.parameters())).requires_grad_(False)  # restored as it was, not as True
            self.key, self.model = key, fv.Model.from_timm(net, name=key)
        return self.model


@pytest.fixture(scope="module")
def zoo():
    return _Zoo()


def _images(a: Arch, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, a.size, a.size, generator=torch.Generator().manual_seed(seed))


# -- the calls and what each returns --------------------------------------------------------
def _finite(t) -> bool:
    return bool(torch.isfinite(torch.as_tensor(t)).all())


def _map(shape):
    def check(out, a, x):
        assert tuple(out.shape) == shape(a, x) and _finite(out)
    return check


def _render(out, a, x):
    assert out.images.dim() == 4 and out.images.shape[1] == 3 and _finite(out.images)
    assert out.images.min() >= 0 and out.images.max() <= 1


def _photo_render(out, a, x):
    _render(out, a, x)
    assert tuple(out.images.shape) == (1, 3, a.size, a.size)  # the photo's size


B_HW = _map(lambda a, x: (x.shape[0], a.size, a.size))
B_3HW = _map(lambda a, x: (x.shape[0], 3, a.size, a.size))


def _predict(out, a, x):
    assert len(out) == x.shape[0] and all(len(row) == 3 for row in out)
    assert all(0 <= p <= 1 for row in out for _, _, p in row)


def _examples(out, a, x):
    scanned = out.indices >= 0
    assert out.indices.shape[1] == 2 and scanned.sum() == 4 and _finite(out.scores[scanned])


# name -> (call(model, arch, x), check(out, arch, x))
METHODS = {
    "predict": (lambda m, a, x: fv.predict(m, x, k=3), _predict),
    "saliency": (lambda m, a, x: fv.saliency(m, x), B_HW),
    "saliency_lower": (lambda m, a, x: fv.saliency(m, x, lower=True), B_HW),  # the lowered copy of the network
    "guided_backprop": (lambda m, a, x: fv.guided_backprop(m, x), B_3HW),
    "deconvnet": (lambda m, a, x: fv.deconvnet(m, x, 1), B_3HW),
    "input_x_gradient": (lambda m, a, x: fv.input_x_gradient(m, x), B_3HW),
    "neuron_gradient": (lambda m, a, x: fv.neuron_gradient(m, x, fv.Neuron(a.layer, 1)), B_3HW),
    # the layer's last channel: a token layer is read with its embedding as the channels
    "last_channel": (lambda m, a, x: fv.neuron_gradient(m, x, fv.Neuron(a.layer, a.channels - 1)), B_3HW),
    "gradcam": (lambda m, a, x: fv.gradcam(m, x), B_HW),
    "gradcam_layer": (lambda m, a, x: fv.gradcam(m, x, layer=a.layer), B_HW),
    "guided_gradcam": (lambda m, a, x: fv.guided_gradcam(m, x, [1, 2]), B_3HW),
    "layercam": (lambda m, a, x: fv.layercam(m, x), B_HW),
    # Score-CAM runs one forward per channel and image: one image, the mid layer (fewer channels)
    "scorecam": (lambda m, a, x: fv.scorecam(m, x[:1], layer=a.layer, batch_size=64),
                 lambda out, a, x: B_HW(out, a, x[:1])),
    "smoothgrad": (lambda m, a, x: fv.smoothgrad(m, x, n=2), B_HW),
    "integrated_gradients": (lambda m, a, x: fv.integrated_gradients(m, x, points=3),
                             lambda out, a, x: B_3HW(out.attributions, a, x)),
    "lrp": (lambda m, a, x: fv.lrp(m, x), lambda out, a, x: B_3HW(out.relevance, a, x)),
    "attention_rollout": (lambda m, a, x: fv.attention_rollout(m, x), B_HW),
    "transformer_attribution": (lambda m, a, x: fv.transformer_attribution(m, x, 3), B_HW),
    "class_model": (lambda m, a, x: fv.class_model(m, [1, 2], steps=2), _render),
    # a picture twice the input's side, seen in crops resized to the input (fixed-size models too)
    "class_model_large": (lambda m, a, x: fv.class_model(m, [1], steps=2, size=2 * a.size),
                          lambda out, a, x: _render(out, a, x) or out.images.shape[-1] == 2 * a.size),
    "feature": (lambda m, a, x: fv.feature(m, a.layer, [0, 1], steps=2), _render),
    "neuron": (lambda m, a, x: fv.neuron(m, fv.Neuron(a.layer, 1), steps=2), _render),
    "deepdream": (lambda m, a, x: fv.deepdream(m, x[:1], a.layer, octaves=2, steps_per_octave=2), _photo_render),
    "invert": (lambda m, a, x: fv.invert(m, x[:1], a.layer, steps=2), _photo_render),
    "features": (lambda m, a, x: fv.features(m, x),
                 lambda out, a, x: out.features.shape[0] == 2 and _finite(out.features)),
    "embed": (lambda m, a, x: fv.embed(m, _images(a, 4, seed=1), method="pca"),
              lambda out, a, x: out.coords.shape == (4, 2) and _finite(out.coords)),
    "filters": (lambda m, a, x: fv.filters(m),
                lambda out, a, x: out.dim() == 4 and out.shape[1] == 3 and _finite(out)),
    "filter_grid": (lambda m, a, x: fv.filter_grid(m),
                    lambda out, a, x: out.dim() == 3 and out.shape[0] == 3 and _finite(out)),
    "dataset_examples": (lambda m, a, x: fv.dataset_examples(m, _images(a, 4, seed=2), layer=a.layer,
                                                             channels=[0, 1], k=2), _examples),
    "deletion": (lambda m, a, x: fv.deletion(m, x, torch.rand(2, a.size, a.size), points=3),
                 lambda out, a, x: out.auc.shape == (2,) and _finite(out.auc)),
    "insertion": (lambda m, a, x: fv.insertion(m, x, torch.rand(2, a.size, a.size), points=3),
                  lambda out, a, x: out.auc.shape == (2,) and _finite(out.auc)),
    "road": (lambda m, a, x: fv.road(m, x, torch.rand(2, a.size, a.size), percentiles=[50]),
             lambda out, a, x: _finite(out.combined)),
    "randomization_check": (lambda m, a, x: fv.randomization_check(m, x, "saliency"),
                            lambda out, a, x: len(out.stages) > 0 and _finite(out.similarity)),
    # bad arguments: refused before any work, the network as it was
    "bad_target": (lambda m, a, x: fv.saliency(m, x, target=10), None),
    "bad_layer": (lambda m, a, x: fv.gradcam(m, x, layer="nope"), None),
    "bad_channel": (lambda m, a, x: fv.feature(m, a.layer, [100000], steps=1), None),
}
assert {m for _, m in EXPECT} == set(METHODS), "one row per method"


def _check_returns(out, check, a, x):
    res = check(out, a, x)
    assert res is None or res, "unexpected result"


# -- the model-unchanged check, beyond conftest's Snapshot -----------------------------------
def _hook_counts(net: torch.nn.Module) -> list:
    """Every hook dict of every module (forward, backward, state_dict, ...) and torch's global ones."""
    from torch.nn.modules import module as torch_module

    local = [(n, k, len(v)) for n, m in net.named_modules() for k, v in vars(m).items()
             if k.endswith("hooks") and isinstance(v, dict)]
    return local + [(k, len(v)) for k, v in vars(torch_module).items()
                    if k.startswith("_global") and k.endswith("hooks") and isinstance(v, dict)]


def _values(net: torch.nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "fused_attn": [(n, m.fused_attn) for n, m in net.named_modules() if hasattr(m, "fused_attn")],
        "hooks": _hook_counts(net),
    }


def _assert_same_values(net: torch.nn.Module, before: dict):
    now = _values(net)
    assert now["fused_attn"] == before["fused_attn"], "model changed: fused_attn"
    assert now["hooks"] == before["hooks"], "model changed: hooks"
    assert now["state"].keys() == before["state"].keys(), "model changed: state_dict keys"
    changed = [k for k, v in now["state"].items() if not torch.equal(v, before["state"][k])]
    assert not changed, f"model changed: state_dict values {changed[:5]}"


def _pending(arch: str, method: str) -> str | None:
    """Why a cell is expected to fail today (an expected failure, not strict), or None."""
    if (arch, method) in KNOWN:
        return KNOWN[(arch, method)]
    return None


CELLS = [pytest.param(a, m, id=f"{a}-{m}",
                      marks=[pytest.mark.slow] if a not in FAST_ARCHS or m in SLOW_METHODS else [])
         for a in COLUMNS for m in METHODS]


@pytest.mark.filterwarnings("error:.*has no activation module")  # guided = plain gradient, silently
@pytest.mark.parametrize("arch,method", CELLS)
def test_cell(zoo, snapshot, arch, method):
    a, code = ARCHS[arch], EXPECT[(arch, method)]
    model = zoo.get(arch)
    x = _images(a)
    call, check = METHODS[method]
    snap, values = snapshot(model.module), _values(model.module)
    failed = None
    try:
        if code == "ok":
            _check_returns(call(model, a, x), check, a, x)
        else:
            with pytest.raises(fv.FastvizError) as err:
                call(model, a, x)
            reason = REASONS[code].format(layer=re.escape(a.layer), channels=a.channels)
            assert re.search(reason, str(err.value)), f"{code}: {err.value}"
    except Exception as e:  # a pending cell may fail; the network must come back all the same
        failed = e
    snap.assert_unchanged()
    _assert_same_values(model.module, values)
    assert model.module.training  # started in training mode, comes back in it
    if failed is not None:
        if _pending(arch, method):
            pytest.xfail(f"{_pending(arch, method)}: {type(failed).__name__}: {str(failed)[:200]}")
        raise failed
    if _pending(arch, method):  # fixed: the cell can leave KNOWN and hold from now on
        warnings.warn(f"{arch}-{method} passes: take it out of KNOWN")


def _cam_marks(arch: str) -> list:
    return [] if arch in FAST_ARCHS else [pytest.mark.slow]


@pytest.mark.parametrize("arch", [pytest.param(a, marks=_cam_marks(a)) for a in CAM_LAYER])
def test_default_cam_layer(zoo, arch):
    model = zoo.get(arch)
    assert fv.cam.default_layer(model, _images(ARCHS[arch], 1)) == CAM_LAYER[arch]


# Public callables that are not a row, and why: they take no network, or another row calls them.
NOT_ROWS = {
    "as_model", "load_model", "load_image", "load_images", "sample_images", "demo_set", "imagenet_labels",
    "memory_budget", "grid", "heatmap", "normalize", "overlay", "save_image", "neighbour_agreement",
    "channel", "class_score", "dream", "neurons", "diversity",  # objectives, for render_objective
    "render_objective",  # what class_model, feature and neuron call
    "gradient",  # what saliency, guided_backprop and deconvnet call
    "atlas",  # many class_model and feature calls written to disk (tests/test_atlas.py)
}


def test_the_table_covers_the_zoo_and_every_public_method():
    families = {a.timm_name.split("_")[0].rstrip("0123456789") for a in ARCHS.values()}
    assert len(ARCHS) >= 14 and len(families) >= 8
    public = {n for n in fv.__all__ if n[0].islower() and callable(getattr(fv, n))}
    rows = {m.removesuffix("_layer") for m in METHODS}
    assert public - NOT_ROWS <= rows, f"public methods with no row: {sorted(public - NOT_ROWS - rows)}"
