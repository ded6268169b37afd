"""The synthesis loop: one engine for class models, features, neurons, DeepDream and inversion.

The engine is handed small objects and asks none of them what it is:
- a `Param` (`fastviz.param`: pixel, fft, maco): `image()`, `update(...)`, `reset()`, `leaf`;
- an `Objective` (`fastviz.objectives`): the layers it reads and one score per row;
- one frozen `Settings` (`fastviz.settings`), already checked at the public boundary.

A step is: image = param.image() -> the views the network sees (`fastviz.transforms.Views`:
jitter, then k random transformed views per image) -> forward, stopped at the deepest layer the
objective needs -> per-row objective (mean over a row's views) -> gradient to the leaf only
(network parameters frozen) -> optimiser direction (`fastviz.optim`) -> param.update (pixels:
the Yosinski regularizer step written into the leaf in place; spectra: leaf += lr d).

Two backends run that same step:
- "eager": torch ops, on the CPU or CUDA. No host sync inside a step: scores go into a device
  history buffer that is read back only at progress / snapshot points.
- "graph" (CUDA): the step is warmed up on a side stream, then `period` steps (one blur period,
  so the blur-every-k schedule needs no host control flow) are captured once in a CUDA graph
  and replayed; step counters and the history index live on the device.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .errors import FastvizError
from .hooks import session
from .lower import lowered
from .models import Model
from .objectives import LOGITS, Objective
from .optim import OPTIMIZERS
from .param import Param
from .settings import Settings
from .transforms import Views

Progress = Callable[[int, int], None]


@dataclass
class Render:
    """The result of a synthesis run.

    Attributes:
        images: (B, 3, H, W) in [0, 1], on the CPU.
        history: (steps, B) objective per step and row, on the CPU.
        snapshots: [(step, (B, 3, H, W) images)] every `snapshot_every` steps.
        objective: a description of what was maximised.
        info: backend, device, seconds, steps per second, the parameterisation, the lowering.
    """

    images: Tensor
    history: Tensor
    snapshots: list = field(default_factory=list)
    objective: str = ""
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Render({tuple(self.images.shape)} images, {self.history.shape[0]} steps, "
                f"{self.objective}, {self.info.get('backend')})")


class Loop:
    """The state of one batched run (static buffers) and its step.

    Args:
        sess: the restoring session of the network the loop runs (`fastviz.hooks.session`).
        objective: per-row objective, on the leaf's device.
        param: the parameterisation; its leaf is what the optimiser updates.
        settings: the checked settings.
        history_steps: rows of the history buffer (>= the steps run, warm-up included).
    """

    def __init__(self, sess, objective: Objective, param: Param, settings: Settings, history_steps: int):
        self.sess, self.param, self.settings = sess, param, settings
        device = param.leaf.device
        self.views = Views(settings.jitter, settings.transforms, settings.seed, device, settings.view_size)
        # One objective row per network row: each image's targets repeated over its views.
        self.objective = objective
        self.view_objective = objective.repeat(self.views.count) if self.views.count > 1 else objective
        self.opt = OPTIMIZERS[settings.optimizer](param.leaf)
        self.layers = sorted(objective.layers - {LOGITS})
        self.stop = not objective.needs_logits
        self.history = torch.zeros(history_steps, param.rows, device=device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)

    def reset(self) -> None:
        """Back to the start (after a warm-up): image, optimiser state, history, counter, views."""
        self.views.reset()
        with torch.no_grad():
            self.param.reset()
            self.opt.reset()
            self.history.zero_()
            self.counter.zero_()

    def image(self) -> Tensor:
        """(B, C, H, W) current image in [0, 1]."""
        with torch.no_grad():
            return self.param.image().clamp(0, 1)

    def activations(self, img: Tensor) -> dict[str, Tensor]:
        amp = (torch.autocast(img.device.type, dtype=torch.bfloat16, cache_enabled=False)
               if self.settings.amp else contextlib.nullcontext())
        with amp:
            acts, logits = self.sess.forward(img, self.layers, stop=self.stop)
        if logits is not None:
            acts[LOGITS] = logits
        return acts

    def check(self) -> None:
        """One forward to validate the objective's indices against real shapes (host side, once)."""
        with torch.no_grad():
            self.objective.check(self.activations(self.views.fit(self.image())))

    def step(self, blur: bool) -> None:
        s, leaf = self.settings, self.param.leaf
        img = self.views(self.param.image())  # (B * views, C, H, W)
        score = self.views.mean(self.view_objective.score(self.activations(img), img).float())
        total = score.sum()
        if s.l2:
            total = total - s.l2 * leaf.square().sum()
        (g,) = torch.autograd.grad(total, leaf)
        with torch.no_grad():
            d = self.opt.direction(g)
            self.param.update(d, g, lr=s.lr, reg=s.reg, blur=blur, impl=s.impl)
            self.history.index_copy_(0, self.counter.view(1), score.detach()[None])
            self.counter.add_(1)


class GraphLoop:
    """A CUDA graph of `period` consecutive steps of a Loop, replayed (docs/design.md, rule 7)."""

    def __init__(self, loop: Loop, period: int, warmup: int = 2):
        self.loop, self.period = loop, period
        self.pattern = [loop.settings.reg.blur_at(j) for j in range(period)]
        side = torch.cuda.Stream(device=loop.param.leaf.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._steps()
        torch.cuda.current_stream().wait_stream(side)
        loop.reset()
        self.graph = torch.cuda.CUDAGraph()
        if loop.views.generator is not None:
            self.graph.register_generator_state(loop.views.generator)
        with torch.cuda.graph(self.graph):
            self._steps()

    def _steps(self) -> None:
        for blur in self.pattern:
            self.loop.step(blur)

    def replay(self) -> None:
        self.graph.replay()


def _check_finite(history: Tensor, start: int, stop: int) -> None:
    chunk = history[start:stop]
    bad = ~torch.isfinite(chunk)
    if bool(bad.any()):
        step, row = (int(v) for v in bad.nonzero()[0])
        raise FastvizError(f"objective became {float(chunk[step, row])} at step {start + step} "
                           f"(row {row}); lower lr or strengthen the regularizer")


def _capture(loop: Loop, backend: str, period: int, warmup: int) -> GraphLoop | None:
    """The CUDA graph of the loop, or None for eager; a failed capture raises under
    backend="graph" and warns (then runs eager) under "auto" (docs/design.md, rule 7)."""
    try:
        return GraphLoop(loop, period, warmup)
    except FastvizError:
        raise
    except Exception as e:
        if backend == "graph":
            raise FastvizError(f"backend: CUDA graph capture failed ({type(e).__name__}: {e})") from e
        warnings.warn(f"fastviz: CUDA graph capture failed, running eager ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=3)
        loop.reset()
        return None


def run(model: Model, objective: Objective, param: Param, settings: Settings, *,
        progress: Progress | None = None) -> Render:
    """Run `settings.steps` steps of gradient ascent on the rows of `param`.

    Args:
        model: wrapped network, on the device of `param.leaf`.
        objective: per-row objective (rows == param.rows, or row-independent).
        param: the parameterisation (`fastviz.param.make_param`).
        settings: the checked settings (`fastviz.settings.loop_settings`).
        progress: called as progress(steps_done, steps) at read-back points.

    Returns:
        Render with images, history, snapshots.

    Raises:
        FastvizError: backend="graph" off CUDA, a failed graph capture under backend="graph",
            an objective index the network's shapes refuse, or a run that became non-finite.
    """
    s = settings
    device = param.leaf.device
    if s.backend == "graph" and device.type != "cuda":
        raise FastvizError(f"backend: 'graph' needs a CUDA device, got {device}")
    use_graph = s.backend == "graph" or (s.backend == "auto" and device.type == "cuda")
    every = s.progress_every or (16 if device.type == "cuda" else 1)
    period = s.reg.blur_every if s.reg.blur_every > 0 else 1
    warmup = 2

    t0 = time.perf_counter()
    # The one place the loop's network is chosen: the user's, or its lowered copy.
    example = Views(0, None, 0, device, s.view_size).fit(param.image().detach())  # what the network sees
    net = lowered(model, example, keep=objective.layers - {LOGITS}) if s.lower else model
    with session(net) as sess:
        # The history also holds the graph's warm-up steps (overwritten after the reset).
        loop = Loop(sess, objective.to(device), param, s, max(s.steps, warmup * period))
        loop.check()
        graph = _capture(loop, s.backend, period, warmup) if use_graph else None
        snapshots = []
        done, read, next_snapshot = 0, 0, s.snapshot_every or s.steps + 1
        t1 = time.perf_counter()
        while done < s.steps:
            # A replay covers one blur period from a step that is a multiple of it.
            if graph is not None and (s.step_offset + done) % period == 0 and s.steps - done >= period:
                graph.replay()
                done += period
            else:
                loop.step(s.reg.blur_at(s.step_offset + done))
                done += 1
            # With a graph, snapshots fall on the first replay boundary at or after each multiple.
            at_snapshot = done >= next_snapshot
            if done - read >= every or done == s.steps or at_snapshot:
                _check_finite(loop.history, read, done)
                read = done
                if progress is not None:
                    progress(done, s.steps)
            if at_snapshot:
                snapshots.append((done, loop.image().cpu()))
                next_snapshot += s.snapshot_every * ((done - next_snapshot) // s.snapshot_every + 1)
        images = loop.image()
        if not bool(torch.isfinite(images).all()):
            raise FastvizError(f"image became non-finite by step {s.steps}")
        images, history = images.cpu(), loop.history[:s.steps].cpu()
    t2 = time.perf_counter()
    info = {"backend": "graph" if graph is not None else "eager", "device": str(device),
            "seconds": t2 - t0, "loop_seconds": t2 - t1, "steps_per_second": s.steps / (t2 - t1),
            "impl": s.impl, "amp": s.amp, "param": param.name, "views": loop.views.count,
            "lower": net.report.summary() if s.lower else None}
    return Render(images, history, snapshots, objective.description, info)
