"""What a call explains or maximises: class indices per row, or one intermediate neuron."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from . import checks
from .errors import FastvizError


@dataclass(frozen=True)
class Neuron:
    """One unit of an intermediate layer: `layer` (dotted name), `channel`, position (y, x).

    y and x None mean the centre of the feature map.

    Example:
        >>> Neuron("_blocks.10", channel=5, y=7, x=7)
        Neuron(layer='_blocks.10', channel=5, y=7, x=7)
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def __post_init__(self):
        if not isinstance(self.layer, str):
            raise FastvizError(f"Neuron.layer: expected a dotted module name, got {self.layer!r}")
        for field in ("channel", "y", "x"):
            v = getattr(self, field)
            if v is None and field == "channel":
                raise FastvizError("Neuron.channel: expected a channel index (int >= 0), got None")
            if v is not None:
                # numpy / 0-d tensor indices become ints (frozen dataclass: set through object)
                object.__setattr__(self, field, checks.int_in(v, f"Neuron.{field}", 0, checks.MAX_SIDE ** 2))

    def index(self, act: torch.Tensor) -> tuple[int, int, int]:
        """(channel, y, x) checked against an activation (B, C, h, w)."""
        if act.dim() != 4:
            raise FastvizError(f"Neuron.layer: {self.layer!r} gives shape {tuple(act.shape)}, "
                               f"expected a feature map (B, C, h, w)")
        _, c, h, w = act.shape
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if self.channel >= c:
            raise FastvizError(f"Neuron.channel: {self.layer!r} has {c} channels, got {self.channel}")
        if y >= h or x >= w:
            raise FastvizError(f"Neuron.y/x: {self.layer!r} is {h}x{w}, got ({y}, {x})")
        return self.channel, y, x

    def value(self, act: torch.Tensor) -> torch.Tensor:
        """(B,) the unit's activation per row."""
        c, y, x = self.index(act)
        return act[:, c, y, x]


def class_targets(target, batch: int, num_classes: int, name: str = "target") -> torch.Tensor | None:
    """Class indices per row as a (B,) int64 CPU tensor; None stays None (top-1 later).

    Accepts an int, a numpy integer or a 0-d tensor (every row), or a sequence, 1-D int32 /
    int64 tensor or array of length B (`fastviz.checks.index_list`).
    """
    if target is None:
        return None
    if getattr(target, "ndim", None) == 0 or not isinstance(target, (Iterable, str, bytes)):
        t = [checks.index(target, name, num_classes, "class index", "classes")] * batch
    else:
        t = checks.index_list(target, name, num_classes, "class index", "classes")
        if len(t) != batch:
            raise FastvizError(f"{name}: expected one class per image ({batch}), got {len(t)}")
    return torch.tensor(t, dtype=torch.long)


def positive_int(value, name: str) -> int:
    """`value` as an int >= 1 (ints, numpy integers, 0-d int tensors; not bools); else FastvizError."""
    return checks.positive_int(value, name)


def as_index_list(values, name: str, upper: int | None = None) -> list[int]:
    """An int, range, sequence or 1-D integer tensor -> list, each in [0, upper)."""
    if name == "classes":
        return checks.index_list(values, name, upper, "class index", "classes")
    return checks.index_list(values, name, upper)

