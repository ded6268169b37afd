"""Synthesis by gradient ascent: class models, channels, neurons, DeepDream, inversion.

Every function renders one row per target in batches of `batch_size` rows on the engine of
`fastviz.engine`, and returns a `Render` (images, history, snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import budget, checks, engine
from .explain import prepare
from .engine import Render
from .errors import FastvizError
from .hooks import on_device, session  # on_device: kept importable from here
from .models import Model, as_model
from .objectives import ClassScore, Channel, Diversity, Dream, Inversion, NeuronScore, Objective
from .param import PARAMS, make_param
from .progress import reporter
from .regularizers import NONE, Yosinski
from .settings import Settings, loop_settings
from .targets import Neuron, as_index_list, positive_int
from .transforms import Transforms, as_transforms

DEFAULT_SIZE = 224

# What each parameterisation runs with unless told otherwise (docs/quality.md has the measurements).
# pixel: the classic method (Yosinski regularizer, no transforms); fft: lucent's defaults (Adam
# 0.05, pad / jitter / scale / rotate); maco: 4 crops of 50-100% of the side + noise, Adam 0.2.
PARAM_DEFAULTS = {
    "pixel": dict(lr=0.05, transforms=None),
    "fft": dict(lr=0.05, transforms=Transforms.lucent()),
    "maco": dict(lr=0.2, transforms=Transforms.maco()),
}
# Channels and neurons (`feature`, `neuron`) with fft: a 1-pixel jitter instead of lucent's
# transforms. Measured on channels 0-5 of Lite0's _blocks.10 at 256 steps (docs/quality.md): the
# pictures are the same nameable textures, and the channel reaches 51.4 against 39.7 with lucent's
# transforms and 48.7 for the classic pixel + Yosinski.
UNIT_DEFAULTS = {"fft": dict(lr=0.05, transforms=Transforms(jitter=1))}


def _method(param: str, reg, lr, transforms, unit: bool = False) -> dict:
    """reg, lr and transforms for `param`, filling in its defaults ("auto" transforms, None lr/reg).

    unit: the defaults of channel and neuron objectives (`UNIT_DEFAULTS`) where they differ.
    """
    checks.choice(param, "param", PARAMS)
    d = UNIT_DEFAULTS.get(param, PARAM_DEFAULTS[param]) if unit else PARAM_DEFAULTS[param]
    if reg is None:
        reg = Yosinski() if param == "pixel" else NONE
    t = d["transforms"] if isinstance(transforms, str) and transforms == "auto" else as_transforms(transforms)
    return dict(param=param, reg=reg, lr=d["lr"] if lr is None else lr, transforms=t)


def _diversity(m: Model, objective: Objective, groups, weight: float, layer: str | None) -> Objective:
    if not weight:
        return objective
    if not isinstance(weight, (int, float)) or weight < 0:
        raise FastvizError(f"diversity: expected a weight >= 0, got {weight!r}")
    if layer is None:
        blocks = [n for n in m.layer_names() if n.startswith("_blocks.") and n.count(".") == 1]
        if not blocks:
            raise FastvizError("diversity_layer: name the layer whose Gram matrices are compared")
        layer = blocks[len(blocks) // 2]
    m.layer(layer)
    return objective + float(weight) * Diversity(layer, groups)


def _size(model: Model, size) -> tuple[int, int]:
    if size is None:
        return model.input_size or (DEFAULT_SIZE, DEFAULT_SIZE)
    return checks.size2(size, "size", low=8)


@dataclass(frozen=True)
class _Job:
    """A checked synthesis request: what `_execute` runs, in batches of `batch_size` rows."""

    rows: int
    settings: Settings
    param: str
    size: tuple[int, int]
    batch_size: int
    device: object = None
    init: str = "zero"
    start: torch.Tensor | None = None


def _job(m: Model, rows, *, steps, seed, batch_size, device, size=None, init="zero", start=None,
         param="pixel", image_name: str = "size", **loop) -> _Job:
    """Check a synthesis request once, at the public boundary, before anything is allocated.

    Raises:
        FastvizError: any argument out of range; the message names it.
    """
    if m.dtype != torch.float32:  # the loop's parameterisations, kernels and graphs are float32
        raise FastvizError(f"model: synthesis runs in float32 and this network's weights are {m.dtype}; "
                           f"pass a float32 copy (copy.deepcopy(net).float()). Attribution methods "
                           f"run in float64 as they are.")
    rows = checks.positive_int(rows, "rows", 10 ** 7)
    batch_name = "rows (batch_size None: all at once)" if batch_size is None else "batch_size"
    batch_size = positive_int(rows if batch_size is None else batch_size, "batch_size")
    checks.device(device)
    checks.choice(init, "init", ("zero", "noise"))
    c, (h, w) = m.channels or 3, _size(m, size)
    if start is not None:
        if param != "pixel":
            raise FastvizError(f"start: a start image needs param='pixel', got param={param!r}")
        start = checks.images(start, c, "start", check_range=True)
        if start.shape[0] != rows:
            raise FastvizError(f"start: expected {rows} images, got {start.shape[0]}")
        h, w = start.shape[-2:]
        image_name = "start" if image_name == "size" else image_name  # its size is the render's
    batch = min(batch_size, rows)
    if batch * c * h * w > checks.MAX_ELEMENTS:
        raise FastvizError(f"{batch_name}: {batch} images of {c}x{h}x{w} are more than "
                           f"a batch holds (2**31 values); lower batch_size or size")
    if loop.get("transforms") is not None and m.input_size and (h, w) != tuple(m.input_size):
        # A canvas other than the network's input (MACO's larger pictures to print): the random
        # crops are resampled to the input, the size the network was trained at.
        loop.setdefault("view_size", tuple(m.input_size))
    settings = loop_settings(batch, steps, param=param, seed=seed, **loop)
    fitting = _fitting(m, batch, (c, h, w), settings, device, image_name)
    if fitting < batch:
        batch_size = fitting
        settings = loop_settings(batch_size, steps, param=param, seed=seed, **loop)
    return _Job(rows, settings, param, (h, w), batch_size, device, init, start)


def _fitting(m: Model, batch: int, shape, settings: Settings, device, name: str) -> int:
    """Rows of a synthesis batch that fit the memory budget (`fastviz.budget`): each row is
    `crops` network rows forward + backward, plus its parameterisation, optimiser state, views
    and gradient (about 8 images)."""
    seen = (shape[0], *settings.view_size) if settings.view_size is not None else shape
    like = torch.zeros(1, shape[0], 1, 1, device=m.device).expand(1, *seen)  # no pixels allocated
    crops = settings.transforms.crops if settings.transforms is not None else 1
    one = shape[0] * shape[1] * shape[2] * like.element_size()  # one picture
    prof = budget.profile(m, like, name)
    if prof is None:
        return batch
    target = checks.device(device) or m.device
    return budget.rows(m, like, grad=True, total=batch, per_row_extra=(crops - 1) * prof.row(True) + 8 * one,
                       name=name, what="one rendered image", device=target)


def _execute(m: Model, objective: Objective, job: _Job, report: Callable[[int], None] | None = None
             ) -> Render:
    """Run a checked job: rows in batches on the engine, the parts joined into one Render.

    report: called as report(steps done over all batches) at the engine's read-back points.
    """
    s, n = job.settings, job.rows
    chunks = [(i, min(i + job.batch_size, n)) for i in range(0, n, job.batch_size)]
    parts: list[Render] = []
    with on_device(m, job.device) as dev:
        mean = m.mean_tensor(torch.zeros(1, m.channels or 3, 1, 1, device=dev))  # pixel starts
        for k, (a, b) in enumerate(chunks):
            start = None if job.start is None else job.start[a:b]
            param = make_param(job.param, b - a, job.size, device=dev, seed=s.seed, first_row=a,
                               mean=mean, init=job.init, start=start)
            part_report = None if report is None else (lambda done, _t, k=k: report(k * s.steps + done))
            obj = objective.select(slice(a, b)) if objective.rows is not None else objective
            parts.append(engine.run(m, obj, param, s.replace(seed=s.seed + a), progress=part_report))
    if len(parts) == 1:
        return parts[0]
    snaps = [(t, torch.cat([p.snapshots[i][1] for p in parts])) for i, (t, _) in enumerate(parts[0].snapshots)]
    info = dict(parts[0].info, seconds=sum(p.info["seconds"] for p in parts), chunks=len(parts))
    return Render(torch.cat([p.images for p in parts]), torch.cat([p.history for p in parts], 1), snaps,
                  objective.description, info)


def _run(m: Model, objective: Objective, job: _Job, progress, desc: str) -> Render:
    """`_execute` with the progress protocol of `fastviz.progress` (None, True, a callable)."""
    total = -(-job.rows // job.batch_size) * job.settings.steps
    with reporter(progress, total, unit="step", desc=desc) as rep:
        return _execute(m, objective, job, rep.update if progress else None)


def _synthesise(m: Model, objective: Objective, rows: int, progress, desc: str, **request) -> Render:
    """Check a request once (`_job`) and run it: the path of every public synthesis call."""
    checks.progress(progress)
    return _run(m, objective, _job(m, rows, **request), progress, desc)


def render_objective(model, objective: Objective, rows: int, *, steps: int = 256, seed: int = 0,
                     batch_size: int | None = None, device=None, progress=None, size=None,
                     init: str = "zero", start: torch.Tensor | None = None, param: str = "pixel",
                     **loop) -> Render:
    """Render `rows` rows of `objective` in batches; the general form behind every synthesis call.

    Args:
        model: `Model` or nn.Module.
        objective: a per-row objective (fastviz.objectives), rows == `rows` or row-independent.
        rows: how many images.
        steps, seed, batch_size (rows at once, default all), device, progress: see class_model.
        size: image size (default: the model's input size, else 224).
        init: "zero" (the mean image) or "noise" (std 0.01).
        start: (rows, C, H, W) images in [0, 1] to start from instead of `init` (pixel only).
        param: "pixel" (start from `init` / `start`), "fft" or "maco" (random spectrum / phase;
            row r's start depends on (seed, r) only).
        **loop: the loop's settings (`fastviz.settings.Settings`: reg, optimizer, lr, l2, jitter,
            transforms, backend, impl, amp, lower, snapshot_every, progress_every), with the
            loop's own defaults (no regularizer, no transforms, lr 0.05).

    Returns:
        Render: images (rows, 3, H, W) in [0, 1], history (steps, rows).

    Raises:
        FastvizError: a bad argument (named), before anything is allocated.
    """
    m = as_model(model)
    if not isinstance(objective, Objective):
        raise FastvizError(f"objective: expected a fastviz objective (fastviz.objectives), got "
                           f"{type(objective).__name__}")
    if objective.rows is not None and objective.rows != rows:
        raise FastvizError(f"rows: the objective has {objective.rows} targets, got rows={rows}")
    checks.choice(param, "param", PARAMS)
    return _synthesise(m, objective, rows, progress, "render", steps=steps, seed=seed,
                       batch_size=batch_size, device=device, size=size, init=init, start=start,
                       param=param, **loop)


def class_model(model, classes: int | Sequence[int], *, steps: int = 96, seed: int = 0,
                batch_size: int | None = None, device=None, progress=None, param: str = "maco",
                transforms="auto", reg: Yosinski | None = None, lr: float | None = None,
                optimizer: str = "adam", l2: float = 0.0, diversity: float = 0.0,
                diversity_layer: str | None = None, **loop) -> Render:
    """Class models: argmax_I S_c(I) (Simonyan et al. 2014), one image per class, batched.

    The default is MACO (Fel et al. 2023): a fixed natural-photo magnitude spectrum, only the
    phase optimised, 4 random crops of 50-100% of the side per image and step (4 network rows
    per image); pictures another network recognises (docs/quality.md). The classic method,
    pixels with the Yosinski et al. 2015 regularizers, is `param="pixel"`.

    Args:
        model: `Model` or nn.Module (its logits are the class scores S_c, before softmax).
        classes: a class index or a list: one image per class, rendered in one batched loop.
        steps: gradient-ascent steps (default 96: where the default reaches its plateau on the
            held-out Lite1 judge, docs/quality.md).
        seed: makes the run deterministic (start, jitter, transforms). A row's start does not
            depend on batch_size; the random transforms do (one generator per batch).
        batch_size: rows rendered at once (default: all); 1000 classes at 250 = 4 batches.
        device: where to render (default: where the model is; the model is moved back after).
        progress: None, True (a progress bar) or progress(steps_done, total_steps).
        param: "maco" (default), "fft" (Lucid: 1/f spectrum + decorrelated colour) or "pixel".
        transforms: "auto" (the param's default: maco 4 crops, fft lucent's pad / jitter / scale /
            rotate, pixel none), a `fastviz.Transforms`, "lucent", "maco" or None.
        reg: the Yosinski regularizer (pixel only; default `Yosinski()` for pixel, none otherwise).
        lr: step size (default per param: maco 0.2, fft and pixel 0.05).
        optimizer, l2: "adam" | "sgd", Simonyan's lambda on the leaf.
        diversity: weight of the diversity term (rows of one class pushed apart, Olah 2017).
        diversity_layer: its layer (default: the middle `_blocks.N` of an EfficientNet).
        **loop: size, init, and the loop's settings (`fastviz.settings.Settings`): jitter,
            backend ("auto" | "eager" | "graph"), impl, amp, lower, snapshot_every, progress_every.
            `size=448` renders a picture to print: the network sees random crops of it resized
            to its input (`view_size`, as the MACO paper does), so the detail is drawn at the
            scale the network knows.

    Returns:
        Render: images (N, 3, H, W) in [0, 1], history (steps, N) of class scores.

    Example:
        >>> r = class_model(load_model(), [1, 130, 285, 980])
        >>> r.images.shape
        torch.Size([4, 3, 224, 224])
        >>> r = class_model(load_model(), [130], param="pixel", reg=Yosinski())  # classic
    """
    m = as_model(model)
    idx = as_index_list(classes, "classes", m.num_classes)
    obj = _diversity(m, ClassScore(idx), idx, diversity, diversity_layer)
    return _synthesise(m, obj, len(idx), progress, "class_model", steps=steps, seed=seed,
                       batch_size=batch_size, device=device, optimizer=optimizer, l2=l2,
                       **_method(param, reg, lr, transforms), **loop)


def feature(model, layer: str, channels: int | Sequence[int], *, steps: int = 256, seed: int = 0,
            batch_size: int | None = None, device=None, progress=None, param: str = "fft",
            transforms="auto", reg: Yosinski | None = None, lr: float | None = None,
            init: str = "noise", diversity: float = 0.0, diversity_layer: str | None = None,
            **loop) -> Render:
    """Channel visualisation: maximise the mean activation of each channel of `layer`, one per row.

    The forward stops at `layer`. Same arguments as `class_model`; the default parameterisation
    is "fft" with a 1-pixel jitter (`UNIT_DEFAULTS`; docs/quality.md). With param="pixel" it starts from small
    noise (a uniform image gives every interior pixel the same gradient).

    Returns:
        Render: images (len(channels), 3, H, W), history of channel means.
    """
    m = as_model(model)
    m.layer(layer)
    idx = as_index_list(channels, "channels")
    obj = _diversity(m, Channel(layer, idx), idx, diversity, diversity_layer or layer)
    return _synthesise(m, obj, len(idx), progress, "feature", steps=steps, seed=seed,
                       batch_size=batch_size, device=device, init=init,
                       **_method(param, reg, lr, transforms, unit=True), **loop)


def neuron(model, neurons: Neuron | Sequence[Neuron], *, steps: int = 256, seed: int = 0,
           batch_size: int | None = None, device=None, progress=None, param: str = "fft",
           transforms="auto", reg: Yosinski | None = None, lr: float | None = None,
           init: str = "noise", **loop) -> Render:
    """Visualise single units: one `Neuron` per row (all on one layer), y/x None = centre.

    Same arguments as `feature` (default "fft" with a 1-pixel jitter).

    Returns:
        Render: images (N, 3, H, W), history of the units' activations.
    """
    m = as_model(model)
    units = [neurons] if isinstance(neurons, Neuron) else neurons
    if not isinstance(units, (list, tuple)) or not units or not all(isinstance(u, Neuron) for u in units):
        raise FastvizError(f"neurons: expected fastviz.Neuron or a list of them, got {neurons!r}")
    units = list(units)
    layer = units[0].layer
    if any(u.layer != layer for u in units):
        raise FastvizError("neurons: all units of one call must be on one layer")
    m.layer(layer)
    h, w = _feature_size(m, layer, size=loop.get("size"))
    ys = [h // 2 if u.y is None else u.y for u in units]
    xs = [w // 2 if u.x is None else u.x for u in units]
    obj = NeuronScore(layer, [u.channel for u in units], ys, xs)
    return _synthesise(m, obj, len(units), progress, "neuron", steps=steps, seed=seed,
                       batch_size=batch_size, device=device, init=init,
                       **_method(param, reg, lr, transforms, unit=True), **loop)


def layer_shape(m: Model, layer: str, size=None, name: str = "layer") -> tuple[int, int, int]:
    """(C, h, w) of `layer`'s output for an image of `size`: one no-grad forward of a grey image,
    stopped at the layer. A layer whose output is not a feature map is refused, naming `name`."""
    h, w = _size(m, size)
    with session(m) as s, torch.no_grad():
        acts, _ = s.forward(torch.full((1, m.channels or 3, h, w), 0.5, device=m.device), [layer])
    a = acts[layer]
    if a.dim() != 4:
        raise FastvizError(f"{name}: {layer!r} gives shape {tuple(a.shape)}, expected (B, C, h, w)")
    return tuple(a.shape[1:])


def _feature_size(m: Model, layer: str, size=None) -> tuple[int, int]:
    return layer_shape(m, layer, size)[1:]


def deepdream(model, photo, layer: str, *, octaves: int = 4, octave_scale: float = 1.4,
              steps_per_octave: int = 20, lr: float = 0.01, jitter: int = 16,
              optimizer: str = "normalized", seed: int = 0,
              device=None, progress=None, reg: Yosinski | None = None, **loop) -> Render:
    """DeepDream (Mordvintsev et al. 2015): ascend 0.5 * ||layer||^2 from a photo, so the
    layer's gradient is its own activation, over `octaves` scales from small to full size.

    Each octave upsamples the detail added so far onto the photo at the next scale; the step is
    the gradient normalised per image (g / mean |g|), with random jitter (independent per row,
    device generator).

    Args:
        photo: (B, 3, H, W) images in [0, 1] (a batch dreams at once).
        layer: the layer whose activations are amplified.
        octaves, octave_scale, steps_per_octave: the multi-scale schedule.
        lr, jitter, reg: step size, jitter radius in pixels, regularizer (default: none).

    Returns:
        Render: the dreamed images at the photo's size; history concatenated over octaves.
    """
    m, x = prepare(model, photo, "photo")
    m.layer(layer)
    octaves = positive_int(octaves, "octaves")
    if octaves > 32:
        raise FastvizError(f"octaves: expected at most 32, got {octaves}")
    octave_scale = checks.number(octave_scale, "octave_scale", 1, 100, low_open=True)
    steps_per_octave = checks.positive_int(steps_per_octave, "steps_per_octave", 10 ** 8)
    checks.progress(progress)
    # Checked once for all octaves; each octave is this job at its size, from its start images.
    job = _job(m, x.shape[0], steps=steps_per_octave, seed=seed, batch_size=None, device=device,
               size=tuple(x.shape[-2:]), image_name="photo", reg=NONE if reg is None else reg, lr=lr, jitter=jitter,
               optimizer=optimizer, **loop)
    base = x
    h, w = base.shape[-2:]
    sizes = [(max(8, round(h / octave_scale ** k)), max(8, round(w / octave_scale ** k)))
             for k in reversed(range(octaves))]
    detail = torch.zeros_like(base[:, :, :sizes[0][0], :sizes[0][1]])
    histories, s = [], job.settings
    r = None
    with reporter(progress, octaves * s.steps, unit="step", desc="deepdream") as rep:
        for k, size in enumerate(sizes):
            photo_k = F.interpolate(base, size=size, mode="bilinear", align_corners=False, antialias=True)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            octave = replace(job, size=size, start=(photo_k + detail).clamp(0, 1),
                             settings=s.replace(seed=s.seed + k, step_offset=k * s.steps))
            r = _execute(m, Dream(layer), octave, (lambda done, k=k: rep.update(k * s.steps + done))
                         if progress else None)
            detail = r.images.to(base.device) - photo_k
            histories.append(r.history)
    return Render(r.images, torch.cat(histories), r.snapshots, f"deepdream({layer!r})", r.info)


def invert(model, photo, layer: str, *, steps: int = 300, seed: int = 0, device=None, progress=None,
           lr: float = 0.02, alpha: float = 6.0, alpha_weight: float = 1e-5, beta: float = 2.0,
           tv_weight: float = 10.0, reg: Yosinski | None = None, **loop) -> Render:
    """Inverted representation (Mahendran & Vedaldi 2015): the image whose `layer`
    representation matches the photo's, with alpha-norm and total-variation regularisers.

    Runs on the same engine as the class models (an `Inversion` objective).

    Args:
        photo: (B, 3, H, W) images in [0, 1].
        layer: the representation to match.
        alpha, alpha_weight: the alpha-norm regulariser (on the image centred at 0.5).
        beta, tv_weight: the total-variation regulariser.

    Returns:
        Render: reconstructions (B, 3, H, W); history of the (negative) objective.
    """
    m, x = prepare(model, photo, "photo")
    m.layer(layer)
    alpha = checks.number(alpha, "alpha", 1, 100)
    alpha_weight = checks.number(alpha_weight, "alpha_weight", 0, 1e6)
    beta = checks.number(beta, "beta", 1, 100)
    tv_weight = checks.number(tv_weight, "tv_weight", 0, 1e6)
    checks.progress(progress)
    job = _job(m, x.shape[0], steps=steps, seed=seed, batch_size=None, device=device,
               size=tuple(x.shape[-2:]), image_name="photo", init="noise", reg=NONE if reg is None else reg, lr=lr, **loop)
    with session(m) as s, torch.no_grad():
        acts, _ = s.forward(x, [layer])
    obj = Inversion(layer, acts[layer].float(), alpha, alpha_weight, beta, tv_weight)
    return _run(m, obj, job, progress, "invert")
