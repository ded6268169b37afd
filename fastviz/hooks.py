"""The restoring context (docs/design.md, rule 1), hooks, truncated forward and activation capture.

Everything fastviz does to a user's network happens inside `session(model)`: eval mode,
frozen parameters, forward hooks, `inplace` switched off. Its `finally` puts every flag back
and removes every hook, also when the call raises. Inside it, `Session.hook(module, fn, kind)`
is the one way to hook a module for a block (forward, pre-forward or backward; removed when
the block ends), and `StopForward` is the one signal that ends a forward early (`Session.run`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import checks
from .errors import FastvizError
from .layout import Layout, layout_of
from .models import Model


class StopForward(Exception):
    """Raised by a hook once it has what it needs: `Session.run` skips the rest of the network."""


_REGISTER = {"forward": "register_forward_hook", "pre": "register_forward_pre_hook",
             "backward": "register_full_backward_hook"}


@contextlib.contextmanager
def hooked(module: nn.Module, fn: Callable, kind: str = "forward") -> Iterator[None]:
    """`fn` hooked on `module` for the with block, removed on exit (also when it raises).

    kind: "forward" (fn(module, inputs, output)), "pre" (fn(module, inputs)) or "backward"
        (fn(module, grad_inputs, grad_outputs)), as torch's register_*_hook.
    """
    handle = getattr(module, _REGISTER[kind])(fn)
    try:
        yield
    finally:
        handle.remove()


class Session:
    """Hooks registered through a session are removed when it ends."""

    def __init__(self, model: Model):
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._layers: dict[str, nn.Module] = {}  # name -> module, looked up once per session
        self._layouts: dict[tuple, Layout] = {}  # (name, output shape, image shape) -> Layout

    def layer(self, name: str) -> nn.Module:
        """`model.layer(name)`, cached for the session (a synthesis loop asks every step)."""
        if name not in self._layers:
            self._layers[name] = self.model.layer(name)
        return self._layers[name]

    def layout(self, name: str, out, x: torch.Tensor) -> Layout:
        """How layer `name`'s output `out` in a forward of `x` lies on the image
        (`fastviz.layout`), worked out once per shape for the session."""
        key = (name, tuple(out.shape) if isinstance(out, torch.Tensor) else None, tuple(x.shape))
        if key not in self._layouts:
            net = getattr(self.model, "source", self.model).module  # a lowered copy: the user's
            self._layouts[key] = layout_of(net, self.layer(name), name, out, self.model.fit_size(x),
                                           x.shape[0])
        return self._layouts[key]

    def add_forward_hook(self, module: nn.Module, hook: Callable) -> None:
        """A forward hook for the rest of the session (removed when the session ends)."""
        self._handles.append(module.register_forward_hook(hook))

    def hook(self, module: nn.Module, fn: Callable, kind: str = "forward"):
        """`hooked(module, fn, kind)`: a hook for the with block (the session's network)."""
        return hooked(module, fn, kind)

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """The model on `x`; None when a hook ended the forward with `StopForward`."""
        try:
            return self.model(x)
        except StopForward:
            return None

    def remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    # -- layers used once ----------------------------------------------------------------
    def check_single_use(self, names: Sequence[str], x: torch.Tensor) -> None:
        """Refuse a target module that runs more than once in one forward (rule 8).

        The count takes one no-grad forward of one image per (model, layer), cached on the Model.
        """
        todo = [n for n in names if n not in self.model._single_use]
        if todo:
            counts = Counter(dict.fromkeys(todo, 0))
            with contextlib.ExitStack() as hooks, torch.no_grad():
                for n in todo:
                    hooks.enter_context(self.hook(self.model.layer(n), lambda *_, n=n: counts.update([n])))
                self.model(x[:1].detach())
            for n, c in counts.items():
                self.model._single_use[n] = c
        for n in names:
            if self.model._single_use[n] != 1:
                raise FastvizError(
                    f"layer: module {n!r} runs {self.model._single_use[n]} times in one forward "
                    f"(one module object reused), so its activation is ambiguous; pick a module "
                    f"that runs once, e.g. its parent block"
                )

    # -- capture -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, layers: Sequence[str] = (), stop: bool = True
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Run the model on [0, 1] images, capturing the outputs of `layers`, each laid out as a
        map (B, C, h, w) (`Session.layout`: tokens on their patch grid, channels-last stages
        permuted; differentiable).

        Args:
            x: (B, C, H, W) images in [0, 1].
            layers: dotted module names whose outputs to capture.
            stop: stop the forward once every layer in `layers` has run (rule 4).

        Returns:
            (activations by name, logits or None when the forward stopped early).
        """
        layers = list(dict.fromkeys(layers))
        modules = [self.layer(n) for n in layers]
        self.check_single_use(layers, x)
        acts: dict[str, torch.Tensor] = {}

        def grab(name: str, out) -> None:
            acts[name] = self.layout(name, out, x).to_map(out)
            if stop and len(acts) == len(layers):
                raise StopForward

        with contextlib.ExitStack() as hooks:
            for name, module in zip(layers, modules):
                hooks.enter_context(self.hook(module, lambda _m, _i, out, name=name: grab(name, out)))
            logits = self.run(x)
        return acts, logits


@contextlib.contextmanager
def on_device(model: Model, device) -> Iterator[torch.device]:
    """Run on `device`, moving the network there for the call and back afterwards (rule 1).

    The move back does not move anything: every parameter, gradient and buffer gets back the
    very tensor it held before (same storage, same device), so it works whatever happened in
    between, a move that failed half way, a KeyboardInterrupt, a device that cannot be
    copied back from.
    """
    before = model.device
    target = checks.device(device) if device is not None else before
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if target == before:
        yield target
        return
    saved = [(m, dict(m._parameters), {k: (p.data, p.grad) for k, p in m._parameters.items()
                                       if p is not None}, dict(m._buffers))
             for m in model.module.modules()]
    try:
        model.module.to(target)
        yield target
    finally:
        for m, params, data, buffers in saved:
            m._parameters.update(params)
            for k, (d, g) in data.items():
                p = params[k]
                p.data = d
                p.grad = g
            m._buffers.update(buffers)


# Module flags that make a forward checkpoint itself (timm, torchvision's DenseNet).
CHECKPOINT_FLAGS = ("grad_checkpointing", "memory_efficient")


@contextlib.contextmanager
def session(model: Model, *, freeze: bool = True, eval_mode: bool = True,
            no_inplace: bool = False, unfused_attention: bool = False) -> Iterator[Session]:
    """Borrow the user's network and give it back exactly as it came.

    Args:
        model: the wrapped network.
        freeze: set requires_grad=False on every parameter (rule 2: no weight gradients).
        eval_mode: switch every module to eval mode.
        no_inplace: set `inplace=False` on modules that have the flag (ReLU, ...), so that a
            captured activation is not overwritten later in the forward.
        unfused_attention: set `fused_attn=False` on attention modules that have the flag
            (timm's), so that they compute their attention probabilities where a hook sees them.

    Gradient checkpointing (timm's `grad_checkpointing`, torchvision DenseNet's
    `memory_efficient`) is always switched off for the call: it recomputes a block's forward
    during the backward, so the hooks would run twice and a layer swapped for a leaf (the CAMs)
    would not be the one recomputed.

    On exit (normal or not): hooks removed, `training`, `requires_grad`, `inplace`,
    `fused_attn` and the checkpointing flags restored on the same module objects.
    """
    net = model.module
    modules = list(net.modules())
    training = [m.training for m in modules]
    params = list(net.parameters())
    requires_grad = [p.requires_grad for p in params]
    inplace = [(m, m.inplace) for m in modules if isinstance(getattr(m, "inplace", None), bool)]
    fused = [(m, m.fused_attn) for m in modules if isinstance(getattr(m, "fused_attn", None), bool)]
    checkpointing = [(m, flag, getattr(m, flag)) for m in modules for flag in CHECKPOINT_FLAGS
                     if isinstance(getattr(m, flag, None), bool)]
    s = Session(model)
    try:
        if eval_mode:
            net.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        if no_inplace:
            for m, _ in inplace:
                m.inplace = False
        if unfused_attention:
            for m, _ in fused:
                m.fused_attn = False
        for m, flag, _ in checkpointing:
            setattr(m, flag, False)
        yield s
    finally:
        s.remove_hooks()
        for m, t in zip(modules, training):
            m.training = t
        for p, g in zip(params, requires_grad):
            p.requires_grad_(g)
        for m, v in inplace:
            m.inplace = v
        for m, v in fused:
            m.fused_attn = v
        for m, flag, v in checkpointing:
            setattr(m, flag, v)
