"""Finding conv -> BatchNorm pairs in the forward that actually runs: an fx trace where the
network traces, else one recorded forward with hooks, where the autograd graph says who else
uses a conv's output. Each candidate says why it cannot be folded, or nothing."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..hooks import hooked
from .trace import LeafTracer, call_counts, grad_nodes


@dataclass
class Candidate:
    bn: str
    conv: str | None  # None: the BN's input is not a conv module's output
    reason: str = ""  # non-empty: not foldable, and why


def pairs_fx(net: nn.Module) -> list[Candidate]:
    graph = LeafTracer().trace(net)
    modules = dict(net.named_modules())
    calls = call_counts(graph)
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], _ConvNd)):
            what = getattr(src.target, "__name__", src.target) if isinstance(src, torch.fx.Node) else src
            out.append(Candidate(node.target, None, f"its input is not a conv's output (comes from {what})"))
            continue
        reason = ""
        if calls[node.target] != 1 or calls[src.target] != 1:
            reason = f"runs more than once in one forward ({calls[src.target]}x conv, {calls[node.target]}x BN)"
        elif len(src.users) != 1:
            reason = f"the conv's output is also used by {', '.join(str(u) for u in src.users if u is not node)}"
        out.append(Candidate(node.target, src.target, reason))
    return out


def pairs_recorded(net: nn.Module, x: torch.Tensor) -> list[Candidate]:
    """One forward of the copy with hooks: which conv output each BN takes, and its other uses."""
    names = {m: n for n, m in net.named_modules()}
    calls: dict[str, int] = {}
    conv_out: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(output) -> (conv, output, version)
    bn_in: dict[str, tuple[str | None, torch.Tensor | None]] = {}

    def on_conv(m, _i, out):
        n = names[m]
        calls[n] = calls.get(n, 0) + 1
        if isinstance(out, torch.Tensor):
            conv_out[id(out)] = (n, out, out._version)

    def on_bn(m, inputs):
        n = names[m]
        calls[n] = calls.get(n, 0) + 1
        t = inputs[0] if inputs else None
        hit = conv_out.get(id(t)) if isinstance(t, torch.Tensor) else None
        if hit is not None and hit[1] is t and hit[2] == t._version:
            bn_in[n] = (hit[0], t)
        else:
            bn_in[n] = (None, None)

    with contextlib.ExitStack() as hooks, torch.enable_grad():
        for m in names:
            if isinstance(m, _ConvNd):
                hooks.enter_context(hooked(m, on_conv))
            elif isinstance(m, _BatchNorm):
                hooks.enter_context(hooked(m, on_bn, "pre"))
        out = net(x.detach().requires_grad_(True))
    indeg = grad_nodes(out)
    result = []
    for bn, (conv, t) in bn_in.items():
        if conv is None:
            result.append(Candidate(bn, None, "its input is not a conv module's output"))
        elif calls[bn] != 1 or calls[conv] != 1:
            result.append(Candidate(bn, conv, f"runs more than once in one forward "
                                               f"({calls[conv]}x conv, {calls[bn]}x BN)"))
        elif t.grad_fn is not None and indeg.get(t.grad_fn, 0) != 1:
            result.append(Candidate(bn, conv, f"the conv's output is also used elsewhere "
                                               f"({indeg.get(t.grad_fn, 0)} consumers)"))
        else:
            result.append(Candidate(bn, conv))
    return result
