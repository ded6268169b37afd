"""Which map to trust, by perturbing the image: deletion / insertion (RISE) and ROAD.

Every metric is a function of (model, images, maps) that returns per-image numbers and the
curve they summarise. The perturbations are small functions of their own (`pixel_ranks`,
`mix`, `removed_count`, `noisy_linear_impute`), tested alone. All the perturbed images of a
batch of curves are rows of a few large no-grad forwards (`batch_size` rows each), with the
parameters frozen inside `fastviz.hooks.session`, on the model's device; the only host work is
ROAD's sparse solve (scipy, CPU) and the final copy of the numbers. The other trust check,
which perturbs the model instead, is `fastviz.sanity.randomization_check`.

Maps are (B, H, W) at the image's size, higher = more relevant; a (B, C, H, W) map (guided
backprop, deconvnet, input x gradient) is reduced to max over channels of |map|, as saliency is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import budget, checks
from .errors import FastvizError
from .explain import check_logits, prepare, resolve_targets
from .hooks import session
from .models import Model
from .targets import positive_int

__all__ = ["CurveResult", "ROADResult", "deletion", "insertion", "road", "pixel_ranks", "mix",
           "removed_count", "noisy_linear_impute"]

SCORES = ("probability", "logit")


# -- checks and shared pieces -----------------------------------------------------------------
def _check_maps(maps, x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float relevance on x's device from a (B, H, W) or (B, C, H, W) map."""
    if not isinstance(maps, torch.Tensor):
        raise FastvizError(f"maps: expected a tensor (B, H, W), got {type(maps).__name__}")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise FastvizError(f"maps: expected a real-valued tensor, got dtype {maps.dtype}")
    if maps.dim() == 4:
        maps = maps.abs().amax(1)
    B, _, H, W = x.shape
    if maps.shape != (B, H, W):
        raise FastvizError(f"maps: expected shape {(B, H, W)} (one map per image at its size), "
                           f"got {tuple(maps.shape)}")
    maps = maps.to(x.device, torch.float32)
    if not torch.isfinite(maps).all():
        raise FastvizError("maps: contain NaN or inf")
    return maps


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise FastvizError(f"score: expected one of {SCORES}, got {score!r}")
    return score


@torch.no_grad()
def _scores(m: Model, rows: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """(N,) probability or logit of each row's target class: one forward."""
    logits = check_logits(m(rows))
    out = logits.float().softmax(1) if score == "probability" else logits.float()
    return out.gather(1, targets[:, None]).squeeze(1)


@torch.no_grad()
def classes_to_explain(m: Model, x: torch.Tensor, target, step: int | None = None) -> torch.Tensor:
    """(B,) classes on x's device: the given ones, or each clean image's top-1 (forwards of
    `step` images, default: as many as fit the memory budget)."""
    step = step or budget.rows(m, x, grad=False, total=x.shape[0])
    logits = torch.cat([check_logits(m(x[i:i + step])) for i in range(0, x.shape[0], step)])
    return resolve_targets(m, logits, target)


def _fitting(m: Model, x: torch.Tensor, batch_size: int, held: int) -> int:
    """`batch_size` lowered to the perturbed rows that fit the memory budget beside `held` bytes
    (each row also holds its perturbed image and the two it was mixed from)."""
    B, _, H, W = x.shape
    budget.check_output(held, x.device, "x", f"the perturbed images of {B} images of {H}x{W}")
    return budget.rows(m, x, grad=False, total=batch_size, fixed=held,
                       per_row_extra=3 * x[:1].numel() * x.element_size(), what="one perturbed image")


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel by relevance: 0 = most relevant; ties keep raster order.

    Args:
        maps: (B, H, W) relevance.

    Returns:
        (B, H*W) int64 ranks, a permutation of 0..H*W-1 per row.
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def mix(x: torch.Tensor, substrate: torch.Tensor, ranks: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Row r: the pixels of rank < k[r] taken from `substrate`, the others from `x`.

    Deletion is mix(image, black, ranks, k); insertion is mix(blurred, image, ranks, k).

    Args:
        x, substrate: (N, C, H, W).
        ranks: (N, H*W) from `pixel_ranks`.
        k: (N,) pixels to take from `substrate` per row.

    Returns:
        (N, C, H, W).
    """
    N, _, H, W = x.shape
    take = (ranks < k[:, None]).view(N, 1, H, W)
    return torch.where(take, substrate, x)


def removed_count(pixels: int, percent: float) -> int:
    """How many pixels ROAD removes at `percent`, by numpy's (linear) percentile of the map.

    pytorch-grad-cam keeps the pixels strictly below `np.percentile(map, 100 - percent)` (most
    relevant first): ceil((N - 1) (100 - percent) / 100) of them, on a map without ties.
    """
    kept = math.ceil((pixels - 1) * (100.0 - percent) / 100.0 - 1e-9)
    return pixels - kept


# The weights of the 8 neighbours in ROAD's noisy linear imputation (Rong et al. 2022).
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
              ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.0,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """ROAD's imputation: each removed pixel = the weighted mean of its 8 neighbours (+ noise).

    The removed pixels are the unknowns of one sparse linear system (SPD where every connected
    region of removed pixels touches a kept one), solved by scipy's sparse LU for all channels at
    once; neighbours outside the image drop out of the mean. Linear, and it keeps constants, so
    imputing [0, 1] pixels and normalising afterwards equals imputing normalised pixels (a
    per-channel affine map of the values); exact on planes away from the border.

    Args:
        image: (C, H, W) float array.
        removed: (H, W) bool array, True where the pixel is imputed.
        noise: standard deviation of Gaussian noise added to each imputed value (image units).
        rng: numpy generator for the noise.

    Returns:
        (C, H, W) float64 array: kept pixels as they were, removed ones imputed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = image.shape
    flat = image.reshape(C, -1).astype(np.float64)
    gone = removed.reshape(-1).astype(bool)
    idx = np.flatnonzero(gone)
    out = flat.copy()
    if idx.size == 0:
        return out.reshape(C, H, W)
    if idx.size == gone.size:
        raise FastvizError("percentiles: 100% removed leaves ROAD nothing to impute from")
    var = np.full(gone.size, -1, dtype=np.int64)
    var[idx] = np.arange(idx.size)
    y0, x0 = np.divmod(idx, W)
    diag = np.zeros(idx.size)
    rhs = np.zeros((idx.size, C))
    rows, cols, vals = [], [], []
    for (dy, dx), w in NEIGHBOURS:
        y, xx = y0 + dy, x0 + dx
        ok = (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
        diag[ok] += w
        eq, j = np.flatnonzero(ok), (y * W + xx)[ok]
        unknown = gone[j]
        rows.append(eq[unknown])
        cols.append(var[j[unknown]])
        vals.append(np.full(unknown.sum(), -w))
        rhs[eq[~unknown]] += w * flat[:, j[~unknown]].T
    rows.append(np.arange(idx.size))
    cols.append(np.arange(idx.size))
    vals.append(diag)
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(idx.size, idx.size)).tocsc()
    sol = spsolve(A, rhs).reshape(idx.size, C)
    if noise:
        rng = rng or np.random.default_rng()
        sol = sol + noise * rng.standard_normal(sol.shape)
    out[:, idx] = sol.T
    return out.reshape(C, H, W)


def _blur(x: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: a Gaussian blur (kernel 11, sigma 5), on the device."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


# -- deletion and insertion --------------------------------------------------------------------
@dataclass
class CurveResult:
    """A deletion or insertion curve per image.

    auc: (B,) area under the curve over the fraction of pixels moved (trapezoid, x in [0, 1]).
    curve: (B, steps + 1) target score after moving each fraction.
    fractions: (steps + 1,) fraction of pixels moved, 0 to 1.
    targets: (B,) class scored.
    """

    auc: torch.Tensor
    curve: torch.Tensor
    fractions: torch.Tensor
    targets: torch.Tensor


def _curve(model, x, maps, target, points, score, batch_size, start_fn, end_fn) -> CurveResult:
    m, x = prepare(model, x)
    maps = _check_maps(maps, x)
    steps = checks.positive_int(points, "points", high=100_000)
    batch_size = positive_int(batch_size, "batch_size")
    score = _check_score(score)
    B, _, H, W = x.shape
    S = steps + 1
    # start and end images, pixel ranks (int64): held through the call
    batch_size = _fitting(m, x, batch_size, 2 * x.numel() * x.element_size() + B * H * W * 8)
    fractions = torch.linspace(0, 1, S)
    counts = (fractions * H * W).round().long().to(x.device)
    ranks = pixel_ranks(maps)
    with session(m):
        targets = classes_to_explain(m, x, target, batch_size)
        start, end = start_fn(x), end_fn(x)
        out = []
        for i in range(0, B * S, batch_size):
            r = torch.arange(i, min(i + batch_size, B * S), device=x.device)
            b, s = r // S, r % S
            rows = mix(start.index_select(0, b), end.index_select(0, b), ranks.index_select(0, b),
                       counts.index_select(0, s))
            out.append(_scores(m, rows, targets.index_select(0, b), score))
    curve = torch.cat(out).view(B, S).cpu()
    auc = torch.trapezoid(curve, fractions, dim=1)
    return CurveResult(auc, curve, fractions, targets.cpu())


def _substrate(value, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if value == "blur":
        return _blur
    if not isinstance(value, str):
        v = checks.number(value, name, 0.0, 1.0)
        return lambda x: torch.full_like(x, v)
    raise FastvizError(f"{name}: expected 'blur' or a pixel value in [0, 1], got {value!r}")


def deletion(model, x, maps, *, target=None, points: int = 50, substrate: float | str = 0.0,
             score: str = "probability", batch_size: int = 64, steps: int | None = None) -> CurveResult:
    """RISE deletion (Petsiuk et al. 2018): the target's score as the most relevant pixels go.

    Point s replaces the round(s / points * H * W) most relevant pixels (all channels) by the
    substrate; lower AUC = a more faithful map.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        maps: (B, H, W) relevance (or (B, C, H, W), reduced to max |.| over channels).
        target: class per image, or None for each clean image's top-1.
        points: points of the curve after the first (points + 1 forwards per image).
        substrate: what a deleted pixel becomes: a value in [0, 1] (default 0, black) or "blur".
        score: "probability" (softmax, RISE's) or "logit".
        batch_size: perturbed images per forward (64: forward only, no activations kept for a
            backward, so twice the gradient methods' 32 fits the same memory).
        steps: the old name of `points` (deprecated: in fastviz `steps` are optimisation steps).

    Returns:
        `CurveResult`: auc (B,), curve (B, points + 1), fractions (points + 1,), targets (B,).

    Example:
        >>> x = load_images(sample_images()["chelsea"]); m = load_model()
        >>> deletion(m, x, saliency(m, x), points=20).curve.shape
        torch.Size([1, 21])
    """
    points = checks.renamed(steps, points, "steps", "points", 50)
    return _curve(model, x, maps, target, points, score, batch_size,
                  lambda x: x, _substrate(substrate, "substrate"))


def insertion(model, x, maps, *, target=None, points: int = 50, substrate: float | str = "blur",
               score: str = "probability", batch_size: int = 64, steps: int | None = None) -> CurveResult:
    """RISE insertion: the target's score as the most relevant pixels come back onto a blurred image.

    Point s puts the round(s / points * H * W) most relevant pixels of the image onto the
    substrate (default: Gaussian blur, kernel 11, sigma 5); higher AUC = a more faithful map.

    Args and Returns: as `deletion`.
    """
    points = checks.renamed(steps, points, "steps", "points", 50)
    return _curve(model, x, maps, target, points, score, batch_size,
                  _substrate(substrate, "substrate"), lambda x: x)


# -- ROAD ---------------------------------------------------------------------------------------
@dataclass
class ROADResult:
    """ROAD (Rong et al. 2022) per image: scores after removing each percentile of pixels.

    percentiles: (P,) percent of pixels removed.
    morf: (B, P) target score with the most relevant pixels removed and imputed (low = good).
    lerf: (B, P) ... the least relevant ones removed (high = good).
    clean: (B,) score of the untouched image.
    combined: (B,) mean over percentiles of (lerf - morf) / 2, pytorch-grad-cam's ROADCombined
        (higher = more faithful).
    targets: (B,) class scored.
    """

    percentiles: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    clean: torch.Tensor
    combined: torch.Tensor
    targets: torch.Tensor


def road_images(x: torch.Tensor, maps: torch.Tensor, percentiles: Sequence[float], noise: float = 0.0,
                seed: int | None = 0) -> torch.Tensor:
    """The imputed images of ROAD, on the CPU: (B, 2, P, C, H, W), MoRF then LeRF.

    Args:
        x: (B, C, H, W) images in [0, 1].
        maps: (B, H, W) relevance.
        percentiles: percent of pixels removed, each in [0, 100).
        noise: imputation noise (standard deviation in [0, 1] image units).
        seed: seed of the noise.
    """
    B, C, H, W = x.shape
    ranks = pixel_ranks(maps).cpu().numpy()
    xs = x.detach().cpu().numpy()
    rng = np.random.default_rng(seed)
    out = np.empty((B, 2, len(percentiles), C, H, W), dtype=np.float32)
    for b in range(B):
        for j, p in enumerate(percentiles):
            k = removed_count(H * W, p)
            out[b, 0, j] = noisy_linear_impute(xs[b], (ranks[b] < k).reshape(H, W), noise, rng)
            out[b, 1, j] = noisy_linear_impute(xs[b], (ranks[b] >= H * W - k).reshape(H, W), noise, rng)
    return torch.from_numpy(out)


def road(model, x, maps, *, percentiles: Sequence[float] = range(10, 100, 10), target=None,
         noise: float = 0.005, score: str = "probability", seed: int | None = 0,
         batch_size: int = 64) -> ROADResult:
    """ROAD, RemOve And Debias (Rong et al. 2022): remove pixels, impute them, score the class.

    For each percentile p the p% most relevant (MoRF) and the p% least relevant (LeRF) pixels are
    removed and replaced by noisy linear imputation (`noisy_linear_impute`), which leaks far less
    of the removed shape than a constant does. The count removed follows numpy's percentile of the
    map, as pytorch-grad-cam's (`removed_count`). Conventions against pytorch-grad-cam: there,
    `ROADMostRelevantFirst(percentile=q)` removes (100 - q)% of the pixels, so its q is this
    function's 100 - p (averages over range(10, 100, 10) are the same set); its noise (0.01) is in
    the network's normalised units, fastviz's in [0, 1] image units (0.005 = 0.01 x Lite0's std
    0.5). The imputation runs on the CPU (scipy); the forwards on the model's device.

    Args:
        model: `Model` or nn.Module.
        x: (B, 3, H, W) images in [0, 1].
        maps: (B, H, W) relevance (or (B, C, H, W), reduced to max |.| over channels).
        percentiles: percent of pixels removed, each in [0, 100).
        target: class per image, or None for each clean image's top-1.
        noise: imputation noise, standard deviation in [0, 1] units (0: plain linear imputation).
        score: "probability" or "logit".
        seed: seed of the imputation noise (None: fresh).
        batch_size: imputed images per forward.

    Returns:
        `ROADResult` (morf, lerf (B, P); clean, combined (B,)).
    """
    m, x = prepare(model, x)
    maps = _check_maps(maps, x)
    score = _check_score(score)
    batch_size = positive_int(batch_size, "batch_size")
    try:
        count = len(percentiles)
    except TypeError:
        count = -1
    if count < 0 or count > 100 or isinstance(percentiles, (str, bytes)):
        raise FastvizError(f"percentiles: expected a list of at most 100 numbers in [0, 100), "
                           f"got {percentiles!r:.80}")
    try:
        percentiles = [float(p) for p in percentiles]
    except (TypeError, ValueError) as e:
        raise FastvizError(f"percentiles: expected numbers in [0, 100), got {percentiles!r}") from e
    if not percentiles or not all(0 <= p < 100 for p in percentiles):
        raise FastvizError(f"percentiles: expected numbers in [0, 100), got {percentiles}")
    noise = checks.number(noise, "noise", 0.0, 1.0)
    seed = checks.seed(seed, "seed", allow_none=True)
    B, P = x.shape[0], len(percentiles)
    # the 2 P imputed copies of every image are made up front (on the CPU)
    batch_size = _fitting(m, x, batch_size, 2 * P * x.numel() * x.element_size())
    imputed = road_images(x, maps, percentiles, noise, seed).view(B * 2 * P, *x.shape[1:])
    with session(m):
        targets = classes_to_explain(m, x, target, batch_size)
        clean = torch.cat([_scores(m, x[i:i + batch_size], targets[i:i + batch_size], score)
                           for i in range(0, B, batch_size)])
        row_target = targets.repeat_interleave(2 * P)
        out = []
        for i in range(0, B * 2 * P, batch_size):
            rows = imputed[i:i + batch_size].to(x.device)
            out.append(_scores(m, rows, row_target[i:i + batch_size], score))
    s = torch.cat(out).view(B, 2, P).cpu()
    morf, lerf = s[:, 0], s[:, 1]
    return ROADResult(torch.tensor(percentiles), morf, lerf, clean.cpu(), (lerf - morf).mean(1) / 2,
                      targets.cpu())
