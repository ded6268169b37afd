"""The default CAM layer: which feature map a class activation map reads when `layer=None`.

The default (`layer=None`) is found by one no-grad pass over one image, among modules that run
exactly once and whose map has more than 1x1 positions, by the first of three rules that holds:
1. A transformer block's first norm: the *output* of the last `*.norm1` giving tokens or a
   channels-last map (ViT, DeiT: `blocks[-1].norm1`; Swin: `layers[-1].blocks[-1].norm1`;
   EfficientFormer: its last, attention block's `norm1`), where pytorch-grad-cam's
   documentation puts it for ViT and Swin.
2. A token network whose head pools the tokens in its forward (LeViT: `x.mean(1)`, no module
   sees the last tokens): when the last map that enters a module is (B, N, C) tokens, the
   *output* of the deepest stage timm declares in `feature_info` (the last token stage's
   output; LeViT at 224: `stages.2`, 4x4; at 64 that stage is 1x1 and `stages.1`, 2x2, is
   used). Rule 3 would land inside the last stage's downsampling attention, or on a residual
   branch (an MLP's output before it is added back), neither a map of the whole network.
3. Otherwise (CNNs): the feature map that *enters* the last module, in call order, that takes
   a map -- in practice the input of the global pooling, i.e. the last rectified
   conv features. That is `layer4`'s output for torchvision ResNets (input of `avgpool`),
   `features`' output for VGG/AlexNet, the head activation `_swish(_bn1(...))` for
   EfficientNet-Lite0 (input of `_avg_pooling`; `_swish` itself is one ReLU6 module also used
   by the stem, so it cannot be named), and the input of `features.norm5` for DenseNet (its
   final ReLU is functional).
`default_layer` returns that module's name; `default_layer_used` also says whether its input or
its output is the map. Found once per network and image size (cached).
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from .errors import FastvizError
from .explain import prepare
from .hooks import session
from .layout import Layout
from .models import Model

__all__ = ["default_layer", "default_layer_used"]

# (module -> {(C, H, W): name}): the default layer costs one forward per network and image size.
_DEFAULT_LAYERS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def default_layer(model, x: torch.Tensor) -> str:
    """The module CAM methods use when `layer=None` (rules in the module docstring): on a
    transformer the output of the last block's `norm1`; on a token network whose head pools
    the tokens itself (LeViT) the output of its deepest declared stage with more than one
    position; otherwise (CNNs) the input of the last module taking a map, the global pooling
    (`default_layer_used` says whether the input or the output is read).

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images (only the shape of one image matters).

    Returns:
        A dotted module name.

    Raises:
        FastvizError: no module takes or gives a spatial map.

    Example:
        >>> default_layer(load_model(), torch.rand(1, 3, 224, 224))
        '_avg_pooling'
        >>> default_layer(load_model("timm:vit_small_patch16_224", weights=None), torch.rand(1, 3, 224, 224))
        'blocks.11.norm1'
        >>> default_layer(load_model("timm:levit_128s", weights=None), torch.rand(1, 3, 224, 224))
        'stages.2'
    """
    return default_layer_used(model, x)[0]


def default_layer_used(model, x: torch.Tensor) -> tuple[str, bool]:
    """(the default CAM layer, True when its input rather than its output is the map)."""
    m, x = prepare(model, x)
    key = tuple(x.shape[1:])
    cache = _DEFAULT_LAYERS.setdefault(m.module, {})
    if key not in cache:
        cache[key] = _find_default(m, x)
    return cache[key]


def _declared_stages(net: torch.nn.Module) -> list[str]:
    """The module names timm declares as the network's stages (`feature_info`), shallow to deep."""
    info = getattr(net, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    return [d["module"] for d in info if isinstance(d, dict) and isinstance(d.get("module"), str)]


def _find_default(m: Model, x: torch.Tensor) -> tuple[str, bool]:
    """The default CAM layer by the three rules of the module docstring, in order."""
    names = {mod: n for n, mod in m.module.named_modules() if n}
    calls: dict[str, int] = {}
    took_map: list[tuple[str, str]] = []  # (module, form of its input map with h x w > 1), call order
    norm1: list[str] = []      # transformer blocks' first norms giving tokens / channels-last maps
    stage_maps: set[str] = set()  # declared stages whose output is a map with h x w > 1
    stages = _declared_stages(m.module)
    with session(m) as s:
        def spatial(name, t) -> "Layout | None":
            try:
                lay = s.layout(name, t, x[:1])
            except FastvizError:  # not a map (a vector, windows folded into the batch): not a candidate
                return None
            return lay if lay.spatial and lay.grid[0] * lay.grid[1] > 1 else None

        def before(mod, args):
            name = names[mod]
            calls[name] = calls.get(name, 0) + 1
            a = args[0] if args else None
            lay = spatial(name, a) if isinstance(a, torch.Tensor) and a.dim() in (3, 4) else None
            if lay is not None:
                took_map.append((name, lay.form))

        def after(mod, _args, out):
            name = names[mod]
            lay = spatial(name, out) if isinstance(out, torch.Tensor) else None
            if lay is not None and lay.form in ("tokens", "nhwc") and name.rsplit(".", 1)[-1] == "norm1":
                norm1.append(name)
            if lay is not None and name in stages:
                stage_maps.add(name)

        with contextlib.ExitStack() as hooks, torch.no_grad():
            for mod, name in names.items():
                hooks.enter_context(s.hook(mod, before, "pre"))
                if name.rsplit(".", 1)[-1] == "norm1" or name in stages:
                    hooks.enter_context(s.hook(mod, after))
            m(x[:1])
    for name in reversed(norm1):
        if calls[name] == 1:
            return name, False
    took_once = [(name, form) for name, form in took_map if calls[name] == 1]
    if took_once and took_once[-1][1] == "tokens":
        for name in reversed(stages):
            if name in stage_maps and calls.get(name) == 1:
                return name, False
    if took_once:
        return took_once[-1][0], True
    side = m.input_size or (224, 224)
    if tuple(x.shape[-2:]) != tuple(side) and x.shape[-2] * x.shape[-1] < side[0] * side[1]:
        try:
            found = default_layer(m, x.new_zeros(1, x.shape[1], *side))
        except FastvizError:
            found = None
        if found is not None:  # the network has a spatial map; these images are too small for it
            raise FastvizError(
                f"x: at {x.shape[-2]}x{x.shape[-1]} pixels every feature map of {m.name} is 1x1, so "
                f"there is no map to draw; give larger images (at {side[0]}x{side[1]}, {found!r} has one)")
    raise FastvizError(f"layer: {m.name} has no module that takes a feature map (B, C, h, w) or tokens "
                       f"with h x w > 1 at input {tuple(x.shape[1:])}; name one with layer=")
