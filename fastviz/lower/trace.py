"""What the lowering reads of a network's forward: an fx tracer that keeps convs and BatchNorms
as leaves, call counts, the tensors of a nested output, and autograd in-degrees."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .fused import Pointwise


class LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps every conv, BatchNorm (subclasses included) and `Pointwise` as one
    call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_ConvNd, _BatchNorm, Pointwise)) or super().is_leaf_module(m, qualname)


def call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times each module runs in one forward (its call_module nodes)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def tensors(out) -> list:
    """The tensors in a (nested) network output."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in tensors(o)]
    return []


def grad_nodes(outputs) -> dict:
    """In-degree of every autograd node reachable from the output tensors."""
    indeg: dict = {}
    todo = [t.grad_fn for t in tensors(outputs) if t.grad_fn is not None]
    seen = set()
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                indeg[nxt] = indeg.get(nxt, 0) + 1
                todo.append(nxt)
    return indeg
