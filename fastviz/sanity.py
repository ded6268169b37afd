"""Does the map explain the model? The cascading randomisation check (Adebayo et al. 2018).

A map that explains a network must change when the network's weights are destroyed; one that
stays the same describes the image (edges, contrast), whatever the network learned.
`randomization_check` re-initialises a private copy of the network from the top down, stage by
stage, and compares each stage's map with the trained network's by Spearman rank correlation.
Any attribution method takes part by name (`METHODS`) or as a callable (model, x, target) -> map.
The checks that perturb the image instead (deletion, insertion, ROAD) are in `fastviz.metrics`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import checks
from .errors import FastvizError
from .explain import prepare, resolve_targets
from .hooks import session
from .models import Model

__all__ = ["RandomizationResult", "randomization_check", "spearman", "default_stages", "map_method",
           "METHODS"]


def _map_methods() -> dict[str, Callable]:
    from . import attribution, averaged, cam, relevance

    def reduce(f):
        return lambda m, x, t: f(m, x, t).abs().amax(1)

    return {
        "saliency": attribution.saliency,
        "guided_backprop": reduce(attribution.guided_backprop),
        "deconvnet": reduce(attribution.deconvnet),
        "input_x_gradient": reduce(attribution.input_x_gradient),
        "gradcam": lambda m, x, t: cam.gradcam(m, x, t),
        "smoothgrad": lambda m, x, t: averaged.smoothgrad(m, x, t, seed=0),
        "integrated_gradients": lambda m, x, t: averaged.integrated_gradients(m, x, t)
        .attributions.abs().amax(1),
        "lrp": lambda m, x, t: relevance.lrp(m, x, t).maps,
    }


# name -> (model, x, target) -> (B, H, W) map; CLI aliases: guided, ig, ixg.
METHODS = tuple(_map_methods())
ALIASES = {"guided": "guided_backprop", "ig": "integrated_gradients", "ixg": "input_x_gradient",
           "input-x-gradient": "input_x_gradient"}


def map_method(method) -> Callable:
    """A method name (or alias) or a callable (model, x, target) -> map, as a callable."""
    if callable(method):
        return method
    name = ALIASES.get(method, method)
    methods = _map_methods()
    if name not in methods:
        raise FastvizError(f"method: expected one of {', '.join(METHODS)} or a callable, got {method!r}")
    return methods[name]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row (average ranks for ties; NaN where a row is constant).

    Args:
        a, b: (B, ...) maps.

    Returns:
        (B,) float64 correlations, on the CPU.
    """
    from scipy.stats import rankdata

    ra = rankdata(a.detach().flatten(1).cpu().double().numpy(), axis=1)
    rb = rankdata(b.detach().flatten(1).cpu().double().numpy(), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return torch.from_numpy(r)


def default_stages(net: nn.Module) -> list[str]:
    """Top-level children with parameters (ModuleList / Sequential opened one level), top first.

    EfficientNet-Lite0: _fc, _bn1, _conv_head, _blocks.15, ..., _blocks.0, _bn0, _conv_stem;
    torchvision ResNet: fc, layer4.1, layer4.0, ..., layer1.0, bn1, conv1.
    """
    out = []
    for name, child in net.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            out += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            out.append((name, child))
    return [n for n, c in out if next(c.parameters(), None) is not None][::-1]


@dataclass
class RandomizationResult:
    """The cascading randomisation check (Adebayo et al. 2018) per image.

    stages: the module names, top first; stage i has every module up to and including it
        re-initialised.
    similarity: (B, S) Spearman rank correlation of each stage's |map| with the original's.
    original: (B, H, W) the trained network's map.
    randomized: (B, S, H, W) the maps after each stage.
    targets: (B,) the class explained (the trained network's, kept at every stage).
    """

    stages: list[str]
    similarity: torch.Tensor
    original: torch.Tensor
    randomized: torch.Tensor
    targets: torch.Tensor


def randomization_check(model, x, method="guided_backprop", *, target=None,
                        stages: Sequence[str] | None = None, seed: int = 0) -> RandomizationResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks").

    A deep copy of the network (never the user's) has its modules re-initialised from the top
    down (`reset_parameters()` of every submodule; BatchNorm statistics reset too), one stage at
    a time, cumulatively; after each stage the map is drawn again for the same class and compared
    with the trained network's map by Spearman rank correlation of |map|. A map that explains the
    network should decorrelate fast; one that stays high is describing the image, not the model.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        method: one of `METHODS` (aliases guided, ig, ixg) or a callable (model, x, target) ->
            (B, H, W) or (B, C, H, W) map.
        target: class per image, or None for the trained network's top-1.
        stages: module names to re-initialise in order (default `default_stages`).
        seed: seed of the re-initialisation.

    Returns:
        `RandomizationResult`: similarity (B, S), maps, stage names.

    Example:
        >>> r = randomization_check(load_model(), x, "saliency"); r.similarity.shape
        torch.Size([1, 21])
    """
    fn = map_method(method)
    seed = checks.seed(seed, "seed")
    m, x = prepare(model, x)
    if stages is not None:
        if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages \
                or not all(isinstance(n, str) for n in stages):
            raise FastvizError(f"stages: expected a non-empty list of module names, got {stages!r:.80}")
        for n in stages:
            try:
                m.layer(n)
            except FastvizError as e:
                raise FastvizError(f"stages: {e}") from None
    with session(m), torch.no_grad():
        targets = resolve_targets(m, m(x), target)

    def draw(model_):
        out = fn(model_, x, targets)
        if out.dim() == 4:
            out = out.abs().amax(1)
        return out.abs().detach()

    original = draw(m)
    net = copy.deepcopy(m.module)
    twin = Model(net, m.mean, m.std, m.input_size, m.labels, m.name, output=m.output, fixed_size=m.fixed_size)
    names = list(stages) if stages is not None else default_stages(net)
    if not names:
        raise FastvizError("stages: the model has no module with parameters to randomise")
    modules = [twin.layer(n) for n in names]
    maps = []
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in modules:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
            maps.append(draw(twin).cpu())
    randomized = torch.stack(maps, 1)
    original = original.cpu()
    sim = torch.stack([spearman(original, randomized[:, i]) for i in range(len(names))], 1)
    return RandomizationResult(names, sim, original, randomized, targets.cpu())
