"""One progress protocol for every long call: `progress=None | False | True | callable`.

- None or False: silent.
- True: a tqdm bar on stderr (tqdm is imported only then).
- a callable: called as `progress(done, total)` in the call's own unit (steps, images, targets),
  at the points where the call reads its state back anyway (no extra host sync).

`reporter(progress, total, ...)` turns any of these into one small object with `update(done)`
and `close()`; the functions that take `progress` check it with `checks.progress` at entry.
"""

from __future__ import annotations

from typing import Callable, Union

ProgressArg = Union[None, bool, Callable[[int, int], None]]


class Reporter:
    """Reports `done` out of `total` to a callback, a tqdm bar, or nothing."""

    def __init__(self, callback: Callable[[int, int], None] | None, bar, total: int):
        self.callback, self.bar, self.total = callback, bar, total

    def update(self, done: int) -> None:
        if self.callback is not None:
            self.callback(done, self.total)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reporter(progress: ProgressArg, total: int, *, unit: str = "step", desc: str | None = None,
             initial: int = 0) -> Reporter:
    """A `Reporter` for the `progress` argument of a public call (already checked)."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)
        return Reporter(None, bar, total)
    if callable(progress):
        return Reporter(progress, None, total)
    return Reporter(None, None, total)


def scaled(progress: ProgressArg, offset: int, total: int) -> ProgressArg:
    """The same protocol for one part of a larger job: `done` is shifted by `offset` and reported
    out of `total` (a bar or nothing stays as it is; the caller owns the bar)."""
    if callable(progress) and progress is not True:
        return lambda done, _part_total: progress(offset + done, total)
    return progress
