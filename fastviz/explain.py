"""The plumbing every explanation method shares: inputs, targets, logits, min-max.

Gradient maps (`attribution`), CAMs (`cam`), averaged maps (`averaged`), metrics (`metrics`),
the randomisation check (`sanity`) and the synthesis calls that start from photos (`render`)
all begin the same way: wrap the model, check the images and move them to the model's device
(`prepare`); refuse a bad class target before any forward (`check_class_target`); read the
network's output as (B, classes) logits (`check_logits`); explain the given class per row or
each row's top-1 (`resolve_targets`, `target_scores`). Maps are normalised per image by
`fastviz.image.minmax`. One home, so one method family never imports another for plumbing.
"""

from __future__ import annotations

import torch

from . import budget
from .errors import FastvizError
from .io import check_images
from .models import Model, as_model
from .targets import Neuron, class_targets


def prepare(model, x, name: str = "x") -> tuple[Model, torch.Tensor]:
    """The wrapped model and a validated image batch on the model's device.

    The images go through `fastviz.checks.images` (conversion rules there); pixels outside
    [0, 1] are refused when the model normalises its input (a `Model` with mean / std).
    Images smaller than the network takes are refused naming `name` and the smallest side
    (`fastviz.budget.profile`: one image through the network once per shape, cached).

    Returns:
        (Model, (B, C, H, W) images on the model's device, float32, or float64 for a float64
        network: `Model.dtype`).
    """
    m = as_model(model)
    x = check_images(x, m.channels, name, check_range=m.mean is not None, dtype=m.dtype)
    x = x.to(m.device, m.dtype)
    budget.profile(m, x, name)
    return m, x


def check_class_target(m: Model, x: torch.Tensor, target, method: str = "this method"):
    """Refuse, before any hook or forward, a target that is not a class (a `Neuron`) or a class
    index out of range when the class count is known. Returns `target` unchanged."""
    if isinstance(target, Neuron):
        raise FastvizError(f"target: {method} explains a class score; got a Neuron "
                           f"(use neuron_gradient for one unit)")
    if m.num_classes is not None:
        class_targets(target, x.shape[0], m.num_classes)
    return target


def check_logits(logits) -> torch.Tensor:
    """The network's output as (B, classes) logits, or a FastvizError saying what came instead."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise FastvizError(f"model: expected logits (B, classes), got {shape}")
    return logits


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto the device without a host sync (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def resolve_targets(m: Model, logits: torch.Tensor, target) -> torch.Tensor:
    """(B,) class per row on the logits' device: the given ones, or each row's top-1.

    target: None (top-1), an int (every row) or one class per row (list, tensor, array).
    """
    logits = check_logits(logits)
    t = class_targets(target, logits.shape[0], m.num_classes or logits.shape[1])
    return logits.detach().argmax(1) if t is None else to_device(t, logits.device)


def target_scores(m: Model, logits: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) logit of each row's class, (B,) the classes): `resolve_targets`, then gather."""
    t = resolve_targets(m, logits, target)
    return logits.gather(1, t[:, None]).squeeze(1), t
