"""What a synthesis loop runs with: one frozen `Settings`, checked once at the public boundary.

The public synthesis calls (`fastviz.render`) take these as keyword arguments, check them here
with `loop_settings` before anything is allocated, and hand the engine the frozen object; the
engine (`fastviz.engine`) checks nothing again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import checks
from .errors import FastvizError
from .regularizers import NONE, Yosinski
from .transforms import Transforms

OPTIMIZERS = ("adam", "sgd", "normalized")
BACKENDS = ("auto", "eager", "graph")
IMPLS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class Settings:
    """The loop's settings (docs/api.md lists them with the synthesis calls' defaults).

    Attributes:
        steps: gradient-ascent steps, >= 1.
        lr: step size on the parameterisation's leaf.
        optimizer: "adam", "sgd" (momentum 0.9) or "normalized" (g / mean |g| per image).
        l2: Simonyan's lambda: the objective is score - l2 * ||leaf||^2.
        reg: the Yosinski regularizer step (pixels only; `NONE` for none).
        jitter: random integer roll of up to this many pixels per step and row.
        transforms: random per-row views (k crops = k network rows per image), or None.
        view_size: (h, w) the transforms resample each view to (None: the picture's size).
            A picture larger than the network's input is seen in crops at the input's size.
        backend: "auto" (graph on CUDA, eager elsewhere), "eager" or "graph".
        impl: regularizer implementation, "auto" | "triton" | "torch".
        amp: bf16 autocast for the network (the image stays fp32).
        lower: run the lowered copy of the network (`fastviz.lower`) instead of the network as is.
        seed: seeds the device generator of jitter and transforms.
        snapshot_every: copy the images to the host every n steps (None: never).
        progress_every: steps between read-backs (None: 1 on the CPU, 16 on CUDA).
        step_offset: where the blur schedule starts (runs split into octaves).
    """

    steps: int
    lr: float = 0.05
    optimizer: str = "adam"
    l2: float = 0.0
    reg: Yosinski = NONE
    jitter: int = 0
    transforms: Transforms | None = None
    view_size: tuple[int, int] | None = None
    backend: str = "auto"
    impl: str = "auto"
    amp: bool = False
    lower: bool = True
    seed: int = 0
    snapshot_every: int | None = None
    progress_every: int | None = None
    step_offset: int = 0

    def replace(self, **changes) -> "Settings":
        """A copy with `changes` (already valid values: octaves shift seed and step_offset)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(Settings)}


def loop_settings(rows: int, steps, *, param: str = "pixel", **loop) -> Settings:
    """Check the loop's arguments and return them frozen.

    Args:
        rows: rows the engine runs at once (sizes the history: steps x rows values).
        steps: gradient-ascent steps.
        param: the parameterisation kind; the Yosinski step applies to "pixel" only.
        **loop: any other `Settings` field.

    Raises:
        FastvizError: an unknown name, or a value out of range; the message names it.
    """
    unknown = sorted(set(loop) - _FIELDS)
    if unknown:
        takes = ", ".join(sorted(_FIELDS - {"steps"}))
        raise FastvizError(f"{unknown[0]}: not an argument of the synthesis loop; it takes {takes}")
    steps = checks.positive_int(steps, "steps", 10 ** 8)
    if steps * rows > checks.MAX_ELEMENTS:
        raise FastvizError(f"steps: {steps} steps x {rows} rows is more history than a run keeps "
                           f"(2**31 values); render in batches or fewer steps")
    s = Settings(steps, **loop)
    if not isinstance(s.reg, Yosinski):
        raise FastvizError(f"reg: expected a fastviz.Yosinski (or fastviz.regularizers.NONE), got "
                           f"{type(s.reg).__name__}")
    if s.reg != NONE and param != "pixel":
        raise FastvizError(f"reg: the Yosinski regularizer applies to param='pixel' only, "
                           f"got {s.reg!r} with param={param!r} (use reg=None)")
    if s.transforms is not None and not isinstance(s.transforms, Transforms):
        raise FastvizError(f"transforms: expected fastviz.Transforms or None, got {type(s.transforms).__name__}")
    if s.view_size is not None:
        if s.transforms is None:
            raise FastvizError(f"view_size: the views are resampled by the transforms, and there are "
                               f"none (transforms=None); got view_size={s.view_size!r}")
        s = s.replace(view_size=checks.size2(s.view_size, "view_size", low=8))
    checks.choice(s.optimizer, "optimizer", OPTIMIZERS)
    checks.number(s.lr, "lr", 0, 1e6, low_open=True)
    checks.number(s.l2, "l2", 0, 1e6)
    checks.int_in(s.jitter, "jitter", 0, checks.MAX_SIDE)
    checks.choice(s.backend, "backend", BACKENDS)
    checks.choice(s.impl, "impl", IMPLS)
    for name in ("amp", "lower"):
        if not isinstance(getattr(s, name), bool):
            raise FastvizError(f"{name}: expected True or False, got {getattr(s, name)!r}")
    s = s.replace(seed=checks.seed(s.seed))  # an int, whatever integer type came
    for name in ("snapshot_every", "progress_every"):
        if getattr(s, name) is not None:
            checks.positive_int(getattr(s, name), name)
    checks.int_in(s.step_offset, "step_offset", 0)
    return s
