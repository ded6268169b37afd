"""Gradient attribution: saliency, guided backprop, deconvnet, input x gradient, neuron gradients.

Each function is one forward and one backward to the image, batched (one target per row),
with the network's parameters frozen so that no weight gradient is computed; gradients are
with respect to the [0, 1] image (the model wrapper normalises).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from . import budget, checks
from .errors import FastvizError
from .explain import check_logits, prepare, target_scores
from .guided import deconvnet as _deconv_rule
from .guided import guided as _guide
from .hooks import session
from .lower import lowered
from .targets import Neuron, class_targets

Target = int | Sequence[int] | torch.Tensor | Neuron | None


@torch.no_grad()
def predict(model, x, *, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-k classes per image.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        k: how many classes per image.

    Returns:
        For each image, k tuples (class index, label, probability), most probable first.

    Example:
        >>> predict(load_model(), load_images(sample_images()["chelsea"]))[0][0][:2]
        (285, 'Egyptian cat')
    """
    m, x = prepare(model, x)
    k = checks.positive_int(k, "k", m.num_classes)
    step = budget.rows(m, x, grad=False, total=x.shape[0])  # rows per forward within the budget

    def top(xs, _):
        with session(m):
            logits = check_logits(m(xs))
        if k > logits.shape[1]:
            raise FastvizError(f"k: expected 1 <= k <= {logits.shape[1]}, got {k}")
        prob, idx = logits.float().softmax(1).topk(k, dim=1)
        labels = m.labels or [str(i) for i in range(logits.shape[1])]
        return [[(int(i), labels[int(i)], float(p)) for i, p in zip(ri, rp)]
                for ri, rp in zip(idx.cpu(), prob.cpu())]
    return budget.by_rows(top, x, None, step)


def gradient(model, x, target: Target = None, *, guided: bool = False, deconv: bool = False,
             lower: bool = False, guided_relu: bool | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """d score / d image for one target per row: the engine of every gradient map.

    Args:
        model: `Model` or nn.Module.
        x: (B, C, H, W) images in [0, 1].
        target: class index (int, list, tensor; None = top-1 per row) or a `Neuron`.
        guided: backpropagate through `GuidedReLU` (guided backprop).
        deconv: backpropagate through `DeconvReLU` (deconvnet); not with guided.
        lower: go through the lowered copy (`fastviz.lower`: BN folded, channels_last): faster,
            equal up to fp32 rounding amplified by depth (docs/performance.md gives the error).

    Returns:
        ((B, C, H, W) gradient, (B,) class targets used, or None for a Neuron).

    `guided_relu=` is the old name of `guided=` (deprecated; it warns).
    """
    guided = checks.renamed(guided_relu, guided, "guided_relu", "guided", False)
    if not isinstance(guided, bool):
        raise FastvizError(f"guided: expected True or False, got {guided!r:.60}")
    if not isinstance(deconv, bool):
        raise FastvizError(f"deconv: expected True or False, got {deconv!r:.60}")
    if guided and deconv:
        raise FastvizError("guided, deconv: pick one backward rule, got both")
    return _gradient(model, x, target, guided, deconv, lower)


def _gradient(model, x, target, guided: bool, deconv: bool, lower: bool, reduce=None):
    """`gradient` after its flags are checked, in chunks of images that fit the memory budget
    (`fastviz.budget`); `reduce(g)` maps each chunk's gradient to what the caller keeps."""
    m, x = prepare(model, x)
    neuron = target if isinstance(target, Neuron) else None
    if neuron is not None:
        m.layer(neuron.layer)
    elif m.num_classes is not None:
        class_targets(target, x.shape[0], m.num_classes)  # refused before the forward
    B, C, H, W = x.shape
    kept = B * (H * W if reduce is not None else C * H * W) * x.element_size()
    budget.check_output(kept, x.device, "x", f"{B} maps of {H}x{W}")
    step = budget.rows(m, x, grad=True, total=B, fixed=kept)
    if lower:
        # Deconvnet replaces the activation's backward: it needs the activation modules to run it.
        m = lowered(m, x, keep=[neuron.layer] if neuron is not None else (), activations=not deconv)
    with session(m, no_inplace=deconv) as s:
        if guided and _guide(s) == 0:
            warnings.warn(f"{m.name} has no activation module (ReLU, ReLU6, GELU, SiLU, ...): guided backprop equals "
                          f"the plain gradient", stacklevel=4)
        if deconv and _deconv_rule(s) == 0:
            warnings.warn(f"{m.name} has no activation module (ReLU, ReLU6, GELU, SiLU, ...): deconvnet equals "
                          f"the plain gradient", stacklevel=4)

        def rows(xs, ts):
            xi = xs.detach().requires_grad_(True)
            if neuron is not None:
                acts, _ = s.forward(xi, [neuron.layer])
                score, used = neuron.value(acts[neuron.layer]), None
            else:
                score, used = target_scores(m, m(xi), ts)
            (g,) = torch.autograd.grad(score.sum(), xi)
            return (g if reduce is None else reduce(g)), used
        return budget.by_rows(rows, x, target, step)


def saliency(model, x, target: Target = None, *, lower: bool = False) -> torch.Tensor:
    """Saliency map (Simonyan et al. 2014): max over channels of |d score / d pixel|.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row (int, list, tensor), None for each row's top-1, or a `Neuron`.
        lower: use the lowered copy of the network (see `gradient`); default: the exact network.

    Returns:
        (B, H, W) non-negative map.

    Raises:
        FastvizError: bad images, a class outside [0, classes), a target list of the wrong length.

    Example:
        >>> saliency(load_model(), torch.rand(2, 3, 224, 224), target=[285, 967]).shape
        torch.Size([2, 224, 224])
    """
    if not isinstance(lower, bool):
        raise FastvizError(f"lower: expected True or False, got {lower!r:.60}")
    return _gradient(model, x, target, False, False, lower, reduce=lambda g: g.abs().amax(1))[0]


def guided_backprop(model, x, target: Target = None, *, lower: bool = False) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015) of a class score or a `Neuron`.

    Args:
        model: `Model` or nn.Module; its nn.ReLU and nn.ReLU6 modules are guided (see `fastviz.guided`).
        x: (B, 3, H, W) images in [0, 1].
        target: class per row, None for top-1, or a `Neuron`.
        lower: use the lowered copy of the network (see `gradient`); default: the exact network.

    Returns:
        (B, 3, H, W) signed gradient; `fastviz.image.normalize(g, "signed")` shows it.
    """
    g, _ = gradient(model, x, target, guided=True, lower=lower)
    return g


def deconvnet(model, x, target: Target = None, *, lower: bool = False) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): backward where every ReLU / ReLU6 passes relu(gradient).

    Unlike guided backprop, the forward input of the activation plays no part in the backward;
    max-pooling routes the gradient through its switches, as its ordinary backward does.

    Args:
        model: `Model` or nn.Module; its nn.ReLU and nn.ReLU6 modules take the deconvnet rule.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row, None for top-1, or a `Neuron`.
        lower: use the lowered copy of the network (see `gradient`; the activations keep their
            own modules there, since the deconvnet rule replaces their backward).

    Returns:
        (B, 3, H, W) signed image; `fastviz.image.normalize(g, "signed")` shows it.

    Example:
        >>> deconvnet(load_model(), torch.rand(2, 3, 224, 224), target=285).shape
        torch.Size([2, 3, 224, 224])
    """
    g, _ = gradient(model, x, target, deconv=True, lower=lower)
    return g


def input_x_gradient(model, x, target: Target = None, *, lower: bool = False) -> torch.Tensor:
    """Input x gradient (Shrikumar et al. 2016): the image times d score / d image.

    The image is the [0, 1] one the user gave (the gradient too is with respect to it), so a
    black pixel gets zero attribution whatever the network does with it.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row, None for top-1, or a `Neuron`.
        lower: use the lowered copy of the network (see `gradient`).

    Returns:
        (B, 3, H, W) signed attribution.
    """
    m, xd = prepare(model, x)
    g, _ = gradient(m, xd, target, lower=lower)
    return xd * g


def neuron_gradient(model, x, neuron: Neuron, *, guided: bool = False, lower: bool = False) -> torch.Tensor:
    """Gradient of one intermediate unit with respect to the image, plain or guided.

    The forward stops at the neuron's layer.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        neuron: the unit (`Neuron(layer, channel, y, x)`; y, x None = centre).
        guided: guided backprop instead of the plain gradient.
        lower: use the lowered copy of the network (see `gradient`); default: the exact network.

    Returns:
        (B, 3, H, W) gradient.
    """
    if not isinstance(neuron, Neuron):
        raise FastvizError(f"neuron: expected fastviz.Neuron, got {type(neuron).__name__}")
    g, _ = gradient(model, x, neuron, guided=guided, lower=lower)
    return g
