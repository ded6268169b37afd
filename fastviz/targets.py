"""What a call explains or maximises: class indices per row, or one intermediate neuron."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
            if v is not None and (not isinstance(v, int) or v < 0):
                raise FastvizError(f"Neuron.{field}: expected a non-negative int, got {v!r}")

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

    Accepts an int (every row), a sequence or 1-D tensor of length B.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise FastvizError(f"{name}: expected a class index, got {target!r}")
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as e:
            raise FastvizError(f"{name}: expected an int, a list of ints or a tensor, got {target!r}") from e
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise FastvizError(f"{name}: expected integer class indices, got {t.dtype} of shape {tuple(t.shape)}")
        if t.numel() != batch:
            raise FastvizError(f"{name}: expected one class per image ({batch}), got {t.numel()}")
        t = t.to("cpu", torch.long)
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        raise FastvizError(f"{name}: class index {int(t[bad][0])} outside [0, {num_classes})")
    return t


def positive_int(value, name: str) -> int:
    """`value` when it is an int >= 1 (not a bool); else FastvizError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FastvizError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def as_index_list(values, name: str, upper: int | None = None) -> list[int]:
    """An int, range or sequence of ints -> list, each in [0, upper)."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as e:
        raise FastvizError(f"{name}: expected ints, got {values!r}") from e
    if not out:
        raise FastvizError(f"{name}: expected at least one index, got none")
    for v in out:
        if v < 0 or (upper is not None and v >= upper):
            raise FastvizError(f"{name}: index {v} outside [0, {upper})")
    return out


def pick(scores: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) scores of each row's target class, and the (B,) targets (top-1 where None)."""
    if targets is None:
        targets = scores.detach().argmax(1)
    elif scores.is_cuda:
        # From pinned memory the copy is asynchronous: no host sync in the call.
        targets = targets.pin_memory().to(scores.device, non_blocking=True)
    else:
        targets = targets.to(scores.device)
    return scores.gather(1, targets[:, None]).squeeze(1), targets
