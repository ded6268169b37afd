"""What synthesis maximises: one objective per batch row, composable with + - and scalar *.

An objective reads the activations of the layers it names (and the logits when it needs the
class scores) and returns one score per row, (B,). Row-specific targets (a class, a channel,
a neuron per row) are index tensors, so N targets render as one batched loop; `select`
takes the rows of one chunk when a render is split into batches.

Example:
    >>> obj = channel("_blocks.10", [3, 7]) - 0.5 * channel("_blocks.10", [9, 9])
    >>> obj.layers, obj.rows
    ({'_blocks.10'}, 2)
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from . import checks
from .errors import FastvizError

LOGITS = "<logits>"  # the pseudo-layer of class scores


class Objective:
    """Base class: `score(acts, img)` -> (B,) with acts[layer] (and acts[LOGITS])."""

    layers: set[str] = set()
    rows: int | None = None  # None: the same objective for every row
    row_tensors: tuple[str, ...] = ()  # attributes holding one entry per row

    def score(self, acts: dict[str, Tensor], img: Tensor) -> Tensor:
        raise NotImplementedError

    def _map(self, fn) -> "Objective":
        """A shallow copy with `fn` applied to every per-row tensor."""
        new = copy.copy(self)
        for name in self.row_tensors:
            setattr(new, name, fn(getattr(self, name)))
        if self.row_tensors:
            new.rows = getattr(new, self.row_tensors[0]).shape[0]
        return new

    def select(self, rows: slice) -> "Objective":
        """The objective of rows[rows] (a chunk of the batch)."""
        return self._map(lambda t: t[rows])

    def to(self, device) -> "Objective":
        return self._map(lambda t: t.to(device))

    def repeat(self, k: int) -> "Objective":
        """The objective of a batch where each row is repeated k times in place (k views of an
        image are k consecutive network rows)."""
        return self._map(lambda t: t.repeat_interleave(k, 0))

    def check(self, acts: dict[str, Tensor]) -> None:
        """Validate indices against the activations once, before the loop (raises FastvizError)."""

    @property
    def needs_logits(self) -> bool:
        return LOGITS in self.layers

    def __add__(self, other: "Objective") -> "Objective":
        return Sum([(1.0, self), (1.0, _as_objective(other))])

    def __sub__(self, other: "Objective") -> "Objective":
        return Sum([(1.0, self), (-1.0, _as_objective(other))])

    def __mul__(self, k: float) -> "Objective":
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented
        return Sum([(checks.number(k, "weight"), self)])

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return Sum([(-1.0, self)])

    def __repr__(self) -> str:
        return self.description

    description = "objective"


def _as_objective(o) -> Objective:
    if not isinstance(o, Objective):
        raise FastvizError(f"objective: expected a fastviz objective, got {type(o).__name__}")
    return o


class Sum(Objective):
    def __init__(self, terms: list[tuple[float, Objective]]):
        flat: list[tuple[float, Objective]] = []
        for w, o in terms:
            flat.extend((w * w2, o2) for w2, o2 in o.terms) if isinstance(o, Sum) else flat.append((w, o))
        rows = {o.rows for _, o in flat if o.rows is not None}
        if len(rows) > 1:
            raise FastvizError(f"objective: terms have different row counts {sorted(rows)}")
        self.terms = flat
        self.rows = rows.pop() if rows else None
        self.layers = set().union(*(o.layers for _, o in flat))

    def score(self, acts, img):
        total = None
        for w, o in self.terms:
            s = o.score(acts, img)
            total = s * w if total is None else total + s * w
        return total

    def select(self, rows):
        return Sum([(w, o.select(rows)) for w, o in self.terms])

    def to(self, device):
        return Sum([(w, o.to(device)) for w, o in self.terms])

    def repeat(self, k):
        return Sum([(w, o.repeat(k)) for w, o in self.terms])

    def check(self, acts):
        for _, o in self.terms:
            o.check(acts)

    @property
    def description(self):
        parts = [f"{'- ' if w < 0 else '+ '}{'' if abs(w) == 1 else f'{abs(w):g} * '}{o.description}"
                 for w, o in self.terms]
        return " ".join(parts).lstrip("+ ")


def _layer(layer) -> str:
    if not isinstance(layer, str):
        raise FastvizError(f"layer: expected a dotted module name (str), got {type(layer).__name__}")
    return layer


def _indices(values, name: str) -> Tensor:
    out = checks.index_list(values, name)  # ints, numpy / 0-d tensor ints, 1-D int tensors
    if max(out) >= 2 ** 31:
        raise FastvizError(f"{name}: index {max(out)} is out of range (indices stay below 2**31)")
    return torch.tensor(out, dtype=torch.long)


class _Indexed(Objective):
    """An objective with one index (class or channel) per row."""

    row_tensors = ("index",)

    def __init__(self, layer: str, index: Tensor):
        self.layer = _layer(layer)
        self.index = index
        self.layers = {layer}
        self.rows = index.numel()

    def _act(self, acts: dict[str, Tensor]) -> Tensor:
        a = acts[self.layer]
        if a.shape[0] != self.rows:
            raise FastvizError(f"objective: {self.rows} targets for a batch of {a.shape[0]}")
        return a


class ClassScore(_Indexed):
    """The class score before softmax (Simonyan et al. 2014), one class per row."""

    def __init__(self, classes):
        super().__init__(LOGITS, _indices(classes, "classes"))

    def check(self, acts):
        logits = acts[LOGITS]
        if logits.dim() != 2:
            raise FastvizError(f"model: a class score needs (B, classes) scores from the network, "
                               f"but it returns shape {tuple(logits.shape)}"
                               + (", a feature map: render one of its channels with feature(), or "
                                  "give a network that ends in a classifier" if logits.dim() == 4 else ""))
        n = logits.shape[1]
        if int(self.index.max()) >= n:
            raise FastvizError(f"classes: class index {int(self.index.max())} is out of range for "
                               f"{n} classes (0-{n - 1})")

    def score(self, acts, img):
        return self._act(acts).gather(1, self.index[:, None]).squeeze(1)

    @property
    def description(self):
        return f"class({self.index.tolist() if self.rows <= 8 else f'{self.rows} classes'})"


class Channel(_Indexed):
    """Mean activation of one channel of `layer`, one channel per row."""

    def __init__(self, layer: str, channels):
        super().__init__(layer, _indices(channels, "channels"))

    def check(self, acts):
        a = acts[self.layer]
        if a.dim() != 4:
            raise FastvizError(f"layer: {self.layer!r} gives shape {tuple(a.shape)}, expected (B, C, h, w)")
        if int(self.index.max()) >= a.shape[1]:
            raise FastvizError(f"channels: {self.layer!r} has {a.shape[1]} channels, got {int(self.index.max())}")

    def score(self, acts, img):
        a = self._act(acts)
        idx = self.index.view(-1, 1, 1, 1).expand(-1, 1, a.shape[2], a.shape[3])
        return a.gather(1, idx).mean((1, 2, 3))

    @property
    def description(self):
        return f"channel({self.layer!r}, {self.index.tolist() if self.rows <= 8 else f'{self.rows} channels'})"


class NeuronScore(Objective):
    """One unit (channel, y, x) of `layer` per row."""

    row_tensors = ("c", "y", "x")

    def __init__(self, layer: str, channels, ys, xs):
        self.layer = _layer(layer)
        self.layers = {layer}
        self.c, self.y, self.x = (_indices(v, n) for v, n in ((channels, "channel"), (ys, "y"), (xs, "x")))
        if not self.c.numel() == self.y.numel() == self.x.numel():
            raise FastvizError("neurons: channel, y and x need one value per row")
        self.rows = self.c.numel()

    def check(self, acts):
        a = acts[self.layer]
        if a.dim() != 4:
            raise FastvizError(f"layer: {self.layer!r} gives shape {tuple(a.shape)}, expected (B, C, h, w)")
        _, C, H, W = a.shape
        for v, n, name in ((self.c, C, "channel"), (self.y, H, "y"), (self.x, W, "x")):
            if int(v.max()) >= n:
                raise FastvizError(f"Neuron.{name}: {self.layer!r} is {C}x{H}x{W}, got {name}={int(v.max())}")

    def score(self, acts, img):
        a = acts[self.layer]
        rows = torch.arange(a.shape[0], device=a.device)
        return a[rows, self.c, self.y, self.x]

    @property
    def description(self):
        return f"neuron({self.layer!r}, {self.rows} units)"


class Dream(Objective):
    """0.5 * sum of squared activations of `layer`: its gradient at the layer is the activation
    itself (DeepDream, Mordvintsev et al. 2015)."""

    def __init__(self, layer: str):
        self.layer = _layer(layer)
        self.layers = {layer}

    def score(self, acts, img):
        a = acts[self.layer]
        return 0.5 * a.float().square().flatten(1).sum(1)

    @property
    def description(self):
        return f"dream({self.layer!r})"


class Inversion(Objective):
    """Mahendran & Vedaldi 2015: match a layer's representation of a reference image.

    score = -||phi(x) - phi0||^2 / ||phi0||^2 - alpha_weight * mean(|x - 0.5|^alpha)
            - tv_weight * mean(TV(x)^(beta/2)), with x the [0, 1] image. Higher is better.
    """

    row_tensors = ("target", "norm")

    def __init__(self, layer: str, target: Tensor, alpha: float = 6.0, alpha_weight: float = 1e-5,
                 beta: float = 2.0, tv_weight: float = 10.0):
        self.layer = layer
        self.layers = {layer}
        self.target = target.detach()
        self.rows = target.shape[0]
        self.alpha, self.alpha_weight, self.beta, self.tv_weight = alpha, alpha_weight, beta, tv_weight
        self.norm = target.detach().float().square().flatten(1).sum(1).clamp_min(1e-12)

    def score(self, acts, img):
        a = acts[self.layer].float()
        match = (a - self.target).square().flatten(1).sum(1) / self.norm
        centred = (img - 0.5).abs().pow(self.alpha).flatten(1).mean(1)
        dy = img[:, :, 1:, :-1] - img[:, :, :-1, :-1]
        dx = img[:, :, :-1, 1:] - img[:, :, :-1, :-1]
        tv = (dx.square() + dy.square()).pow(self.beta / 2).flatten(1).mean(1)
        return -match - self.alpha_weight * centred - self.tv_weight * tv

    @property
    def description(self):
        return f"invert({self.layer!r})"


class Diversity(Objective):
    """Olah et al. 2017's diversity term: rows of one target pushed apart in style.

    Per row r: minus the mean cosine similarity between r's Gram matrix at `layer` and those of
    the other rows of its group (same `group` id, another image), 0 for a row alone in its group.
    Views of one image (`repeat`) share an image id and never compare with each other.

    Args:
        layer: the layer whose Gram matrices (C x C, over positions) are compared.
        groups: (B,) ints, rows with equal ids are one target (e.g. the class of each row).

    Example:
        >>> obj = class_score([130] * 4) + 50 * Diversity("_blocks.6", [130] * 4)
    """

    row_tensors = ("group", "image")

    def __init__(self, layer: str, groups):
        if not isinstance(layer, str):
            raise FastvizError(f"layer: expected a dotted module name (str), got {type(layer).__name__}")
        self.layer = layer
        self.layers = {layer}
        self.group = _indices(groups, "groups")
        self.image = torch.arange(self.group.numel())
        self.rows = self.group.numel()

    def score(self, acts, img):
        a = acts[self.layer].float().flatten(2)  # (N, C, hw)
        gram = (a @ a.transpose(1, 2)).flatten(1) / a.shape[2]
        gram = torch.nn.functional.normalize(gram, dim=1)
        cos = gram @ gram.T  # (N, N)
        pair = (self.group[:, None] == self.group[None]) & (self.image[:, None] != self.image[None])
        n = pair.sum(1).clamp_min(1)
        return -(cos * pair).sum(1) / n

    @property
    def description(self):
        return f"diversity({self.layer!r})"


# -- the functional forms users write -------------------------------------------------------
def class_score(classes: int | Sequence[int]) -> ClassScore:
    return ClassScore(classes)


def channel(layer: str, channels: int | Sequence[int]) -> Channel:
    return Channel(layer, channels)


def neurons(layer: str, channels, ys, xs) -> NeuronScore:
    return NeuronScore(layer, channels, ys, xs)


def dream(layer: str) -> Dream:
    return Dream(layer)


def diversity(layer: str, groups) -> Diversity:
    return Diversity(layer, groups)
