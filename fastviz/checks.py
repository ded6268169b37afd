"""The validation layer at the public boundary (docs/design.md, rule 9).

Every public function checks its arguments here, before anything is allocated, moved or hooked,
so a bad or absurd input fails in milliseconds with a `FastvizError` that names the argument,
what was expected and what came. Messages are built only when a check fails.

What is accepted, and converted how (docs/reliability.md has the table):
- integers: Python ints, numpy integer scalars, 0-d integer tensors (never bools, floats,
  strings or complex numbers: `int(1.5)` and `list("12")` would silently change the request);
- index lists: an int, a range, a sequence of the above, a 1-D int32 / int64 tensor or array;
- numbers: ints and finite floats (numpy / 0-d tensors too), in the range the argument allows;
- images: torch tensors (B, C, H, W) or (C, H, W), any layout (non-contiguous, channels_last);
  float16 / bfloat16 / float64 become float32, uint8 is divided by 255; NaN / inf refused;
  pixels outside [0, 1] refused when the model normalises its input (a `Model` with mean/std:
  [0, 1] is its contract, and out-of-range pixels usually mean an already-normalised batch),
  values within 1e-3 of the range are clamped silently (rounding of float16 / float64 sources);
- devices: "cpu", "cuda", "cuda:N" (N < the number of GPUs), torch.device; "meta" refused.
"""

from __future__ import annotations

import warnings

import math
import numbers
import operator
from typing import Iterable, Sequence

import torch

from .errors import FastvizError

# Beyond these an input is refused before anything is allocated (a broadcast view of
# 60000 x 60000 pixels, size=10**6): sides up to 16384 pixels, 2**31 elements per batch.
MAX_SIDE = 16384
MAX_ELEMENTS = 2 ** 31
MAX_SEED = 2 ** 63
RANGE_SLACK = 1e-3


def _show(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- integers ----------------------------------------------------------------------------------
def as_int(value, name: str) -> int:
    """A Python int from an int, a numpy integer or a 0-d integer tensor; else FastvizError."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise FastvizError(f"{name}: expected an int, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_floating_point() or value.is_complex():
            raise FastvizError(f"{name}: expected an int, got a {value.dtype} tensor of shape "
                               f"{tuple(value.shape)}")
        return int(value)
    try:
        return operator.index(value)  # int, numpy integers; not float, str, complex
    except TypeError:
        raise FastvizError(f"{name}: expected an int, got {type(value).__name__} {_show(value)}") from None


def int_in(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """An int with low <= value <= high (either bound None = open)."""
    v = as_int(value, name)
    if low is not None and v < low:
        want = "a non-negative int" if low == 0 else f"an int >= {low}"
        raise FastvizError(f"{name}: expected {want}{f' (at most {high})' if high is not None else ''}, got {v}")
    if high is not None and v > high:
        raise FastvizError(f"{name}: expected an int <= {high}, got {v}")
    return v


def positive_int(value, name: str, high: int | None = None) -> int:
    """An int >= 1 (and <= high when given)."""
    return int_in(value, name, 1, high)


def seed(value, name: str = "seed", allow_none: bool = False) -> int | None:
    """A seed in [0, 2**63): larger ones overflow inside torch's generators."""
    if value is None and allow_none:
        return None
    v = as_int(value, name)
    if not 0 <= v < MAX_SEED:
        raise FastvizError(f"{name}: expected an int in [0, 2**63), got {v}")
    return v


def index(value, name: str, upper: int | None, what: str = "index", of: str = "values") -> int:
    """One index in [0, upper): `class index 1000 is out of range for 1000 classes (0-999)`."""
    v = as_int(value, name)
    if v < 0 or (upper is not None and v >= upper):
        if upper is None:
            raise FastvizError(f"{name}: {what} {v} is negative")
        raise FastvizError(f"{name}: {what} {v} is out of range for {upper} {of} (0-{upper - 1})")
    return v


def index_list(values, name: str, upper: int | None = None, what: str = "index",
               of: str = "values") -> list[int]:
    """An int, a range, a sequence of ints or a 1-D integer tensor / array -> list of ints in [0, upper)."""
    if isinstance(values, (str, bytes)):
        raise FastvizError(f"{name}: expected ints, got the string {values!r}")
    if isinstance(values, torch.Tensor) or type(values).__module__ == "numpy":
        t = values if isinstance(values, torch.Tensor) else _from_numpy(values, name)
        if t.dim() == 0:
            return [index(t, name, upper, what, of)]
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise FastvizError(f"{name}: expected a 1-D tensor of integer indices, got {t.dtype} "
                               f"of shape {tuple(t.shape)}")
        values = t.tolist()
    elif not isinstance(values, Iterable):
        values = [values]
    elif not isinstance(values, (Sequence, range)):
        values = list(values)
    if len(values) == 0:
        raise FastvizError(f"{name}: expected at least one index, got none")
    if len(values) > 4096 and isinstance(values, (list, tuple)) and all(type(v) is int for v in values):
        t = torch.tensor(values) if max(values) < 2 ** 63 and min(values) >= -2 ** 63 else None
        if t is not None and bool((t >= 0).all()) and (upper is None or bool((t < upper).all())):
            return list(values)  # the common long list, checked in one pass
    return [index(v, name, upper, what, of) for v in values]


def _from_numpy(a, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError):
        raise FastvizError(f"{name}: expected integer indices, got an array of {getattr(a, 'dtype', '?')}") from None


# -- numbers and choices -------------------------------------------------------------------------
def number(value, name: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in [low, high] ((low, ...) with low_open); ints, floats, numpy, 0-d tensors."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FastvizError(f"{name}: expected a number, got {type(value).__name__} {_show(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise FastvizError(f"{name}: expected a finite number, got {v}")
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise FastvizError(f"{name}: expected a number in {'(' if low_open else '['}{lo}, {hi}"
                           f"{')' if high_open else ']'}, got {v}")
    return v


def choice(value, name: str, choices: Sequence[str]) -> str:
    """One of `choices` (exact strings)."""
    if not isinstance(value, str) or value not in choices:
        raise FastvizError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {_show(value)}")
    return value


def callable_or_none(value, name: str):
    if value is not None and not callable(value):
        raise FastvizError(f"{name}: expected a callable or None, got {type(value).__name__}")
    return value


def progress(value, name: str = "progress"):
    """The progress protocol (`fastviz.progress`): None, False, True (a tqdm bar) or a callable
    `progress(done, total)`."""
    if value is None or isinstance(value, bool) or callable(value):
        return value
    raise FastvizError(f"{name}: expected None, True / False (a progress bar) or a callable "
                       f"progress(done, total), got {type(value).__name__}")


def renamed(old_value, new_value, old: str, new: str, default):
    """The value of an argument renamed from `old` to `new`: the old name still works for one
    release, with a DeprecationWarning; both at once is an error."""
    if old_value is None:
        return new_value
    warnings.warn(f"{old}= is deprecated: use {new}= (the same meaning)", DeprecationWarning, stacklevel=3)
    if new_value != default:
        raise FastvizError(f"{old}, {new}: one argument given under both names; use {new}")
    return old_value


def floats(values, name: str, length: int | None = None, positive: bool = False) -> tuple[float, ...]:
    """A sequence of finite numbers (mean, std), of `length` when given."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise FastvizError(f"{name}: expected a sequence of numbers, got {_show(values)}")
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    out = tuple(number(v, name, 0 if positive else None, low_open=positive) for v in values)
    if not out or (length is not None and len(out) != length):
        want = f"{length} numbers" if length is not None else "at least one number"
        raise FastvizError(f"{name}: expected {want}, got {len(out)}")
    return out


def size2(value, name: str = "size", low: int = 1) -> tuple[int, int]:
    """An int or (H, W), each in [low, MAX_SIDE]."""
    if isinstance(value, (str, bytes)) or value is None:
        raise FastvizError(f"{name}: expected an int or (H, W), got {_show(value)}")
    if isinstance(value, Iterable) and not isinstance(value, torch.Tensor):
        parts = list(value)
        if len(parts) != 2:
            raise FastvizError(f"{name}: expected an int or (H, W), got {_show(value)}")
    else:
        parts = [value, value]
    h, w = (as_int(p, name) for p in parts)
    if not (low <= h <= MAX_SIDE and low <= w <= MAX_SIDE):
        raise FastvizError(f"{name}: expected sides in [{low}, {MAX_SIDE}] pixels, got {(h, w)}")
    return h, w


# -- devices -----------------------------------------------------------------------------------
def device(value, name: str = "device") -> torch.device | None:
    """None, or a device a call can run on: cpu, an existing cuda:N, mps where present."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.device)):
        raise FastvizError(f"{name}: expected a device such as 'cpu' or 'cuda:0', got "
                           f"{type(value).__name__} {_show(value)}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise FastvizError(f"{name}: expected a device such as 'cpu' or 'cuda:0', got {_show(value)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise FastvizError(f"{name}: {str(value)!r} asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= n:
            raise FastvizError(f"{name}: {str(value)!r} asked for, but there are {n} CUDA device(s) (0-{n - 1})")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return dev
    raise FastvizError(f"{name}: cannot run on {str(value)!r}; expected 'cpu' or 'cuda[:N]'"
                       + (" ('meta' tensors hold no data)" if dev.type == "meta" else ""))


# -- images ------------------------------------------------------------------------------------
def images(x, channels: int | None = None, name: str = "x", check_range: bool = False,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate an image batch -> (B, C, H, W) floating tensor (float32 when converted).

    Args:
        x: (B, C, H, W) or (C, H, W) tensor, any memory layout. float32 stays as it is (or
            `dtype` when given); float16 / bfloat16 / float64 become float32; uint8 is / 255.
        channels: the channel count the model takes, if known.
        name: the argument's name in messages.
        check_range: refuse pixels outside [0, 1] (beyond 1e-3; within it they are clamped).

    Raises:
        FastvizError: not a tensor, wrong rank or channels, empty, too large, another dtype,
            NaN / inf, out of [0, 1] with check_range.
    """
    if not isinstance(x, torch.Tensor):
        hint = ("; a numpy (H, W, 3) array becomes one with torch.from_numpy(a).permute(2, 0, 1)"
                if type(x).__module__ == "numpy" else "")
        raise FastvizError(f"{name}: expected a tensor of images (B, C, H, W), got {type(x).__name__}{hint}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise FastvizError(f"{name}: expected images (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise FastvizError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise FastvizError(f"{name}: empty batch, shape {tuple(x.shape)}")
    if max(x.shape[2:]) > MAX_SIDE or x.numel() > MAX_ELEMENTS:
        raise FastvizError(f"{name}: images of shape {tuple(x.shape)} are too large (sides up to "
                           f"{MAX_SIDE} pixels, up to 2**31 values a batch)")
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    elif not x.is_floating_point():
        raise FastvizError(f"{name}: expected float images in [0, 1] (or uint8 in 0-255), got dtype {x.dtype}")
    elif x.dtype != torch.float32 and (dtype is None or x.dtype != dtype):
        x = x.float()
    if x.device.type == "meta":
        raise FastvizError(f"{name}: a 'meta' tensor holds no pixels")
    # A broadcast view (stride 0) repeats its values: check one copy of them, not every repeat
    # (a 10**4-image expand would otherwise allocate a mask the size of the whole batch).
    distinct = x[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None) for s, n in zip(x.stride(), x.shape))]
    finite = torch.isfinite(distinct).all()
    if check_range:
        lo, hi = distinct.aminmax()
        lo, hi, finite = (float(lo), float(hi), bool(finite))  # one host read-back, at the boundary
    else:
        finite = bool(finite)
    if not finite:
        raise FastvizError(f"{name}: images hold NaN or inf pixels")
    if check_range and (lo < 0 or hi > 1):
        if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise FastvizError(
                f"{name}: pixels must be in [0, 1] (the Model normalises them), got values in "
                f"[{lo:.3g}, {hi:.3g}]; an already-normalised batch? pass the [0, 1] images, or "
                f"x.clamp(0, 1)")
        x = x.clamp(0, 1)
    return x
