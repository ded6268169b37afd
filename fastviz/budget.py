"""Memory: the budget every call runs inside, and what one row of a network costs.

`memory_budget(nbytes)` sets the budget for the process (and, used as a `with` block, for that
block only, like `torch.set_grad_enabled`); `None` (the default) means a safe share of the free
memory of the device a call runs on: half of `MemAvailable` on the CPU, 80% of the free memory
on a GPU.

What a call needs is estimated, not guessed from the image size alone: `profile(model, x)`
runs one image of that shape through the network once (no gradient to any parameter), under a
dispatch mode that adds up the bytes of every tensor the forward creates (what autograd can
save for a backward) and notes the largest one. The result is cached per (network, image
shape, device, dtype), so a network pays this one forward once per input size and never again:
the common path costs a dictionary lookup. The same forward finds images that are smaller than
the network takes (a kernel larger than the map it slides over) and says what the smallest
side is.

`rows(...)` turns a profile and the budget into the number of rows (images, path points, noisy
copies, masks, perturbations, synthesis targets) one forward may take; a method splits its work
into chunks of that many rows, or refuses, before anything is allocated, what cannot fit even
as one row, naming the argument, the estimate, the budget and what to do. `check_output`
refuses a result that would not fit.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import checks
from .errors import FastvizError

__all__ = ["memory_budget", "current", "profile", "rows", "check_output", "by_rows", "row_slice", "Profile"]

_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("fastviz_memory_budget", default=None)
CPU_SHARE = 0.5   # of MemAvailable: other processes (and the allocator's slack) keep the rest
GPU_SHARE = 0.8   # of the free device memory
# A backward holds, beside what the forward saved, the gradient flowing through the largest
# activation, the gradient it produces and a temporary: 3 x the largest tensor (measured on
# EfficientNet-Lite0 and DenseNet; docs/reliability.md gives the figures).
BACKWARD_LARGEST = 3
# A forward without gradient keeps a few activations alive at once (a residual branch, a dense
# block's features, their concatenation and its normalised copy); 8 x the largest tensor, or
# every tensor if that is less (DenseNet-201 measured 12-23 MB a row for 8 x 3.1 MB).
FORWARD_LARGEST = 8
# Images above this many pixels are measured shrunk, and the measure scaled (see `profile`).
MEASURE_PIXELS = 256 * 256


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# -- the budget ---------------------------------------------------------------------------------
class memory_budget:
    """The memory every fastviz call runs inside, in bytes; None = the default share of free memory.

    Called, it sets the budget for the process; used as a `with` block, it sets it for the block
    and puts the previous one back at its end (also when the block raises).

    Args:
        nbytes: the budget in bytes (an int >= 1 MB), or None for the default (half of the free
            host memory on the CPU, 80% of the free device memory on a GPU).

    Example:
        >>> with fv.memory_budget(2 * 2**30):      # 2 GB for these calls
        ...     r = fv.integrated_gradients(model, x, points=200)
        >>> fv.memory_budget(None)                  # back to the default
    """

    def __init__(self, nbytes: int | None):
        if nbytes is not None:
            nbytes = checks.int_in(nbytes, "nbytes", 2 ** 20)
        self._previous = _BUDGET.get()
        self.nbytes = nbytes
        _BUDGET.set(nbytes)

    def __enter__(self) -> "memory_budget":
        return self

    def __exit__(self, *exc) -> None:
        _BUDGET.set(self._previous)

    def __repr__(self) -> str:
        return f"memory_budget({self.nbytes})"


def proc_bytes(field: str, path: str = "/proc/self/status") -> int | None:
    """A "Field:  N kB" line of a /proc file in bytes (VmRSS, VmHWM of this process; MemAvailable
    of /proc/meminfo); None where there is no such file or line (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _host_available() -> int:
    free = proc_bytes("MemAvailable", "/proc/meminfo")
    if free is not None:
        return free
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def current(device: torch.device | None = None) -> tuple[int, bool]:
    """(budget in bytes for a call on `device`, True when the user set it)."""
    set_ = _BUDGET.get()
    if set_ is not None:
        return set_, True
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # memory torch already reserved and holds free is free for this call too
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free * GPU_SHARE), False
    return int(_host_available() * CPU_SHARE), False


def _budget_text(budget: int, set_: bool) -> str:
    return (f"the memory budget of {_fmt(budget)} (fv.memory_budget)" if set_ else
            f"the memory budget of {_fmt(budget)} (the default: a share of the free memory)")


# -- what one row costs -------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """Bytes one image of one shape costs in a network.

    Attributes:
        created: bytes of every tensor a forward with autograd creates (an upper bound of what
            it saves for the backward).
        largest: bytes of the largest of them.
        image: bytes of the image itself.
    """

    created: int
    largest: int
    image: int

    def row(self, grad: bool) -> int:
        """Bytes per row: forward + backward to the image (grad) or a forward alone."""
        if grad:
            return self.created + BACKWARD_LARGEST * self.largest + 2 * self.image
        return min(self.created, FORWARD_LARGEST * self.largest) + self.image


class _Tally(TorchDispatchMode):
    """Adds up the bytes of each new tensor an op returns (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.created = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in flat_in if t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage.data_ptr() not in inputs:
                    n = storage.nbytes()
                    self.created += n
                    self.largest = max(self.largest, n)
        return out


# network -> {(C, H, W, device, dtype): Profile | None}; None: the forward could not be measured
_PROFILES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_TOO_SMALL = re.compile(r"Kernel size can't be greater|Output size is too small|smaller than kernel size|"
                        r"Padding size should be less|output size is too small|non-positive output size",
                        re.IGNORECASE)


def _forward(m, x: torch.Tensor) -> None:
    # the module itself: the output selector and the class count are no concern of the probe
    m.module(m.fit(m.normalize(x)))


def profile(model, x: torch.Tensor, name: str = "x") -> Profile | None:
    """What one image of x's shape costs in the network, measured once per (network, shape).

    Args:
        model: a `Model` (already wrapped).
        x: (B, C, H, W) checked images (only x[:1] runs).
        name: the images' argument name, for messages.

    Returns:
        The `Profile`, or None when the network's forward raised something other than a size
        error (the call itself then raises it, as it would have).

    Raises:
        FastvizError: the images are smaller than the network takes (names `name` and the
            smallest side that runs).
    """
    from .hooks import session  # hooks imports models; kept local so budget stays a leaf

    key = (*x.shape[1:], x.device, x.dtype)
    cache = _PROFILES.setdefault(model.module, {})
    if key in cache:
        return cache[key]
    one = x[:1].detach()
    h, w = one.shape[-2:]
    scale = 1.0
    if h * w > MEASURE_PIXELS:
        # Measured on a copy shrunk to MEASURE_PIXELS (same aspect) and scaled up: a network's
        # activations grow with the pixel count, and the image itself may not fit (14000 x 14000).
        f = (MEASURE_PIXELS / (h * w)) ** 0.5
        small = (max(1, round(h * f)), max(1, round(w * f)))
        scale = (h * w) / (small[0] * small[1]) * 1.05  # + stride rounding
        one = one.new_zeros(1, one.shape[1], *small)
    tally = _Tally()
    result: Profile | None
    try:
        with session(model), torch.enable_grad():
            xi = one.clone().requires_grad_(True)
            with tally:
                _forward(model, xi)
        result = Profile(int(tally.created * scale), int(tally.largest * scale),
                         x[:1].numel() * x.element_size())
    except RuntimeError as e:
        if not _TOO_SMALL.search(str(e)):
            result = None
        else:
            raise _too_small(model, one, name, e) from None
    except Exception:  # the call itself will raise it, with its own message
        result = None
    cache[key] = result
    return result


def _runs(model, side: int, like: torch.Tensor) -> bool:
    from .hooks import session

    try:
        with session(model), torch.no_grad():
            _forward(model, like.new_zeros(1, like.shape[1], side, side))
        return True
    except RuntimeError as e:
        if _TOO_SMALL.search(str(e)):
            return False
        raise


def smallest_side(model, like: torch.Tensor) -> int | None:
    """The smallest square side the network takes (one-image forwards, bisected), or None."""
    lo, hi = max(like.shape[-2:]), None
    side = max(2 * lo, 16)
    while side <= checks.MAX_SIDE:
        if _runs(model, side, like):
            hi = side
            break
        lo, side = side, side * 2
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs(model, mid, like) else (mid, hi)
    return hi


def _too_small(model, one: torch.Tensor, name: str, error: Exception) -> FastvizError:
    h, w = one.shape[-2:]
    try:
        side = smallest_side(model, one)
    except RuntimeError:
        side = None
    size = f"; its input size is {model.input_size[0]}x{model.input_size[1]}" if model.input_size else ""
    if side is not None:
        return FastvizError(
            f"{name}: images of {h}x{w} pixels are smaller than {model.name} takes (its layers "
            f"shrink them below a kernel's size); the smallest it takes is {side}x{side}{size}. "
            f"Resize them, e.g. torch.nn.functional.interpolate(x, size={side})")
    return FastvizError(f"{name}: images of {h}x{w} pixels are smaller than {model.name} takes{size} "
                        f"(torch: {str(error).splitlines()[0][:160]})")


# -- rows that fit --------------------------------------------------------------------------------
def rows(model, x: torch.Tensor, *, grad: bool, total: int, requested: int | None = None,
         fixed: int = 0, per_row_extra: int = 0, name: str = "x", what: str = "one image",
         device: torch.device | None = None) -> int:
    """How many rows one forward (+ backward) may take within the budget; at least 1.

    Args:
        model: a `Model`.
        x: (B, C, H, W) checked images of the shape each row has.
        grad: rows run forward + backward to the image (else a forward alone).
        total: rows the call has to run (the answer is at most this).
        requested: the caller's batch_size (the answer is at most this too).
        fixed: bytes the call holds besides the rows (its outputs, accumulators).
        per_row_extra: bytes each row holds besides the network (masks, noise, a path point).
        name, what: the argument to name, and what a row is, in messages.
        device: where the rows will run, when not where x is (the budget is that device's).

    Raises:
        FastvizError: even one row does not fit (naming `name`, the estimate, the budget and
            what to do).
    """
    prof = profile(model, x, name)
    cap = total if requested is None else min(total, requested)
    if prof is None:
        return max(1, cap)
    budget, set_ = current(x.device if device is None else device)
    per_row = prof.row(grad) + per_row_extra
    room = budget - fixed
    if room < per_row:
        h, w = x.shape[-2:]
        held = f" beside the {_fmt(fixed)} the call's results hold" if fixed else ""
        smaller = (f" (its input size is {model.input_size[0]}x{model.input_size[1]})"
                   if model.input_size and tuple(model.input_size) != (h, w) else "")
        raise FastvizError(
            f"{name}: {what} of {h}x{w} pixels needs about {_fmt(per_row)} in {model.name} "
            f"({'forward + backward' if grad else 'forward'}){held}, more than "
            f"{_budget_text(budget, set_)}; resize the images to a lower input size{smaller}, "
            f"or raise the budget with fv.memory_budget(bytes)")
    return max(1, min(cap, room // per_row))


def check_output(nbytes: int, device: torch.device, name: str, what: str, hint: str = "") -> None:
    """Refuse a result of `nbytes` that does not fit the budget, before it is allocated."""
    budget, set_ = current(device)
    if nbytes > budget:
        raise FastvizError(f"{name}: the result, {what}, would take {_fmt(nbytes)}, more than "
                           f"{_budget_text(budget, set_)}; {hint or 'pass fewer images per call'}")


# -- chunks ---------------------------------------------------------------------------------------
def row_slice(target, i: int, j: int):
    """Rows i:j of a per-row argument (a list, tensor or array of one value per row); a value
    for every row (None, an int, a 0-d tensor, a `Neuron`) as it is."""
    if target is None or isinstance(target, (str, bytes)) or getattr(target, "ndim", None) == 0 \
            or not hasattr(target, "__getitem__") or not hasattr(target, "__len__"):
        return target
    return target[i:j]


def _place(out, part, i: int, total: int):
    """Write one chunk's result at rows i: of the whole (allocated at the first chunk)."""
    if part is None:
        return None
    if isinstance(part, torch.Tensor):
        if out is None:
            out = part.new_empty((total, *part.shape[1:]))
        out[i:i + part.shape[0]] = part
        return out
    if isinstance(part, list):
        return (out or []) + part
    if isinstance(part, tuple):
        return tuple(_place(None if out is None else o, p, i, total) for o, p in zip(out or [None] * len(part), part))
    if dataclasses.is_dataclass(part):
        fields = {f.name: _place(None if out is None else getattr(out, f.name), getattr(part, f.name), i, total)
                  for f in dataclasses.fields(part)}
        return type(part)(**fields)
    raise TypeError(f"cannot join chunk results of type {type(part).__name__}")


def by_rows(call, x: torch.Tensor, target, step: int, name: str = "target"):
    """`call(x, target)` on chunks of `step` images, the results joined as if run at once.

    Every row's result depends on that row alone (eval mode, frozen parameters), so the chunks
    give the unchunked result up to the rounding of batch-size-dependent kernels. Results are
    tensors (B, ...), lists, or tuples / dataclasses of them (None stays None); the whole is
    allocated once, at the first chunk. With step >= B, `call(x, target)` itself runs: the
    common path is unchanged.
    """
    n = x.shape[0]
    if step >= n:
        return call(x, target)
    per_row = row_slice(target, 0, n)
    if per_row is not target and len(target) != n:
        raise FastvizError(f"{name}: expected one class per image ({n}), got {len(target)}")
    out = None
    for i in range(0, n, step):
        out = _place(out, call(x[i:i + step], row_slice(target, i, i + step)), i, n)
    return out
