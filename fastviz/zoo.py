"""Models from timm's zoo, offline: `load_model("timm:NAME", weights=FILE | None)` and
`Model.from_timm(net)`.

timm builds every architecture with `pretrained=False` and nothing is downloaded: the weights
come from a file the user has (safetensors, or a state dict read with `weights_only=True`) or
are random (`weights=None`). The normalisation, the input size and the class count come from
the network's `pretrained_cfg`; 1000 classes get the ImageNet labels. timm is an optional
extra (`pip install fastviz[timm]`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
from torch import nn

from .errors import FastvizError
from .hooks import session

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError as e:
        raise FastvizError("name: timm models need the package timm (pip install 'fastviz[timm]')") from e
    return timm


def from_timm(net: nn.Module, name: str | None = None):
    """A `Model` for a timm network: mean, std, input size and labels from its pretrained_cfg.

    Args:
        net: a network timm built (it carries `pretrained_cfg`); used as is, never copied.
        name: a short name for messages and files (default: the cfg's architecture).

    Returns:
        `Model` (the network is used as is: every call runs it in eval mode and restores it),
        `fixed_size` where the network takes only its input size (`fixed_size`).
    """
    from .models import Model, imagenet_labels

    if not isinstance(net, nn.Module):
        raise FastvizError(f"net: expected a timm network (torch.nn.Module), got {type(net).__name__}")
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None)
    if not isinstance(cfg, dict):
        raise FastvizError(f"net: {type(net).__name__} has no pretrained_cfg; was it built by timm? "
                           f"Wrap other networks with fv.Model(net, mean=..., std=..., input_size=...)")
    size = cfg.get("input_size") or (3, 224, 224)
    classes = getattr(net, "num_classes", cfg.get("num_classes"))
    labels = imagenet_labels() if classes == 1000 else None
    m = Model(net, mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
              std=tuple(cfg.get("std", (0.229, 0.224, 0.225))), input_size=_input_size(net, size),
              labels=labels, name=name or cfg.get("architecture") or type(net).__name__)
    m.fixed_size = fixed_size(m)
    return m


def _input_size(net: nn.Module, size) -> tuple[int, int]:
    """The size the network was built for: its patch embedding's (a ViT built with img_size=64
    keeps the cfg's 224), else the cfg's."""
    built = getattr(getattr(net, "patch_embed", None), "img_size", None)
    return tuple(built) if built is not None else tuple(size[-2:])


def fixed_size(m) -> bool:
    """Whether the network takes only `m.input_size`.

    timm's patch embeddings say so (`strict_img_size`, unless the network was built with
    `dynamic_img_size`); other architectures fix the size elsewhere (LeViT's and
    EfficientFormer's attention biases are sized for one grid), so one image of another size
    (one 32-pixel step larger) is run without gradients: a network that refuses it is fixed.
    """
    net = m.module
    if getattr(net, "dynamic_img_size", False):
        return False
    if getattr(getattr(net, "patch_embed", None), "strict_img_size", False):
        return True
    h, w = m.input_size

    def runs(side_h: int, side_w: int) -> bool:
        try:
            with session(m), torch.no_grad():
                net(torch.zeros(1, m.channels or 3, side_h, side_w, device=m.device))
        except Exception:  # whatever the network raises at a size it does not take
            return False
        return True
    # built for another size than its cfg says (LeViT with img_size=...): which one is not
    # known here, so nothing is resized (give Model(..., input_size=, fixed_size=True))
    return runs(h, w) and not runs(h + 32, w + 32)


def load_timm(name: str, weights):
    """timm's `name` built with `pretrained=False`, its weights from `weights` (a file) or random."""
    timm = _timm()
    if weights == "default":
        raise FastvizError(f"weights: timm:{name} has no weights on this machine that fastviz may use "
                           f"(nothing is downloaded): pass weights=PATH (safetensors or a state dict) "
                           f"or weights=None for random weights")
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FastvizError(f"name: timm has no model {name!r}{hint}")
    net = timm.create_model(name, pretrained=False)
    if weights is not None:
        from .models import _load_into
        _load_into(net, read_weights(weights))  # another network's file: what does not fit
    net.eval()
    return from_timm(net, name)


def read_weights(path) -> dict:
    """A state dict from a .safetensors file or a torch file (read with weights_only=True)."""
    if not isinstance(path, (str, os.PathLike)):
        raise FastvizError(f"weights: expected a path, 'default' or None, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FastvizError(f"weights: no such file {str(p)!r}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(p))
        except Exception as e:  # a corrupt file
            raise FastvizError(f"weights: could not read {str(p)!r} as safetensors ({e})") from None
    from .models import _load_state_dict
    return _load_state_dict(p)


__all__ = ["PREFIX", "from_timm", "load_timm", "read_weights"]
