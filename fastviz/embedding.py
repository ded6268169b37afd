"""Maps of a feature space: PCA / t-SNE to 2-D, thumbnail maps, scatter plots, neighbours.

`embed` takes its features from `fastviz.inspection.features` (the forward stopped at the
feature layer, by default the classifier's input) and returns an `Embedding` that draws
thumbnail maps and scatter plots and saves CSV.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .errors import FastvizError
from .inspection import features
from .io import atomic_write, output_path
from .models import Model, as_model

METHODS = ("tsne", "pca")
TSNE_MIN_IMAGES = 4  # perplexity must stay >= 1 with 3 * perplexity <= N - 1 (van der Maaten)
PCA_BEFORE_TSNE = 50  # dimensions kept before t-SNE, as van der Maaten recommends


# -- reduction ------------------------------------------------------------------------------
def reduce(features: torch.Tensor | np.ndarray, method: str = "tsne", perplexity: float = 30.0,
           seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates with PCA or t-SNE (scikit-learn).

    t-SNE first reduces to 50 dimensions with PCA when D is larger, and lowers the perplexity
    to (N - 1) / 3 when N is small (with a warning): van der Maaten's bound 3 * perplexity <= N - 1.

    Raises:
        FastvizError: unknown method; fewer than 2 points (PCA) or 4 (t-SNE); non-finite values.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in METHODS:
        raise FastvizError(f"method: expected 'tsne' or 'pca', got {method!r}")
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    n = x.shape[0]
    need = TSNE_MIN_IMAGES if method == "tsne" else 2
    if n < need:
        hint = "; use method='pca' for so few" if method == "tsne" and n >= 2 else ""
        raise FastvizError(f"images_or_folder: {method} needs at least {need} images, got {n}{hint}")
    if not np.isfinite(x).all():
        raise FastvizError("features: not finite (NaN or inf); check the images and the layer")
    if method == "pca":
        k = min(2, n, x.shape[1])
        coords = PCA(n_components=k, random_state=seed).fit_transform(x)
        return np.pad(coords, ((0, 0), (0, 2 - k))).astype(np.float32)
    if not perplexity > 0:
        raise FastvizError(f"perplexity: expected a positive number, got {perplexity}")
    most = (n - 1) / 3
    if perplexity > most:
        warnings.warn(f"perplexity: {perplexity} is too large for {n} images; using {most:.3g} "
                      f"(t-SNE needs 3 * perplexity <= N - 1)", stacklevel=2)
        perplexity = most
    if x.shape[1] > PCA_BEFORE_TSNE and n > PCA_BEFORE_TSNE:
        x = PCA(n_components=PCA_BEFORE_TSNE, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)


def neighbour_agreement(points, groups, k: int = 5) -> float:
    """Mean fraction of each point's k nearest neighbours (itself excluded) in its own group.

    Args:
        points: (N, D) coordinates or features.
        groups: (N,) group of each point (e.g. the source photo of a crop).

    Returns:
        A fraction in [0, 1]; chance is about the share of the largest groups.
    """
    from sklearn.neighbors import NearestNeighbors

    try:
        p = points.detach().cpu().float().numpy() if isinstance(points, torch.Tensor) else np.asarray(points, np.float64)
    except (TypeError, ValueError, RuntimeError):
        raise FastvizError(f"points: expected (N, D) numbers, got {type(points).__name__}") from None
    if p.ndim < 1 or p.shape[0] < 2 or p.size == 0 or not np.isfinite(p).all():
        raise FastvizError(f"points: expected (N, D) finite numbers with N >= 2, got shape {p.shape}")
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__"):
        raise FastvizError(f"groups: expected one group per point, got {type(groups).__name__}")
    g = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups, dtype=object)
    k = checks.as_int(k, "k")
    p = p.reshape(p.shape[0], -1)
    if g.ndim != 1 or g.shape[0] != p.shape[0]:
        raise FastvizError(f"groups: expected one per point ({p.shape[0]}), got {g.shape[0]}")
    if not 1 <= k < p.shape[0]:
        raise FastvizError(f"k: expected 1 <= k < {p.shape[0]}, got {k}")
    idx = NearestNeighbors(n_neighbors=k).fit(p).kneighbors(return_distance=False)
    return float((g[idx] == g[:, None]).mean())


# -- the embedding --------------------------------------------------------------------------
@dataclass
class Embedding:
    """Images placed in 2-D by their features. Draw it with `thumbnail_map` and `scatter`.

    Attributes:
        coords: (N, 2) numpy float32 map coordinates.
        features: (N, D) features on the CPU.
        predictions: (N,) top-1 class per image, or None (a named layer stops before logits).
        labels: class names per image (from the model's labels), or None.
        names: a name per image (file names, or given names, or "0", "1", ...).
        images: (N, 3, t, t) thumbnails in [0, 1].
        paths: source files, or None for a tensor.
    """

    coords: np.ndarray
    features: torch.Tensor
    predictions: torch.Tensor | None
    labels: list[str] | None
    names: list[str]
    images: torch.Tensor
    paths: list[Path] | None = None
    method: str = "tsne"
    layer: str | None = None
    _cells: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.coords.shape[0]

    def grid_cells(self, rows: int, cols: int) -> np.ndarray:
        """(N,) cell index (row * cols + col) of each image, one image per cell, chosen by a
        linear assignment minimising the squared distance to the cell centres."""
        from scipy.optimize import linear_sum_assignment

        if rows * cols < len(self):
            raise FastvizError(f"size: a {rows}x{cols} grid has fewer cells than {len(self)} images")
        key = (rows, cols)
        if key not in self._cells:
            u = _unit(self.coords)
            r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            centres = np.stack([(c.ravel() + 0.5) / cols, 1 - (r.ravel() + 0.5) / rows], 1)
            cost = ((u[:, None, :] - centres[None]) ** 2).sum(-1)
            _, cell = linear_sum_assignment(cost)
            self._cells[key] = cell
        return self._cells[key]

    def thumbnail_map(self, size: int | tuple[int, int] | None = None, cell: int = 48,
                      background: float = 1.0) -> torch.Tensor:
        """Each image's thumbnail in the grid cell nearest its place in the map, none overlapping.

        Args:
            size: the grid in cells, side or (rows, cols) (default: the smallest square that holds
                every image).
            cell: pixels per thumbnail.

        Returns:
            (3, rows * cell, cols * cell) in [0, 1]; up in the map is up in the picture.
        """
        if size is None:
            size = math.ceil(math.sqrt(len(self)))
        rows, cols = checks.size2(size, "size")
        cell = checks.int_in(cell, "cell", 1, 1024)
        background = checks.number(background, "background", 0, 1)
        if rows * cols * cell * cell * 3 > checks.MAX_ELEMENTS:
            raise FastvizError(f"size: a {rows}x{cols} grid of {cell}-pixel cells is too large")
        thumbs = F.interpolate(self.images.float(), size=(cell, cell), mode="bilinear",
                               antialias=True, align_corners=False).clamp(0, 1)
        out = thumbs.new_full((3, rows * cell, cols * cell), background)
        for i, k in enumerate(self.grid_cells(rows, cols)):
            r, c = divmod(int(k), cols)
            out[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = thumbs[i]
        return out

    def scatter(self, size: int = 512, groups: Sequence | None = None, max_legend: int = 12,
                radius: int = 4) -> torch.Tensor:
        """Points coloured by predicted class (or by `groups`), with a legend (OpenCV).

        Args:
            size: side of the plot in pixels (the legend is drawn to its right).
            groups: a group per image to colour by instead of the predicted class.
            max_legend: groups beyond the most frequent ones are drawn grey as "other".

        Returns:
            (3, size, size + legend width) in [0, 1].
        """
        size = checks.int_in(size, "size", 64, 8192)
        max_legend = checks.int_in(max_legend, "max_legend", 0, 1000)
        radius = checks.int_in(radius, "radius", 1, 256)
        if groups is not None and (isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__")):
            raise FastvizError(f"groups: expected one group per image (a list of {len(self)}), got "
                               f"{type(groups).__name__} {checks._show(groups, 40)}")
        if groups is None and self.predictions is not None:
            groups = [self.labels[i] if self.labels else str(c)
                      for i, c in enumerate(self.predictions.tolist())]
        return _scatter_plot(_unit(self.coords), groups, size, max_legend, radius)

    def neighbours(self, i: int, k: int = 8, space: str = "features") -> np.ndarray:
        """Indices of the k images nearest image i (itself excluded), nearest first.

        Args:
            space: "features" (Euclidean distance of the features) or "map" (of the coordinates).
        """
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise FastvizError(f"i: expected an image index in [0, {n}), got {i!r}")
        k = checks.as_int(k, "k")
        if not 1 <= k < n:
            raise FastvizError(f"k: expected 1 <= k < {n}, got {k}")
        checks.choice(space, "space", ("features", "map"))
        pts = self.features.float() if space == "features" else torch.from_numpy(self.coords)
        i = int(i) % n
        d = (pts - pts[i]).pow(2).sum(1)
        d[i] = float("inf")
        return torch.topk(d, k, largest=False).indices.numpy()

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write index, name, x, y, predicted class, label (and path) per image; returns the path."""
        path = output_path(path)
        with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "name", "x", "y", "prediction", "label"] + (["path"] if self.paths else []))
            for i in range(len(self)):
                pred = int(self.predictions[i]) if self.predictions is not None else ""
                label = self.labels[i] if self.labels else ""
                row = [i, self.names[i], f"{self.coords[i, 0]:.6g}", f"{self.coords[i, 1]:.6g}", pred, label]
                w.writerow(row + ([str(self.paths[i])] if self.paths else []))
        return path


def _unit(coords: np.ndarray) -> np.ndarray:
    """Coordinates scaled into [0, 1] per axis (a flat axis sits at 0.5)."""
    lo, hi = coords.min(0), coords.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (coords - lo) / span, 0.5)


# tab10 then the lighter tab20 shades, RGB 0-255
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232),
            (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
            (247, 182, 210), (219, 219, 141), (158, 218, 229))
_OTHER = (160, 160, 160)


def _scatter_plot(u: np.ndarray, groups, size: int, max_legend: int, radius: int) -> torch.Tensor:
    """Draw unit-square points on a white canvas, coloured by group, legend on the right."""
    import cv2
    from collections import Counter

    if size < 64:
        raise FastvizError(f"size: expected at least 64 pixels, got {size}")
    n = u.shape[0]
    groups = [str(g) for g in groups] if groups is not None else [""] * n
    if len(groups) != n:
        raise FastvizError(f"groups: expected one per point ({n}), got {len(groups)}")
    top = [g for g, _ in Counter(groups).most_common(min(max_legend, len(_PALETTE)))]
    colour = {g: _PALETTE[j] for j, g in enumerate(top)}
    counts = Counter(groups)
    legend = [(f"{g} ({counts[g]})", colour[g]) for g in top if g]
    rest = n - sum(counts[g] for g in top)
    if rest:
        legend.append((f"other ({rest})", _OTHER))
    font, fscale, line = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 16
    text_w = max([cv2.getTextSize(t, font, fscale, 1)[0][0] for t, _ in legend] or [0])
    legend_w = text_w + 40 if legend else 0
    canvas = np.full((size, size + legend_w, 3), 255, np.uint8)
    margin = 2 * radius + 4
    xy = np.round(margin + u * (size - 2 * margin)).astype(int)
    xy[:, 1] = size - 1 - xy[:, 1]  # up in the map is up in the picture
    order = sorted(range(n), key=lambda i: groups[i] in colour)  # "other" underneath
    for i in order:
        c = colour.get(groups[i], _OTHER)
        cv2.circle(canvas, (int(xy[i, 0]), int(xy[i, 1])), radius, c, -1, cv2.LINE_AA)
        cv2.circle(canvas, (int(xy[i, 0]), int(xy[i, 1])), radius, (60, 60, 60), 1, cv2.LINE_AA)
    for j, (text, c) in enumerate(legend):
        y = 12 + j * line
        cv2.circle(canvas, (size + 12, y), 5, c, -1, cv2.LINE_AA)
        ascii_text = text.encode("ascii", "replace").decode()
        cv2.putText(canvas, ascii_text, (size + 24, y + 4), font, fscale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (0, 0), (size - 1, size - 1), (200, 200, 200), 1)
    return torch.from_numpy(canvas).permute(2, 0, 1).float() / 255


def embed(model: Model | nn.Module, images_or_folder, *, method: str = "tsne", layer: str | None = None,
          batch_size: int = 32, device: str | torch.device | None = None, perplexity: float = 30.0,
          seed: int = 0, progress: Callable | bool | None = None, names: Sequence[str] | None = None,
          pool: str = "avg", thumbnail: int = 64) -> Embedding:
    """Map images to 2-D by the network's features: the forward stops at the feature layer.

    Args:
        model: `Model` or nn.Module.
        images_or_folder: (N, 3, H, W) tensor in [0, 1], a file, a folder or a list of them
            (files without an image suffix are skipped with a warning; an empty folder or an
            unreadable image file is an error).
        method: "tsne" or "pca".
        layer: feature layer (default: the classifier's input, the penultimate features).
        batch_size, device, pool, thumbnail, progress: as in `features`.
        perplexity: t-SNE perplexity, lowered with a warning when there are few images.
        seed: t-SNE / PCA random state (the map is the same for the same seed).
        names: a name per image for a tensor input (default "0", "1", ...).

    Returns:
        `Embedding` with coords (N, 2), features, predictions, labels, names, thumbnails.

    Raises:
        FastvizError: unknown method or layer; too few images (t-SNE needs 4, PCA 2); an empty
            folder or unreadable image.

    Example:
        >>> embed(load_model(), demo_set().images, method="pca").coords.shape
        (280, 2)
    """
    checks.choice(method, "method", METHODS)
    perplexity = checks.number(perplexity, "perplexity", 0, 1e4, low_open=True)
    seed = checks.int_in(seed, "seed", 0, 2 ** 32 - 1)  # scikit-learn's random_state range
    if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Sequence)):
        raise FastvizError(f"names: expected a list of names, got {type(names).__name__}")
    m = as_model(model)
    feats = features(m, images_or_folder, layer=layer, batch_size=batch_size, device=device, pool=pool,
                     thumbnail=thumbnail, progress=progress)
    if names is not None:
        if len(names) != feats.features.shape[0]:
            raise FastvizError(f"names: expected {feats.features.shape[0]}, got {len(names)}")
        feats.names = [str(n) for n in names]
    coords = reduce(feats.features, method, perplexity, seed)
    labels = None
    if feats.predictions is not None:
        table = m.labels or []
        labels = [table[c] if c < len(table) else str(c) for c in feats.predictions.tolist()]
    return Embedding(coords, feats.features, feats.predictions, labels, feats.names, feats.images,
                     feats.paths, method, layer)
