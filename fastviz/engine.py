"""The synthesis loop: one engine for class models, features, neurons, DeepDream and inversion.

A step is: image = param.image() (pixel: mean + x, x centred, so the "zero image" is the mean
colour; fft / maco: a spectrum to an image, see `fastviz.param`) -> optional jitter -> optional
random transforms (k views per image, one affine warp into a fixed buffer, `fastviz.transforms`)
-> forward, stopped at the deepest layer the objective needs -> per-row objective (mean over a
row's views) -> gradient to the parameterisation's leaf only (network parameters frozen) ->
optimiser direction -> param.update: for pixels the regularizer step (update, L2 decay, blur, the
two Yosinski clips, clamp to the valid range) written into x in place, for the others leaf += lr d.

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

from . import checks
from .errors import FastvizError
from .hooks import session
from .lower import lowered
from .models import Model
from .objectives import LOGITS, Objective
from .param import Param, Pixel, check_reg
from .regularizers import NONE, Yosinski
from .transforms import Transforms

Progress = Callable[[int, int], None]


@dataclass
class Render:
    """The result of a synthesis run.

    Attributes:
        images: (B, 3, H, W) in [0, 1], on the CPU.
        history: (steps, B) objective per step and row, on the CPU.
        snapshots: [(step, (B, 3, H, W) images)] every `snapshot_every` steps.
        objective: a description of what was maximised.
        info: backend, device, seconds, steps per second.
    """

    images: Tensor
    history: Tensor
    snapshots: list = field(default_factory=list)
    objective: str = ""
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Render({tuple(self.images.shape)} images, {self.history.shape[0]} steps, "
                f"{self.objective}, {self.info.get('backend')})")


# -- optimisers: a direction from the gradient, state in preallocated buffers ------------------
class SGD:
    """Momentum SGD: v = momentum * v + g; direction v."""

    def __init__(self, x: Tensor, momentum: float = 0.9):
        self.momentum = momentum
        self.v = torch.zeros_like(x)

    def reset(self) -> None:
        self.v.zero_()

    def direction(self, g: Tensor) -> Tensor:
        if self.momentum == 0:
            return g
        return self.v.mul_(self.momentum).add_(g)


class Adam:
    """Adam (Kingma & Ba) with the step count on the device, so a CUDA graph can replay it."""

    def __init__(self, x: Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.d = torch.zeros_like(x)
        self.t = torch.zeros((), device=x.device)

    def reset(self) -> None:
        for t in (self.m, self.v, self.d, self.t):
            t.zero_()

    def direction(self, g: Tensor) -> Tensor:
        self.t.add_(1)
        self.m.lerp_(g, 1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        bc1 = 1 - torch.pow(self.b1, self.t)
        bc2 = 1 - torch.pow(self.b2, self.t)
        # d = m_hat / (sqrt(v_hat) + eps), built in the preallocated buffer.
        torch.div(self.v, bc2, out=self.d)
        self.d.sqrt_().add_(self.eps).mul_(bc1)
        return torch.div(self.m, self.d, out=self.d)


class Normalized:
    """The DeepDream step: the gradient divided by its mean magnitude, per image (no state).

    Unlike Adam, pixels with a small gradient move little, so the image changes where the
    objective responds.
    """

    def __init__(self, x: Tensor, eps: float = 1e-8):
        self.eps = eps
        self.d = torch.zeros_like(x)

    def reset(self) -> None:
        self.d.zero_()

    def direction(self, g: Tensor) -> Tensor:
        scale = g.abs().mean((1, 2, 3), keepdim=True).add_(self.eps)
        return torch.div(g, scale, out=self.d)


OPTIMIZERS = {"adam": Adam, "sgd": SGD, "normalized": Normalized}


def _roll(img: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Roll each row by its own integer (dy, dx) pixels (wrapping around, as DeepDream's np.roll).

    dy, dx: (B,) int64 on the device. Two gathers with broadcast (never materialised) indices:
    exact, differentiable, fixed shapes, and deterministic under
    torch.use_deterministic_algorithms (grid_sample's backward is not).
    """
    b, c, h, w = img.shape
    iy = (torch.arange(h, device=img.device)[None] - dy[:, None]).remainder_(h)
    ix = (torch.arange(w, device=img.device)[None] - dx[:, None]).remainder_(w)
    img = img.gather(2, iy[:, None, :, None].expand(b, c, h, w))
    return img.gather(3, ix[:, None, None, :].expand(b, c, h, w))


class Loop:
    """The state of one batched run (static buffers) and its step.

    Args:
        model: the wrapped network (already on the device, inside a session).
        objective: per-row objective, already on the device.
        x0: (B, C, H, W) centred start image on the device (a `Pixel`), or a `Param`.
        steps: total steps (sizes the history buffer).
        transforms: random views of each image per step (None: the image as is).
    """

    def __init__(self, sess, objective: Objective, x0: Tensor | Param, steps: int, *, reg: Yosinski,
                 optimizer: str, lr: float, l2: float, jitter: int, impl: str, amp: bool,
                 seed: int = 0, transforms: Transforms | None = None):
        self.sess, self.model = sess, sess.model
        self.param = x0 if isinstance(x0, Param) else Pixel(x0, self.model.mean_tensor(x0))
        self.x = self.param.leaf  # what the optimiser updates
        device = self.x.device
        self.transforms = transforms
        self.views = transforms.crops if transforms is not None else 1
        self.objective = objective
        # One objective row per network row: each image's targets repeated over its views.
        self.view_objective = objective.repeat(self.views) if self.views > 1 else objective
        self.reg, self.lr, self.l2, self.jitter, self.impl, self.amp = reg, lr, l2, jitter, impl, amp
        self.seed = seed
        self.generator = None
        if jitter or transforms is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        if optimizer not in OPTIMIZERS:
            raise FastvizError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.opt = OPTIMIZERS[optimizer](self.x)
        self.layers = sorted(objective.layers - {LOGITS})
        self.stop = not objective.needs_logits
        self.history = torch.zeros(steps, self.param.rows, device=device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)

    def reset(self) -> None:
        """Back to the start (after a warm-up): image, optimiser state, history, counter, jitter."""
        if self.generator is not None:
            self.generator.manual_seed(self.seed)
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
        amp = torch.autocast(img.device.type, dtype=torch.bfloat16, cache_enabled=False) if self.amp else contextlib.nullcontext()
        with amp:
            acts, logits = self.sess.forward(img, self.layers, stop=self.stop)
        if logits is not None:
            acts[LOGITS] = logits
        return acts

    def check(self) -> None:
        """One forward to validate the objective's indices against real shapes (host side, once)."""
        with torch.no_grad():
            self.objective.check(self.activations(self.image()))

    def step(self, blur: bool) -> None:
        img = self.param.image()
        if self.jitter:
            shift = torch.randint(-self.jitter, self.jitter + 1, (2, img.shape[0]), device=img.device,
                                  generator=self.generator)
            img = _roll(img, shift[0], shift[1])
        if self.transforms is not None:
            img = self.transforms(img, self.generator)  # (B * views, C, H, W)
        score = self.view_objective.score(self.activations(img), img).float()
        if self.views > 1:
            score = score.view(-1, self.views).mean(1)
        total = score.sum()
        if self.l2:
            total = total - self.l2 * self.x.square().sum()
        (g,) = torch.autograd.grad(total, self.x)
        with torch.no_grad():
            d = self.opt.direction(g)
            self.param.update(d, g, lr=self.lr, reg=self.reg, blur=blur, impl=self.impl)
            self.history.index_copy_(0, self.counter.view(1), score.detach()[None])
            self.counter.add_(1)


class GraphLoop:
    """A CUDA graph of `period` consecutive steps of a Loop, replayed (docs/design.md, rule 7)."""

    def __init__(self, loop: Loop, period: int, warmup: int = 2):
        self.loop, self.period = loop, period
        self.pattern = [loop.reg.blur_at(j) for j in range(period)]
        side = torch.cuda.Stream(device=loop.x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._steps()
        torch.cuda.current_stream().wait_stream(side)
        loop.reset()
        self.graph = torch.cuda.CUDAGraph()
        if loop.generator is not None:
            self.graph.register_generator_state(loop.generator)
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


def check_loop(rows: int, steps, **loop) -> None:
    """Validate `run`'s arguments before anything is allocated (`render_objective` calls it
    first, `run` again): each bad value raises FastvizError naming it.

    Names `run` does not take are refused here too (they would be Python TypeErrors later).
    """
    import inspect

    known = inspect.signature(run).parameters
    unknown = sorted(k for k in loop if k not in known or k in ("model", "objective", "x0", "steps"))
    if unknown:
        takes = sorted(k for k in known if k not in ("model", "objective", "x0", "steps"))
        raise FastvizError(f"{unknown[0]}: not an argument of the synthesis loop; it takes "
                           f"{', '.join(takes)}")
    steps = checks.positive_int(steps, "steps", 10 ** 8)
    if steps * rows > checks.MAX_ELEMENTS:
        raise FastvizError(f"steps: {steps} steps x {rows} rows is more history than a run keeps "
                           f"(2**31 values); render in batches or fewer steps")
    get = loop.get
    if "reg" in loop and not isinstance(loop["reg"], Yosinski):
        raise FastvizError(f"reg: expected a fastviz.Yosinski (or fastviz.regularizers.NONE), got "
                           f"{type(loop['reg']).__name__}")
    if "optimizer" in loop:
        checks.choice(loop["optimizer"], "optimizer", sorted(OPTIMIZERS))
    if "lr" in loop:
        checks.number(loop["lr"], "lr", 0, 1e6, low_open=True)
    if "l2" in loop:
        checks.number(loop["l2"], "l2", 0, 1e6)
    if "jitter" in loop:
        checks.int_in(loop["jitter"], "jitter", 0, checks.MAX_SIDE)
    if "backend" in loop:
        checks.choice(loop["backend"], "backend", ("auto", "eager", "graph"))
    if "impl" in loop:
        checks.choice(loop["impl"], "impl", ("auto", "triton", "torch"))
    if "amp" in loop and not isinstance(loop["amp"], bool):
        raise FastvizError(f"amp: expected True or False, got {loop['amp']!r}")
    if "seed" in loop:
        checks.seed(loop["seed"])
    for name in ("snapshot_every", "progress_every"):
        if get(name) is not None:
            checks.positive_int(loop[name], name)
    if "progress" in loop:
        checks.callable_or_none(loop["progress"], "progress")
    if "step_offset" in loop:
        checks.int_in(loop["step_offset"], "step_offset", 0)


def run(model: Model, objective: Objective, x0: Tensor | Param, steps: int, *, reg: Yosinski = NONE,
        optimizer: str = "adam", lr: float = 0.05, l2: float = 0.0, jitter: int = 0,
        transforms: Transforms | None = None,
        backend: str = "auto", impl: str = "auto", amp: bool = False, lower: bool = True,
        seed: int = 0, snapshot_every: int | None = None, progress: Progress | None = None,
        progress_every: int | None = None, step_offset: int = 0) -> Render:
    """Run `steps` steps of gradient ascent on a batch of centred images.

    Args:
        model: wrapped network, on the device of x0.
        objective: per-row objective (rows == B, or row-independent).
        x0: (B, C, H, W) centred start (image = model mean + x0, a `Pixel`), or a `Param`
            (`fastviz.param`: fft, maco) whose leaf is on the model's device.
        steps: number of steps, >= 1.
        reg: Yosinski regularizer configuration (`NONE` for none).
        optimizer: "adam", "sgd" (momentum 0.9) or "normalized" (g / mean |g| per image).
        lr: step size on the [0, 1] image scale.
        l2: Simonyan's lambda: the objective is score - l2 * ||x||^2.
        jitter: random integer translation of up to this many pixels per step and row.
        transforms: random per-row views (`fastviz.Transforms`): k crops = k network rows per
            image, the objective averaged over them. None: the image as is.
        backend: "auto" (graph on CUDA, eager elsewhere), "eager" or "graph".
        impl: regularizer implementation, "auto" | "triton" | "torch".
        amp: bf16 autocast for the network (the image stays fp32).
        lower: run the loop through the lowered copy of the network (`fastviz.lower`: BN folded
            into the convolutions, channels_last; cached per device until the weights change)
            instead of the network as it is. The user's network is not touched either way.
        seed: seeds the device generator used for jitter and transforms.
        snapshot_every: copy the images to the host every n steps.
        progress: called as progress(steps_done, steps) at read-back points.
        progress_every: steps between read-backs (default: 1 on the CPU, 16 on CUDA).
        step_offset: where the blur schedule starts (for runs split into octaves).

    Returns:
        Render with images, history, snapshots.
    """
    rows = x0.rows if isinstance(x0, Param) else x0.shape[0]
    check_loop(rows, steps, reg=reg, optimizer=optimizer, lr=lr, l2=l2, jitter=jitter,
               backend=backend, impl=impl, amp=amp, seed=seed, snapshot_every=snapshot_every,
               progress=progress, progress_every=progress_every, step_offset=step_offset)
    if objective.rows is not None and objective.rows != rows:
        raise FastvizError(f"objective: {objective.rows} targets for a batch of {rows}")
    if transforms is not None and not isinstance(transforms, Transforms):
        raise FastvizError(f"transforms: expected fastviz.Transforms or None, got {type(transforms).__name__}")
    if isinstance(x0, Param):
        check_reg(x0, reg)
    device = x0.leaf.device if isinstance(x0, Param) else x0.device
    if backend == "graph" and device.type != "cuda":
        raise FastvizError(f"backend: 'graph' needs a CUDA device, got {device}")
    use_graph = backend == "graph" or (backend == "auto" and device.type == "cuda")
    every = progress_every or (16 if device.type == "cuda" else 1)

    t0 = time.perf_counter()
    period = reg.blur_every if reg.blur_every > 0 else 1
    warmup = 2
    # The one place the loop's network is chosen: the user's, or its lowered copy.
    example = x0.image().detach() if isinstance(x0, Param) else x0  # what the network is lowered for
    net = lowered(model, example, keep=objective.layers - {LOGITS}) if lower else model
    with session(net) as sess:
        # The history also holds the graph's warm-up steps (overwritten after the reset).
        loop = Loop(sess, objective.to(device), x0, max(steps, warmup * period), reg=reg, optimizer=optimizer, lr=lr, l2=l2,
                    jitter=jitter, impl=impl, amp=amp, seed=seed, transforms=transforms)
        loop.check()
        graph = None
        if use_graph:
            try:
                graph = GraphLoop(loop, period, warmup)
            except FastvizError:
                raise
            except Exception as e:  # capture failed: say why; fall back only when allowed
                if backend == "graph":
                    raise FastvizError(f"backend: CUDA graph capture failed ({type(e).__name__}: {e})") from e
                warnings.warn(f"fastviz: CUDA graph capture failed, running eager "
                              f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
                loop.reset()
        snapshots = []
        done, read, next_snapshot = 0, 0, snapshot_every or steps + 1
        t1 = time.perf_counter()
        while done < steps:
            # A replay covers one blur period from a step that is a multiple of it.
            if graph is not None and (step_offset + done) % period == 0 and steps - done >= period:
                graph.replay()
                done += period
            else:
                loop.step(reg.blur_at(step_offset + done))
                done += 1
            # With a graph, snapshots fall on the first replay boundary at or after each multiple.
            at_snapshot = done >= next_snapshot
            if done - read >= every or done == steps or at_snapshot:
                _check_finite(loop.history, read, done)
                read = done
                if progress is not None:
                    progress(done, steps)
            if at_snapshot:
                snapshots.append((done, loop.image().cpu()))
                next_snapshot += snapshot_every * ((done - next_snapshot) // snapshot_every + 1)
        images = loop.image()
        if not bool(torch.isfinite(images).all()):
            raise FastvizError(f"image became non-finite by step {steps}")
        images, history = images.cpu(), loop.history[:steps].cpu()
    t2 = time.perf_counter()
    info = {"backend": "graph" if graph is not None else "eager", "device": str(device),
            "seconds": t2 - t0, "loop_seconds": t2 - t1, "steps_per_second": steps / (t2 - t1),
            "impl": impl, "amp": amp, "param": loop.param.name, "views": loop.views,
            "lower": net.report.summary() if lower else None}
    return Render(images, history, snapshots, objective.description, info)
