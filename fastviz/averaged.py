"""Gradients averaged over many inputs: SmoothGrad and integrated gradients.

Both evaluate the gradient of one class logit with respect to the image at B x n points (noisy
copies, or points on a path). The points of several images and samples are stacked into one
batch of up to `batch_size` rows, one forward and one `torch.autograd.grad` per chunk, with the
network's parameters frozen (no weight gradient is ever computed). The target of each image is
resolved once, from the clean image (top-1 where `target` is None), and reused by every row.
Everything stays on the device: noise comes from a `torch.Generator` on the image's device,
gradients are accumulated with `index_add_`, and nothing is copied to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import budget, checks
from .errors import FastvizError
from .explain import check_class_target, check_logits, prepare, resolve_targets, to_device
from .hooks import session
from .lower import lowered
from .models import Model
from .targets import positive_int

__all__ = ["IGResult", "integrated_gradients", "smoothgrad"]

IG_METHODS = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")

# (first row, rows) -> standard normal noise (rows, C, H, W) for those rows.
NoiseSource = Callable[[int, int], torch.Tensor]


# -- the engine -----------------------------------------------------------------------------
SMOOTH = "SmoothGrad and integrated gradients"


def _prepared(model, x, target, lower, batch_size: int, held: int
              ) -> tuple[Model, torch.Tensor, int]:
    """(model, images, rows per forward + backward) checked once, the model lowered when asked
    (target refused first). `held` image-sized tensors live through the call (accumulator,
    result, baseline ...): refused if they do not fit the memory budget; `batch_size` is lowered
    to the rows that fit beside them (`fastviz.budget`)."""
    if not isinstance(lower, bool):
        raise FastvizError(f"lower: expected True or False, got {lower!r:.60}")
    m, x = prepare(model, x)
    check_class_target(m, x, target, SMOOTH)
    B, _, H, W = x.shape
    kept = held * x.numel() * x.element_size()
    budget.check_output(kept, x.device, "x", f"{held} tensors the size of {B} images of {H}x{W}")
    # each row also holds its input (a noisy copy, a path point) and its weighted gradient
    step = budget.rows(m, x, grad=True, total=batch_size, fixed=kept,
                       per_row_extra=2 * x[:1].numel() * x.element_size(), name="x",
                       what="one image")
    return (lowered(m, x) if lower else m), x, step


@torch.no_grad()
def _logits(m: Model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, classes) logits without gradients, `batch_size` rows per forward."""
    return torch.cat([check_logits(m(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def _row_gradients(m: Model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d input for a chunk of rows: one forward, one backward to the input."""
    xi = inputs.requires_grad_(True)
    score = m(xi).gather(1, targets[:, None])
    (g,) = torch.autograd.grad(score.sum(), xi)
    return g


def _smoothgrad_mean(m: Model, x: torch.Tensor, targets: torch.Tensor, n: int, sigma: torch.Tensor,
                     squared: bool, batch_size: int, noise: NoiseSource) -> torch.Tensor:
    """(B, C, H, W) mean over n noisy copies of the gradient (or of its square).

    Row r = b * n + s is sample s of image b: x[b] + sigma[b] * noise(r).
    """
    B = x.shape[0]
    acc = torch.zeros_like(x)
    for i in range(0, B * n, batch_size):
        j = min(i + batch_size, B * n)
        image = torch.arange(i, j, device=x.device) // n
        inputs = torch.addcmul(x.index_select(0, image), sigma.index_select(0, image).view(-1, 1, 1, 1),
                               noise(i, j - i))
        g = _row_gradients(m, inputs, targets.index_select(0, image))
        acc.index_add_(0, image, g * g if squared else g)
    return acc / n


def _generator_noise(x: torch.Tensor, seed: int | None) -> NoiseSource:
    gen = torch.Generator(device=x.device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    shape = x.shape[1:]
    per_row = shape.numel()
    # Each row draws a whole number of 16-value blocks (torch's CPU normal sampler transforms
    # 16 values at a time), so on the CPU a row's noise is the same however rows fall into
    # chunks: a budget that lowers batch_size leaves the map as it was.
    padded = -(-per_row // 16) * 16
    if padded == per_row:
        return lambda _first, rows: torch.randn((rows, *shape), generator=gen, device=x.device,
                                                dtype=x.dtype)
    return lambda _first, rows: torch.randn((rows, padded), generator=gen, device=x.device,
                                            dtype=x.dtype)[:, :per_row].reshape(rows, *shape)


def smoothgrad(model, x, target=None, *, n: int = 25, noise: float = 0.15, squared: bool = False,
               batch_size: int = 32, seed: int | None = 0, lower: bool = False) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the class gradient averaged over noisy copies of the image.

    Each image b gets n copies x_b + e, e ~ N(0, sigma_b^2) per pixel and channel, with
    sigma_b = noise * (max(x_b) - min(x_b)); copies are not clipped to [0, 1]. g_s is the
    gradient of the target logit at copy s. The map is, per pixel,
    plain: max over channels of |(1/n) sum_s g_s|; squared: max over channels of (1/n) sum_s g_s^2.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row (int, list, tensor) or None for each image's top-1 on the clean image.
        n: noisy copies per image.
        noise: noise level (0 gives n times the plain gradient's |g|).
        squared: average g^2 instead of g (SmoothGrad-Squared).
        batch_size: rows per forward + backward; B x n rows run in ceil(B n / batch_size) chunks.
        seed: seed of the device generator (0 by default, as every fastviz call: the same call
            gives the same map; None: a fresh random seed). On the CPU the noise drawn for a row
            depends on the seed alone, not on how rows fall into chunks (batch_size, or the
            memory budget); on a GPU it also depends on the chunks.
        lower: use the lowered copy of the network (`fastviz.attribution.gradient` says what
            that changes); default: the exact network.

    Returns:
        (B, H, W) non-negative map.

    Raises:
        FastvizError: bad images, class out of range, n < 1, noise < 0, batch_size < 1.

    Example:
        >>> smoothgrad(load_model(), torch.rand(2, 3, 224, 224), n=4, seed=0).shape
        torch.Size([2, 224, 224])
    """
    n = checks.positive_int(n, "n", 10 ** 6)
    batch_size = positive_int(batch_size, "batch_size")
    noise = checks.number(noise, "noise", 0, 100)
    seed = checks.seed(seed, allow_none=True)
    if not isinstance(squared, bool):
        raise FastvizError(f"squared: expected True or False, got {squared!r:.60}")
    m, x, batch_size = _prepared(model, x, target, lower, batch_size, 3)
    flat = x.flatten(1)
    sigma = noise * (flat.amax(1) - flat.amin(1))
    with session(m):
        targets = resolve_targets(m, _logits(m, x, batch_size), target)
        mean = _smoothgrad_mean(m, x, targets, n, sigma, squared, batch_size,
                                _generator_noise(x, seed))
    return (mean if squared else mean.abs()).amax(1)


# -- integrated gradients ---------------------------------------------------------------------
@dataclass
class IGResult:
    """What `integrated_gradients` returns.

    Attributes:
        attributions: (B, 3, H, W) (x - baseline) * the path-averaged gradient.
        completeness_error: (B,) |sum(attributions) - score_difference|, the error of the
            quadrature (Sundararajan et al.'s completeness axiom holds exactly in the limit).
        score_difference: (B,) F(x) - F(baseline), the target logit at the image minus at the baseline.
        targets: (B,) class explained per image.
    """

    attributions: torch.Tensor
    completeness_error: torch.Tensor
    score_difference: torch.Tensor
    targets: torch.Tensor


IG_SPACINGS = ("cubic", "uniform")


def ig_alphas(points: int, method: str, spacing: str = "cubic") -> tuple[list[float], list[float]]:
    """Points alpha on [0, 1] and their quadrature weights for `points` gradient evaluations.

    The rule is applied to t in [0, 1]: riemann_left: t = k/m, k = 0..m-1; riemann_right:
    k = 1..m; riemann_middle: t = (k + 1/2)/m, all with weight 1/m; trapezoid: t = k/(m-1),
    k = 0..m-1, weights 1/(m-1) with both ends halved (needs m >= 2).
    spacing "uniform": alpha = t. "cubic": alpha = t^3 (the same straight path, reparametrised),
    weights times d alpha / dt = 3 t^2, rescaled to sum to 1 so a constant gradient is integrated
    exactly. Cubic spacing puts the points near the baseline, where a network's score climbs
    fastest (on EfficientNet-Lite0 the class logit rises by ~8 within alpha < 0.05 of a black
    baseline), which cut the n=64 completeness error about tenfold (docs/attribution_more.md).
    """
    if method not in IG_METHODS:
        raise FastvizError(f"method: expected one of {', '.join(IG_METHODS)}, got {method!r}")
    if spacing not in IG_SPACINGS:
        raise FastvizError(f"spacing: expected one of {', '.join(IG_SPACINGS)}, got {spacing!r}")
    steps = positive_int(points, "points")
    if method == "trapezoid":
        if steps < 2:
            raise FastvizError(f"points: the trapezoid rule needs points >= 2, got {steps}")
        ts = [k / (steps - 1) for k in range(steps)]
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = 0.5 / (steps - 1)
    else:
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        ts, weights = [(k + offset) / steps for k in range(steps)], [1 / steps] * steps
    if spacing == "uniform":
        return ts, weights
    weights = [w * 3 * t * t for t, w in zip(ts, weights)]
    total = sum(weights)
    return [t ** 3 for t in ts], [w / total for w in weights]


def _baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, checks.number(baseline, "baseline"))
    if not isinstance(baseline, torch.Tensor) or not baseline.is_floating_point():
        raise FastvizError(f"baseline: expected None, a number or a float tensor, got {baseline!r:.80}")
    if baseline.numel() > x.numel() or not bool(torch.isfinite(baseline).all()):
        raise FastvizError(f"baseline: expected finite values of shape {tuple(x.shape[1:])}, got "
                           f"shape {tuple(baseline.shape)}" + ("" if baseline.numel() > x.numel()
                                                                else " with NaN or inf"))
    b = baseline.to(x.device, x.dtype)
    if b.dim() == 3:
        b = b[None]
    if b.dim() != 4 or b.shape[0] not in (1, x.shape[0]) or b.shape[1:] != x.shape[1:]:
        raise FastvizError(f"baseline: expected shape {tuple(x.shape[1:])}, (1, ...) or "
                           f"{tuple(x.shape)}, got {tuple(baseline.shape)}")
    return b.expand_as(x)


def integrated_gradients(model, x, target=None, *, baseline=None, points: int = 50,
                         method: str = "trapezoid", batch_size: int = 32,
                         spacing: str = "cubic", lower: bool = False, steps: int | None = None
                         ) -> IGResult:
    """Integrated gradients (Sundararajan et al. 2017) of the target logit along a straight path.

    attributions = (x - x') * sum_k w_k dF/dx(x' + alpha_k (x - x')), with (alpha_k, w_k) from
    `ig_alphas(points, method, spacing)`. The B x points gradient evaluations run in chunks of
    `batch_size` rows; F(x) and F(x') come from one extra no-grad forward of each.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        target: class per row (int, list, tensor) or None for each image's top-1 on x.
        baseline: x' — None (black, zeros), a number (a flat grey), or a tensor (3, H, W),
            (1, 3, H, W) or (B, 3, H, W).
        points: gradient evaluations per image, the points on the path (captum's n_steps).
        method: "trapezoid", "riemann_left", "riemann_right" or "riemann_middle".
        batch_size: rows per forward + backward.
        spacing: "cubic" (default: alpha = t^3, points dense near the baseline) or "uniform"
            (alpha = t, the textbook rule); see `ig_alphas`.
        lower: use the lowered copy of the network for every forward (F(x), F(x') and the
            path), so completeness is measured against the network that made the gradients.
        steps: the old name of `points` (deprecated: in fastviz `steps` are optimisation steps).

    Returns:
        `IGResult` with attributions (B, 3, H, W), completeness_error (B,), score_difference (B,)
        and targets (B,).

    Raises:
        FastvizError: bad images or baseline, class out of range, points < 1 (< 2 for trapezoid),
            unknown method or spacing, batch_size < 1.

    Example:
        >>> r = integrated_gradients(load_model(), torch.rand(1, 3, 224, 224), points=8)
        >>> r.attributions.shape, r.completeness_error.shape
        (torch.Size([1, 3, 224, 224]), torch.Size([1]))
    """
    points = checks.renamed(steps, points, "steps", "points", 50)
    checks.positive_int(points, "points", 10 ** 6)
    alphas, weights = ig_alphas(points, method, spacing)
    batch_size = positive_int(batch_size, "batch_size")
    m, x, batch_size = _prepared(model, x, target, lower, batch_size, 6)
    base = _baseline(baseline, x)
    B = x.shape[0]
    with session(m):
        logits = _logits(m, torch.cat([x, base]), batch_size)
        targets = resolve_targets(m, logits[:B], target)
        ends = logits.gather(1, targets.repeat(2)[:, None])[:, 0]
        difference = ends[:B] - ends[B:]
        path = _path_gradient(m, x, base, targets, alphas, weights, batch_size)
    attributions = (x - base) * path
    error = (attributions.flatten(1).sum(1) - difference).abs()
    return IGResult(attributions, error, difference, targets)


def _path_gradient(m: Model, x: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
                   alphas: list[float], weights: list[float], batch_size: int) -> torch.Tensor:
    """(B, C, H, W) sum_k w_k dF/dx at x' + alpha_k (x - x'); row r = b * steps + k."""
    B, steps = x.shape[0], len(alphas)
    alpha, weight = to_device(torch.tensor([alphas, weights], dtype=x.dtype), x.device)
    diff = x - base
    acc = torch.zeros_like(x)
    for i in range(0, B * steps, batch_size):
        rows = torch.arange(i, min(i + batch_size, B * steps), device=x.device)
        image, step = rows // steps, rows % steps
        inputs = torch.addcmul(base.index_select(0, image),
                               alpha.index_select(0, step).view(-1, 1, 1, 1), diff.index_select(0, image))
        g = _row_gradients(m, inputs, targets.index_select(0, image))
        acc.index_add_(0, image, g * weight.index_select(0, step).view(-1, 1, 1, 1))
    return acc
