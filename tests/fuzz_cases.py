"""The public API as a table for property-based tests: for each function, a good call on a tiny
network and, per argument, a hypothesis strategy of bad values.

Used by tests/test_fuzz.py (and by its report, docs/reliability.md). A case is
(function name, argument, kind, strategy, call): `call(model, value)` calls the function with
that one argument bad and the rest good. Kinds name what the strategy generates.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

import fastviz as fv

VALUE = "<the bad value>"
CLASSES = 10
SIZE = 16
B = 2
LAYER = "features.2"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_model() -> fv.Model:
    """In training mode, one parameter frozen, inplace ReLU: a leak of any of them shows."""
    torch.manual_seed(0)
    net = Tiny().train()
    net.features[0].bias.requires_grad_(False)
    return fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=SIZE,
                    labels=[f"c{i}" for i in range(CLASSES)])


X = torch.rand(B, 3, SIZE, SIZE)


# -- strategies of bad values, by kind --------------------------------------------------------
def _wrong_types(*extra):
    return [st.none(), st.text(max_size=4), st.just([]), st.just(object()), st.complex_numbers(
        allow_nan=False, min_magnitude=1, max_magnitude=10).map(lambda z: complex(z.real, z.imag or 1)), *extra]


NAN_INF = st.sampled_from([math.nan, math.inf, -math.inf])
BAD = {
    "pos_int": st.one_of(st.integers(max_value=0), st.integers(min_value=10 ** 12, max_value=10 ** 40),
                         st.floats(allow_nan=True), st.booleans(), *_wrong_types()),
    "nonneg_int": st.one_of(st.integers(max_value=-1), st.integers(min_value=10 ** 12, max_value=10 ** 40),
                            st.floats(), st.booleans(), *_wrong_types()),
    "batch": st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), *_wrong_types()),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 63, max_value=2 ** 200),
                      st.floats(), st.booleans(), *_wrong_types()),
    "pos_float": st.one_of(st.floats(max_value=0), st.floats(min_value=1e7), NAN_INF, st.booleans(),
                           *_wrong_types()),
    "nonneg_float": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1e7), NAN_INF,
                              *_wrong_types()),
    "unit_float": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), NAN_INF,
                            *_wrong_types()),
    "bool": st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats()),
    "device": st.one_of(st.sampled_from(["nope", "cuda:7", "meta", "gpu", "cpu:x", "cuda:-1", ""]),
                        st.integers(min_value=7) if torch.cuda.device_count() == 0 else st.just("cuda:99"),
                        st.floats(), st.just(object())),
    "layer": st.one_of(st.text(max_size=12).filter(lambda s: s not in _LAYERS), st.integers(), st.just([LAYER])),
    "class": st.one_of(st.integers(min_value=CLASSES, max_value=10 ** 40), st.integers(max_value=-1),
                       st.floats(), st.text(min_size=1, max_size=4), st.booleans(),
                       st.lists(st.integers(0, CLASSES - 1), min_size=B + 1, max_size=B + 3),
                       st.just([]), st.just(torch.tensor([0.5, 1.5])), st.just(torch.zeros(B, 1, dtype=torch.long)),
                       st.just(np.array([1.0, 2.0])), st.just(1j)),
    "channels": st.one_of(st.integers(min_value=4, max_value=10 ** 40), st.integers(max_value=-1),
                          st.floats(), st.text(min_size=1, max_size=4), st.booleans(), st.just([]),
                          st.just([0, 99]), st.just(torch.tensor([0.0]))),
}
_LAYERS = set(dict(Tiny().named_modules())) - {""}


@st.composite
def bad_images(draw, batch: int = B):
    """Image batches a call must refuse, generated: values, dtypes, shapes, types."""
    kind = draw(st.sampled_from(["nan", "inf", "range", "channels", "rank", "empty", "dtype", "type",
                                 "huge", "meta"]))
    x = X[:batch].clone()
    if kind in ("nan", "inf"):
        i = draw(st.integers(0, x.numel() - 1))
        x.view(-1)[i] = math.nan if kind == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
    elif kind == "range":
        v = draw(st.one_of(st.floats(1.01, 1e30), st.floats(-1e30, -0.01)))
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = v
    elif kind == "channels":
        c = draw(st.integers(1, 8).filter(lambda c: c != 3))
        x = torch.rand(batch, c, SIZE, SIZE)
    elif kind == "rank":
        x = torch.rand(*draw(st.lists(st.integers(1, 4), min_size=1, max_size=6).filter(
            lambda s: len(s) not in (3, 4))))
    elif kind == "empty":
        x = x[:0] if draw(st.booleans()) else x[:, :, :0]
    elif kind == "dtype":
        x = x.to(draw(st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex64, torch.int8])))
    elif kind == "type":
        x = draw(st.sampled_from([None, "image.png", 3, [[0.5]], x.numpy()]))
    elif kind == "huge":
        side = draw(st.integers(20000, 10 ** 6))
        x = torch.zeros(1, 3, 1, 1).expand(batch, 3, side, side)
    else:
        x = torch.empty(batch, 3, SIZE, SIZE, device="meta")
    return x


@dataclass
class Case:
    function: str
    argument: str
    kind: str
    bad: st.SearchStrategy
    call: Callable  # (model, value) -> anything
    name: tuple | str | None = None  # what the message must contain (default: the argument;
    # a tuple: any of them; VALUE: the bad value itself)


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(function, argument, kind, call, bad=None, name=None):
        cases.append(Case(function, argument, kind, BAD[kind] if bad is None else bad, call, name))

    images = bad_images()
    one = bad_images(1)
    # attribution
    add("predict", "x", "images", lambda m, v: fv.predict(m, v), images)
    add("predict", "k", "pos_int", lambda m, v: fv.predict(m, X, k=v),
        st.one_of(BAD["pos_int"], st.integers(CLASSES + 1, 10 ** 6)))
    for f in ("saliency", "guided_backprop", "gradient", "gradcam", "guided_gradcam", "layercam", "scorecam",
              "smoothgrad", "integrated_gradients", "deconvnet", "input_x_gradient"):
        fn = getattr(fv, f)
        kw = {"smoothgrad": {"n": 2}, "integrated_gradients": {"points": 2}}.get(f, {})
        add(f, "x", "images", lambda m, v, fn=fn, kw=kw: fn(m, v, **kw), images)
        add(f, "target", "class", lambda m, v, fn=fn, kw=kw: fn(m, X, v, **kw))
    add("neuron_gradient", "x", "images", lambda m, v: fv.neuron_gradient(m, v, fv.Neuron(LAYER, 1)), images)
    add("neuron_gradient", "neuron", "type", lambda m, v: fv.neuron_gradient(m, X, v),
        st.one_of(st.integers(), st.text(max_size=3), st.none(), st.just((LAYER, 1))))
    add("neuron_gradient", "guided", "bool", lambda m, v: fv.neuron_gradient(m, X, fv.Neuron(LAYER, 1), guided=v))
    add("gradient", "guided", "bool", lambda m, v: fv.gradient(m, X, guided=v))
    for f in ("gradcam", "guided_gradcam", "layercam", "scorecam"):
        fn = getattr(fv, f)
        add(f, "layer", "layer", lambda m, v, fn=fn: fn(m, X, layer=v))
    for f in ("gradcam", "layercam", "scorecam"):
        fn = getattr(fv, f)
        add(f, "normalize", "bool", lambda m, v, fn=fn: fn(m, X, normalize=v))
    add("scorecam", "batch_size", "batch", lambda m, v: fv.scorecam(m, X, batch_size=v))
    add("smoothgrad", "n", "pos_int", lambda m, v: fv.smoothgrad(m, X, n=v))
    add("smoothgrad", "noise", "nonneg_float", lambda m, v: fv.smoothgrad(m, X, n=2, noise=v))
    add("smoothgrad", "squared", "bool", lambda m, v: fv.smoothgrad(m, X, n=2, squared=v))
    add("smoothgrad", "batch_size", "batch", lambda m, v: fv.smoothgrad(m, X, n=2, batch_size=v))
    add("smoothgrad", "seed", "seed", lambda m, v: fv.smoothgrad(m, X, n=2, seed=v),
        BAD["seed"].filter(lambda v: v is not None))
    add("integrated_gradients", "points", "pos_int", lambda m, v: fv.integrated_gradients(m, X, points=v))
    add("integrated_gradients", "method", "choice", lambda m, v: fv.integrated_gradients(m, X, points=2, method=v),
        st.one_of(st.text(max_size=8), st.integers(), st.none()))
    add("integrated_gradients", "spacing", "choice", lambda m, v: fv.integrated_gradients(m, X, points=2, spacing=v),
        st.one_of(st.text(max_size=8), st.integers(), st.none()))
    add("integrated_gradients", "batch_size", "batch", lambda m, v: fv.integrated_gradients(m, X, points=2, batch_size=v))
    add("integrated_gradients", "baseline", "images", lambda m, v: fv.integrated_gradients(m, X, points=2, baseline=v),
        st.one_of(NAN_INF, st.text(min_size=1, max_size=3), st.just(torch.full((3, SIZE, SIZE), math.nan)),
                  st.just(torch.rand(3, 5, 5)), st.just(torch.rand(3, 1, 1).expand(3, 10 ** 5, 10 ** 5)),
                  st.just(torch.zeros(3, SIZE, SIZE, dtype=torch.long))))
    # faithfulness metrics
    MAPS = torch.rand(B, SIZE, SIZE)
    bad_maps = st.one_of(st.none(), st.integers(), st.text(min_size=1, max_size=3), st.just(torch.rand(B, 5, 5)),
                         st.just(torch.rand(B + 1, SIZE, SIZE)), st.just(torch.rand(SIZE)),
                         st.just(torch.full((B, SIZE, SIZE), math.nan)),
                         st.just(torch.zeros(B, SIZE, SIZE, dtype=torch.complex64)))
    bad_score = st.one_of(st.text(max_size=8), st.integers(), st.none())
    for f, kw in (("deletion", {"points": 2}), ("insertion", {"points": 2}), ("road", {"percentiles": [50]})):
        fn = getattr(fv, f)
        add(f, "x", "images", lambda m, v, fn=fn, kw=kw: fn(m, v, MAPS, **kw), images)
        add(f, "maps", "tensor", lambda m, v, fn=fn, kw=kw: fn(m, X, v, **kw), bad_maps)
        add(f, "target", "class", lambda m, v, fn=fn, kw=kw: fn(m, X, MAPS, target=v, **kw))
        add(f, "score", "choice", lambda m, v, fn=fn, kw=kw: fn(m, X, MAPS, score=v, **kw), bad_score)
        add(f, "batch_size", "batch", lambda m, v, fn=fn, kw=kw: fn(m, X, MAPS, batch_size=v, **kw),
            BAD["batch"].filter(lambda v: v is not None))
    for f in ("deletion", "insertion"):
        fn = getattr(fv, f)
        add(f, "points", "pos_int", lambda m, v, fn=fn: fn(m, X, MAPS, points=v))
        add(f, "substrate", "float", lambda m, v, fn=fn: fn(m, X, MAPS, points=2, substrate=v),
            st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), NAN_INF, st.booleans(),
                      st.text(max_size=5).filter(lambda s: s != "blur"), st.none(), st.just(object())))
    add("road", "percentiles", "floats", lambda m, v: fv.road(m, X, MAPS, percentiles=v),
        st.one_of(st.none(), st.integers(), st.text(min_size=1, max_size=3), st.just([]), st.just([100]),
                  st.just([-1]), st.just([math.nan]), st.just([50, "a"]), st.just(range(10 ** 9))))
    add("road", "noise", "nonneg_float", lambda m, v: fv.road(m, X, MAPS, percentiles=[50], noise=v),
        st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), NAN_INF, st.booleans(),
                  *_wrong_types()))
    add("road", "seed", "seed", lambda m, v: fv.road(m, X, MAPS, percentiles=[50], seed=v),
        BAD["seed"].filter(lambda v: v is not None))
    rc = fv.randomization_check
    add("randomization_check", "x", "images", lambda m, v: rc(m, v, "saliency", stages=["fc"]), images)
    add("randomization_check", "method", "choice", lambda m, v: rc(m, X, v, stages=["fc"]),
        st.one_of(st.text(max_size=8), st.integers(), st.none()))
    add("randomization_check", "target", "class", lambda m, v: rc(m, X, "saliency", target=v, stages=["fc"]))
    add("randomization_check", "stages", "layer", lambda m, v: rc(m, X, "saliency", stages=v),
        st.one_of(st.just([]), st.integers(), st.just(["nope"]), st.just([1]), st.just(["fc", None])))
    add("randomization_check", "seed", "seed", lambda m, v: rc(m, X, "saliency", stages=["fc"], seed=v),
        BAD["seed"].filter(lambda v: v is not None))
    # the atlas (bad arguments are refused before anything is written)
    # One folder per process, removed at exit: parallel workers and other checkouts running the
    # suite on this machine never share it (nothing should land in it, but see steps=10**12).
    out = os.path.join(tempfile.gettempdir(), f"fastviz_fuzz_atlas_{os.getpid()}")
    atexit.register(shutil.rmtree, out, ignore_errors=True)

    def at(kw):
        return lambda m, v: fv.atlas(m, out, **{"classes": [1], "steps": 2, "progress": False, **kw(v)})
    add("atlas", "out", "path", lambda m, v: fv.atlas(m, v, classes=[1], steps=2, progress=False),
        st.one_of(st.integers(), st.none(), st.just(__file__), st.just(object())))
    add("atlas", "classes", "class", at(lambda v: {"classes": v}),
        BAD["class"].filter(lambda v: v is not None and not (isinstance(v, list) and v)))
    add("atlas", "layers", "layer", at(lambda v: {"layers": v}),
        BAD["layer"].filter(lambda v: v != "" and v != [LAYER]))
    add("atlas", "channels", "channels", at(lambda v: {"layers": LAYER, "classes": None, "channels": v}))
    for arg, kind in (("steps", "pos_int"), ("seed", "seed"), ("batch_size", "batch"), ("device", "device")):
        add("atlas", arg, kind, at(lambda v, arg=arg: {arg: v}), BAD[kind].filter(lambda v: v is not None))
    add("atlas", "timeout", "pos_float", at(lambda v: {"timeout": v}),  # a long timeout is fine
        st.one_of(st.floats(max_value=0), NAN_INF, st.booleans(), *_wrong_types()))
    add("atlas", "force", "bool", at(lambda v: {"force": v}))
    add("atlas", "progress", "type", at(lambda v: {"progress": v}),
        st.one_of(st.integers(min_value=2), st.text(max_size=3), st.just(object())))
    # synthesis
    def with_bad(fn, *args, **good):
        """(model, value) -> fn(model, *args, **good) with the one named argument replaced by value."""
        def builder(arg):
            return lambda m, v: fn(m, *args, **{**good, arg: v})
        return builder

    def cm(**kw):
        return with_bad(fv.class_model, [1, 2], steps=2)(next(iter(kw)))
    add("class_model", "classes", "class", lambda m, v: fv.class_model(m, v, steps=2),
        BAD["class"].filter(lambda v: not isinstance(v, list) or len(v) == 0))
    for arg, kind in (("steps", "pos_int"), ("seed", "seed"), ("batch_size", "batch"), ("device", "device"),
                      ("lr", "pos_float"), ("l2", "nonneg_float"), ("jitter", "nonneg_int"),
                      ("snapshot_every", "batch"), ("progress_every", "batch")):
        bad = BAD[kind]
        if arg in ("batch_size", "snapshot_every", "progress_every", "device", "lr"):  # lr None: the param's default
            bad = bad.filter(lambda v: v is not None)
        add("class_model", arg, kind, cm(**{arg: None}), bad)
    add("class_model", "optimizer", "choice", cm(optimizer=None), st.one_of(st.text(max_size=6), st.integers(), st.none()))
    add("class_model", "reg", "type", cm(reg=None), st.one_of(st.text(max_size=5), st.integers(), st.just(object())))
    add("class_model", "progress", "type", cm(progress=None), st.one_of(st.integers(), st.text(max_size=3)))
    add("class_model", "size", "size", cm(size=None),
        st.one_of(st.integers(max_value=7), st.integers(min_value=20000), st.floats(), st.text(min_size=1, max_size=3),
                  st.lists(st.integers(8, 20), min_size=3, max_size=4), st.just((16, -1))))
    add("class_model", "init", "choice", cm(init=None), st.one_of(st.text(max_size=6), st.integers()))
    add("class_model", "backend", "choice", cm(backend=None), st.one_of(st.text(max_size=6), st.integers()))
    add("class_model", "impl", "choice", cm(impl=None), st.one_of(st.text(max_size=6), st.integers()))
    add("class_model", "**loop", "unknown name", lambda m, v: fv.class_model(m, [1], steps=2, **{v: 1}),
        st.sampled_from(["jiter", "step", "learning_rate", "octaves", "momentum"]), name=VALUE)
    add("feature", "layer", "layer", lambda m, v: fv.feature(m, v, [0], steps=2))
    add("feature", "channels", "channels", lambda m, v: fv.feature(m, LAYER, v, steps=2))
    add("neuron", "neurons", "type", lambda m, v: fv.neuron(m, v, steps=2),
        st.one_of(st.integers(), st.text(max_size=3), st.none(), st.just([]),
                  st.just([fv.Neuron(LAYER, 0), fv.Neuron("features.4", 0)]), st.just(fv.Neuron(LAYER, 99)),
                  st.just(fv.Neuron(LAYER, 0, y=99)), st.just(fv.Neuron("nope", 0))),
        name=("neuron", "layer"))
    def dd(**kw):
        return with_bad(fv.deepdream, X[:1], LAYER, octaves=2, steps_per_octave=2)(next(iter(kw)))
    add("deepdream", "photo", "images", lambda m, v: fv.deepdream(m, v, LAYER, octaves=1, steps_per_octave=1), one)
    add("deepdream", "layer", "layer", lambda m, v: fv.deepdream(m, X[:1], v, octaves=1, steps_per_octave=1))
    for arg, kind in (("octaves", "pos_int"), ("steps_per_octave", "pos_int"), ("lr", "pos_float"),
                      ("jitter", "nonneg_int"), ("seed", "seed"), ("device", "device")):
        bad = BAD[kind].filter(lambda v: v is not None) if arg == "device" else BAD[kind]
        add("deepdream", arg, kind, dd(**{arg: None}), bad)
    add("deepdream", "octave_scale", "float", dd(octave_scale=None),
        st.one_of(st.floats(max_value=1), st.floats(min_value=101), NAN_INF, *_wrong_types()))
    def inv(**kw):
        return with_bad(fv.invert, X[:1], LAYER, steps=2)(next(iter(kw)))
    add("invert", "photo", "images", lambda m, v: fv.invert(m, v, LAYER, steps=1), one)
    add("invert", "layer", "layer", lambda m, v: fv.invert(m, X[:1], v, steps=1))
    for arg, kind in (("steps", "pos_int"), ("lr", "pos_float"), ("alpha_weight", "nonneg_float"),
                      ("tv_weight", "nonneg_float"), ("seed", "seed")):
        add("invert", arg, kind, inv(**{arg: None}))
    for arg in ("alpha", "beta"):
        add("invert", arg, "float", inv(**{arg: None}),
            st.one_of(st.floats(max_value=0.99), st.floats(min_value=101), NAN_INF, *_wrong_types()))
    obj = fv.class_score([1, 2])
    add("render_objective", "objective", "type", lambda m, v: fv.render_objective(m, v, 2, steps=1),
        st.one_of(st.text(max_size=4), st.integers(), st.none(), st.just(lambda *a: 0)))
    add("render_objective", "rows", "pos_int", lambda m, v: fv.render_objective(m, fv.dream(LAYER), v, steps=1))
    add("render_objective", "start", "images", lambda m, v: fv.render_objective(m, obj, 2, steps=1, start=v),
        bad_images().filter(lambda v: v is not None))
    # objectives and the regularizer
    add("class_score", "classes", "index", lambda m, v: fv.class_score(v),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 31, max_value=10 ** 40), st.floats(),
                  st.text(min_size=1, max_size=4), st.booleans(), st.just([]), st.just(torch.tensor([0.0]))))
    add("channel", "channels", "channels", lambda m, v: fv.channel(LAYER, v).check({LAYER: torch.zeros(1, 4, 2, 2)}))
    add("channel", "layer", "type", lambda m, v: fv.channel(v, 0), st.one_of(st.integers(), st.none(), st.just([LAYER])))
    add("dream", "layer", "type", lambda m, v: fv.dream(v), st.one_of(st.integers(), st.none(), st.floats()))
    add("diversity", "layer", "type", lambda m, v: fv.diversity(v, [0, 0]), st.one_of(st.integers(), st.none(), st.floats()))
    add("diversity", "groups", "index", lambda m, v: fv.diversity(LAYER, v),
        st.one_of(st.none(), st.just([]), st.just([-1]), st.text(min_size=1, max_size=3)))
    add("objective * k", "weight", "float", lambda m, v: fv.dream(LAYER) * v, NAN_INF)
    for field, bad in (("decay", st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1), NAN_INF)),
                       ("blur_every", st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=2), st.none())),
                       ("blur_sigma", st.one_of(st.floats(max_value=0), NAN_INF))):
        add("Yosinski", field, "field", lambda m, v, field=field: fv.Yosinski(**{field: v}), bad)
    add("Neuron", "channel", "nonneg_int", lambda m, v: fv.Neuron(LAYER, v), name="Neuron.channel")
    add("Neuron", "y", "nonneg_int", lambda m, v: fv.Neuron(LAYER, 0, y=v),
        BAD["nonneg_int"].filter(lambda v: v is not None), name="Neuron.y")
    add("Neuron", "layer", "type", lambda m, v: fv.Neuron(v, 0), st.one_of(st.integers(), st.none()), name="Neuron.layer")
    # inspection and embedding
    add("filters", "layer", "layer", lambda m, v: fv.filters(m, layer=v),
        BAD["layer"].filter(lambda v: v != "features.3"))
    add("filters", "normalize", "choice", lambda m, v: fv.filters(m, normalize=v), st.one_of(st.text(max_size=5), st.integers()))
    for arg in ("scale", "nrow"):
        add("filter_grid", arg, "pos_int", lambda m, v, arg=arg: fv.filter_grid(m, **{arg: v}),
            BAD["pos_int"].filter(lambda v: v is not None))
    add("features", "images_or_folder", "images", lambda m, v: fv.features(m, v),
        bad_images().filter(lambda v: not isinstance(v, (str, list)) and v is not None))
    add("features", "layer", "layer", lambda m, v: fv.features(m, X, layer=v))
    add("features", "batch_size", "batch", lambda m, v: fv.features(m, X, batch_size=v))
    add("features", "device", "device", lambda m, v: fv.features(m, X, device=v), BAD["device"])
    add("features", "pool", "choice", lambda m, v: fv.features(m, X, layer=LAYER, pool=v),
        st.one_of(st.text(max_size=5), st.integers(), st.none()))
    add("features", "thumbnail", "pos_int", lambda m, v: fv.features(m, X, thumbnail=v))
    # dataset examples (a list of layer names is a valid `layer`; a k beyond the data warns)
    D = torch.rand(4, 3, SIZE, SIZE)
    add("dataset_examples", "data", "images", lambda m, v: fv.dataset_examples(m, v, layer=LAYER),
        bad_images().filter(lambda v: not isinstance(v, (str, list)) and v is not None))
    add("dataset_examples", "layer", "layer", lambda m, v: fv.dataset_examples(m, D, layer=v),
        BAD["layer"].filter(lambda v: not isinstance(v, list)))
    add("dataset_examples", "channels", "channels", lambda m, v: fv.dataset_examples(m, D, layer=LAYER, channels=v))
    add("dataset_examples", "k", "pos_int", lambda m, v: fv.dataset_examples(m, D, layer=LAYER, k=v),
        BAD["pos_int"].filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool) and v > 0)))
    add("dataset_examples", "batch_size", "batch", lambda m, v: fv.dataset_examples(m, D, layer=LAYER, batch_size=v))
    add("dataset_examples", "field", "unit_float", lambda m, v: fv.dataset_examples(m, D, layer=LAYER, field=v))
    E = torch.rand(4, 3, SIZE, SIZE)
    add("embed", "method", "choice", lambda m, v: fv.embed(m, E, method=v), st.one_of(st.text(max_size=5), st.integers()))
    add("embed", "perplexity", "pos_float", lambda m, v: fv.embed(m, E, perplexity=v))
    add("embed", "seed", "seed", lambda m, v: fv.embed(m, E, method="pca", seed=v),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 32), st.floats(), st.text(max_size=3)))
    add("embed", "names", "type", lambda m, v: fv.embed(m, E, method="pca", names=v),
        st.one_of(st.integers(), st.text(max_size=3), st.just(["a"])))
    add("embed", "images_or_folder", "images", lambda m, v: fv.embed(m, v, method="pca"),
        bad_images(4).filter(lambda v: not isinstance(v, (str, list)) and v is not None))
    # the model wrapper and loading
    net = Tiny()
    add("Model", "module", "type", lambda m, v: fv.Model(v), st.one_of(st.integers(), st.text(max_size=3), st.none()))
    add("Model", "mean", "floats", lambda m, v: fv.Model(net, mean=v, std=(0.5,) * 3),
        st.one_of(st.just((0.5, math.nan, 0.5)), st.just((0.5, 0.5)), st.text(min_size=1, max_size=3),
                  st.integers(), st.just(()), st.lists(NAN_INF, min_size=3, max_size=3)), name="mean")
    add("Model", "std", "floats", lambda m, v: fv.Model(net, mean=(0.5,) * 3, std=v),
        st.one_of(st.lists(st.floats(max_value=0), min_size=3, max_size=3), st.just((0.5, math.inf, 0.5)),
                  st.text(min_size=1, max_size=3)), name="std")
    add("Model", "input_size", "size", lambda m, v: fv.Model(net, input_size=v),
        st.one_of(st.integers(max_value=0), st.integers(min_value=10 ** 5), st.floats(), st.text(min_size=1, max_size=3),
                  st.lists(st.integers(1, 9), min_size=3, max_size=4)))
    add("Model", "labels", "type", lambda m, v: fv.predict(fv.Model(net, labels=v), X, k=1),
        st.one_of(st.text(max_size=3), st.integers(), st.just([1, 2]), st.just(["a", "b"])))
    add("Model", "output", "type", lambda m, v: fv.saliency(fv.Model(net, output=v), X),
        st.one_of(st.floats(), st.integers(), st.text(max_size=3)))
    add("as_model", "model", "type", lambda m, v: fv.as_model(v), st.one_of(st.integers(), st.text(max_size=3), st.none()))
    add("load_model", "name", "choice", lambda m, v: fv.load_model(v, weights=None),
        st.one_of(st.text(max_size=8), st.integers(), st.none()))
    add("load_model", "device", "device", lambda m, v: fv.load_model("resnet18", weights=None, device=v),
        BAD["device"].filter(lambda v: v is not None))
    # files
    add("load_images", "paths", "path", lambda m, v: fv.load_images(v), name="path", bad=
        st.one_of(st.integers(), st.none(), st.just([]), st.just([1, 2]), st.text(min_size=1, max_size=8).map(
            lambda s: f"/nonexistent/{s}.png")))
    add("load_images", "size", "pos_int", lambda m, v: fv.load_images(fv.sample_images()["coffee"], size=v),
        BAD["pos_int"].filter(lambda v: v is not None))
    add("load_images", "crop", "unit_float", lambda m, v: fv.load_images(fv.sample_images()["coffee"], crop=v),
        st.one_of(st.floats(max_value=0), st.floats(min_value=1 + 1e-9), NAN_INF, st.text(max_size=2), st.none()))
    add("load_image", "path", "path", lambda m, v: fv.load_image(v),
        st.one_of(st.integers(), st.none(), st.just("/"), st.just(__file__), st.text(min_size=1, max_size=8).map(
            lambda s: f"/nonexistent/{s}.png")))
    # pictures
    add("grid", "images", "tensor", lambda m, v: fv.grid(v),
        st.one_of(st.none(), st.integers(), st.just(torch.rand(0, 3, 4, 4)), st.just(torch.rand(5)),
                  st.just(torch.zeros(1, 3, 1, 1).expand(10 ** 4, 3, 10 ** 3, 10 ** 3))))
    for arg, kind in (("nrow", "pos_int"), ("scale", "pos_int"), ("padding", "nonneg_int")):
        add("grid", arg, kind, lambda m, v, arg=arg: fv.grid(torch.rand(4, 3, 8, 8), **{arg: v}),
            BAD[kind].filter(lambda v: v is not None) if arg == "nrow" else BAD[kind])
    add("grid", "pad_value", "float", lambda m, v: fv.grid(torch.rand(4, 3, 8, 8), pad_value=v),
        st.one_of(NAN_INF, *_wrong_types()))
    add("normalize", "mode", "choice", lambda m, v: fv.normalize(torch.rand(3, 8, 8), v), st.one_of(st.text(max_size=5), st.integers()))
    add("normalize", "q", "unit_float", lambda m, v: fv.normalize(torch.rand(3, 8, 8), "percentile", q=v))
    add("normalize", "t", "tensor", lambda m, v: fv.normalize(v), st.one_of(st.none(), st.integers(), st.just(torch.rand(0, 3))))
    add("heatmap", "colormap", "choice", lambda m, v: fv.heatmap(torch.rand(8, 8), colormap=v), st.one_of(st.text(max_size=5), st.integers()))
    add("heatmap", "m", "tensor", lambda m, v: fv.heatmap(v), st.one_of(st.none(), st.just(torch.rand(8)), st.just(torch.rand(1, 1, 1, 8))))
    add("overlay", "alpha", "unit_float", lambda m, v: fv.overlay(torch.rand(3, 8, 8), torch.rand(8, 8), alpha=v))
    add("overlay", "image", "tensor", lambda m, v: fv.overlay(v, torch.rand(8, 8)),
        st.one_of(st.none(), st.integers(), st.just(torch.rand(3, 8)), st.just(torch.rand(2, 3, 8, 8))), name="image")
    add("save_image", "path", "path", lambda m, v: fv.save_image(torch.rand(3, 8, 8), v),
        st.one_of(st.integers(), st.none(), st.just("x.xyz"), st.just("/"), st.just(__file__ + "/x.png")))
    add("save_image", "image", "tensor", lambda m, v: fv.save_image(v, "/tmp/fastviz_fuzz.png"),
        st.one_of(st.none(), st.integers(), st.just(torch.rand(5)), st.just(torch.rand(2, 8, 8))))
    add("neighbour_agreement", "k", "pos_int", lambda m, v: fv.neighbour_agreement(torch.rand(6, 2), [0, 0, 0, 1, 1, 1], k=v),
        st.one_of(BAD["pos_int"], st.integers(6, 100)))
    add("neighbour_agreement", "groups", "type", lambda m, v: fv.neighbour_agreement(torch.rand(6, 2), v),
        st.one_of(st.integers(), st.none(), st.just([0, 1])))
    add("neighbour_agreement", "points", "tensor", lambda m, v: fv.neighbour_agreement(v, [0, 1, 0]),
        st.one_of(st.none(), st.text(min_size=1, max_size=3), st.just(torch.full((3, 2), math.nan)), st.just([[1, 2], [3]])))
    # layer-wise relevance propagation
    add("lrp", "x", "images", lambda m, v: fv.lrp(m, v), images)
    add("lrp", "target", "class", lambda m, v: fv.lrp(m, X, v))
    add("lrp", "composite", "choice", lambda m, v: fv.lrp(m, X, composite=v),
        st.one_of(st.text(max_size=8), st.integers(), st.none()))
    for arg in ("epsilon", "gamma", "stabilizer"):
        add("lrp", arg, "nonneg_float", lambda m, v, arg=arg: fv.lrp(m, X, **{arg: v}),
            st.one_of(st.floats(max_value=-1e-9), NAN_INF, *_wrong_types()))
    for arg in ("low", "high"):
        add("lrp", arg, "floats", lambda m, v, arg=arg: fv.lrp(m, X, composite="epsilon_gamma_box", **{arg: v}),
            st.one_of(NAN_INF, st.text(min_size=1, max_size=3), st.just([0.0, 1.0]), st.just([]), st.none()))
    add("lrp", "rules", "type", lambda m, v: fv.lrp(m, X, rules=v),
        st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.just({"nope": fv.rules.ZPlus()}),
                  st.just({"fc": "epsilon"}), st.just({"features.2": fv.rules.ZPlus()}),
                  st.just({"features.1": fv.rules.Epsilon()}), st.just([("fc", fv.rules.Epsilon())])))
    # transformer maps (the tiny CNN has no attention: the argument is refused before that is found)
    add("attention_rollout", "x", "images", lambda m, v: fv.attention_rollout(m, v), images)
    add("attention_rollout", "residual", "unit_float", lambda m, v: fv.attention_rollout(m, X, residual=v))
    add("transformer_attribution", "x", "images", lambda m, v: fv.transformer_attribution(m, v), images)
    add("transformer_attribution", "target", "class", lambda m, v: fv.transformer_attribution(m, X, v))
    add("demo_set", "per_photo", "pos_int", lambda m, v: fv.demo_set(per_photo=v))
    add("demo_set", "size", "pos_int", lambda m, v: fv.demo_set(per_photo=1, size=v),
        st.one_of(st.integers(max_value=7), st.integers(min_value=10 ** 5), st.floats(), st.text(max_size=2)))
    _last_bad_inputs(add)
    return cases


class Strict(nn.Module):
    """Unpadded convolutions: images under 7x7 pixels shrink below a kernel's size."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3))
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _other_weights() -> str:
    """A state dict of another network (Tiny's), in a file removed at exit."""
    fd, path = tempfile.mkstemp(suffix=".pt", prefix="fastviz_fuzz_weights_")
    os.close(fd)
    torch.save(Tiny().state_dict(), path)
    atexit.register(os.remove, path)
    return path


_EMBEDDING: list = []


def _embedding(m):
    if not _EMBEDDING:
        _EMBEDDING.append(fv.embed(m, torch.rand(6, 3, SIZE, SIZE), method="pca"))
    return _EMBEDDING[0]


def _last_bad_inputs(add):
    """The inputs that reached torch or Python with a foreign error before the last round."""
    nested = st.one_of(st.just([[0.5, 0.2]]), st.just([[[0.1, 0.2, 0.3]]]), st.lists(st.floats(0, 1), min_size=1,
                                                                                       max_size=4).map(lambda v: [v]))
    add("features", "images_or_folder", "nested list", lambda m, v: fv.features(m, v), nested)
    add("embed", "images_or_folder", "nested list", lambda m, v: fv.embed(m, v, method="pca"), nested)
    add("load_model", "name", "type", lambda m, v: fv.load_model(v, weights=None),
        st.one_of(st.lists(st.text(max_size=3), max_size=2), st.just(("resnet18",)), st.floats()))
    add("load_model", "weights", "path", lambda m, v: fv.load_model("resnet18", weights=v),
        st.one_of(st.integers(), st.floats(), st.just([1]), st.just(_other_weights()),
                  st.just("/nonexistent/w.pt")))
    strict = fv.Model(Strict(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=SIZE)
    small = st.tuples(st.integers(1, 6), st.integers(1, 6)).map(lambda s: torch.rand(1, 3, *s))
    add("predict", "x", "too small", lambda m, v: fv.predict(strict, v, k=1), small)
    add("saliency", "x", "too small", lambda m, v: fv.saliency(strict, v), small)
    one_pixel = st.integers(1, 3).map(lambda b: torch.rand(b, 3, 1, 1))
    for f in ("gradcam", "guided_gradcam", "layercam", "scorecam"):
        add(f, "x", "too small", lambda m, v, f=f: getattr(fv, f)(m, v), one_pixel)
    fmap = fv.Model(nn.Conv2d(3, 4, 3, padding=1), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=SIZE)
    add("class_model", "model", "type", lambda m, v: fv.class_model(v, [1], steps=1),
        st.just(fmap) | st.just(fmap.module))
    nonfinite = st.sampled_from([math.nan, math.inf, -math.inf]).map(
        lambda v: torch.rand(2, 3, 4, 4).index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([1])), torch.tensor(v)))
    add("grid", "images", "non-finite", lambda m, v: fv.grid(v), nonfinite)
    add("normalize", "t", "non-finite", lambda m, v: fv.normalize(v), nonfinite)
    add("overlay", "image", "non-finite", lambda m, v: fv.overlay(v[0], torch.rand(4, 4)), nonfinite)
    add("overlay", "m", "non-finite", lambda m, v: fv.overlay(torch.rand(3, 4, 4), v[0, 0]), nonfinite)
    add("overlay", "image", "channels", lambda m, v: fv.overlay(v, torch.rand(8, 8)),
        st.sampled_from([2, 4, 5]).map(lambda c: torch.rand(c, 8, 8)))
    add("Embedding.scatter", "groups", "type", lambda m, v: _embedding(m).scatter(groups=v),
        st.one_of(st.integers(), st.floats(), st.just(object()), st.just(["a"])))
    add("Embedding.neighbours", "k", "pos_int", lambda m, v: _embedding(m).neighbours(0, k=v),
        st.one_of(st.text(max_size=3), st.floats(), st.none(), st.integers(max_value=0), st.integers(6, 100)))
    add("Embedding.neighbours", "i", "nonneg_int", lambda m, v: _embedding(m).neighbours(v),
        st.one_of(st.booleans(), st.text(max_size=3), st.floats(), st.integers(min_value=6)))
    _over_budget(add)


SMALL_BUDGET = 8 * 2 ** 20


def _in_budget(call):
    """call(model, value) inside an 8 MB memory budget."""
    def run(m, v):
        with fv.memory_budget(SMALL_BUDGET):
            return call(m, v)
    return run


def _over_budget(add):
    """Inputs that do not fit the memory budget: one image too large to run even alone (a
    broadcast view, no pixels allocated), or more maps than the budget holds."""
    add("memory_budget", "nbytes", "pos_int", lambda m, v: fv.memory_budget(v),
        st.one_of(st.integers(max_value=2 ** 20 - 1), st.floats(), st.booleans(), st.text(max_size=3),
                  st.just([1])))
    one = st.integers(1500, 12000).map(lambda s: torch.rand(1, 3, 1, 1).expand(1, 3, s, s))
    many = st.integers(40000, 150000).map(lambda n: torch.rand(1, 3, 1, 1).expand(n, 3, SIZE, SIZE))
    for f, kw in (("predict", {}), ("saliency", {}), ("guided_backprop", {}), ("gradcam", {}), ("layercam", {}),
                  ("scorecam", {}), ("smoothgrad", {"n": 2}), ("integrated_gradients", {"points": 2})):
        fn = getattr(fv, f)
        add(f, "x", "over budget", _in_budget(lambda m, v, fn=fn, kw=kw: fn(m, v, **kw)), one)
        if f != "predict":  # predict keeps k numbers per image, not maps
            add(f, "x", "over budget", _in_budget(lambda m, v, fn=fn, kw=kw: fn(m, v, **kw)), many)
    add("features", "images_or_folder", "over budget", _in_budget(lambda m, v: fv.features(m, v)), one)
    add("deepdream", "photo", "over budget",
        _in_budget(lambda m, v: fv.deepdream(m, v, LAYER, octaves=1, steps_per_octave=1)), one)
    add("class_model", "size", "over budget", _in_budget(lambda m, v: fv.class_model(m, [1], steps=1, size=v)),
        st.integers(1500, 12000))


CASES = _cases()
