"""The relevance network: a canonical copy of the user's network whose backward is LRP.

Built once per (network weights, device, dtype, rules) and cached on the `Model`:
1. the canonical copy (`canonical.py`: frozen, eval, BatchNorm folded exactly where the traced
   forward pairs it with a conv, convs rewritten for speed);
2. traced with torch.fx, keeping convs, dense layers, BatchNorms, pools and activations as
   leaves; every node that computes on a tensor gets what the composite (or the user's rule
   for that layer name) says:
   - convs and dense layers: their rule (Epsilon, ZPlus, Gamma, ...);
   - a sum of two tensors (a residual connection, `x + f(x)`): Norm, each branch keeps its
     share of the sum, R_a = a * r / stab(a + b);
   - average pools and means: Norm; element-wise activations and BatchNorms left unfolded:
     Pass; a product with a sigmoid gate (squeeze-excitation): the gate takes no relevance,
     the gated branch all of it (Arras et al. 2017); scaling by a constant: Pass;
   - views, concatenations, padding, max pools, dropout: their own backward, which moves
     relevance without changing it (a max pool gives it to the maximum: winner takes all);
   - anything else is refused before anything runs, naming the node, its operation and the
     module it sits in. Nothing falls back to the plain gradient silently.
Each rule runs in the backward of a small autograd Function around the node (`ops.py`), so the
whole explanation is one forward and one backward of the copy.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..errors import FastvizError
from ..lower.rewrites import replace_module
from .canonical import PointwiseConv, canonical_copy
from .ops import GateOp, RuleOp, SumOp
from .rules import AFFINE, ELEMENTWISE, LINEAR, Affine, LinearMap, Pass, Rule

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
             nn.AdaptiveAvgPool3d)
# modules whose own backward moves relevance without changing its total
MOVERS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
          nn.Identity, nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
          nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ChannelShuffle, nn.PixelShuffle,
          nn.PixelUnshuffle)
NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
GATES = (nn.Sigmoid, nn.Hardsigmoid)

_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_", "__truediv__"}
_ACT_FUNCS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.sigmoid, F.sigmoid, F.silu, F.gelu,
              F.hardswish, F.hardsigmoid, torch.tanh, F.tanh, F.elu, F.leaky_relu, F.mish,
              F.softplus, torch.clamp, "relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min",
              "clamp_", "hardtanh"}
_NONNEG_FUNCS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, "relu",
                 "relu_", "sigmoid"}
_GATE_FUNCS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid"}
_POOL_FUNCS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d,
               F.avg_pool2d, F.avg_pool3d, torch.mean, "mean", torch.sum, "sum"}
_MOVER_FUNCS = {torch.flatten, torch.cat, torch.concat, torch.stack, torch.reshape, torch.squeeze,
                torch.unsqueeze, torch.permute, torch.transpose, torch.chunk, torch.split,
                operator.getitem, F.pad, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.dropout,
                "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                "unsqueeze", "chunk", "split", "view_as", "reshape_as", "flatten", "float",
                "to", "type_as", "clone", "expand", "expand_as", "repeat"}


_TRANSFORMER_OPS = {"layer_norm", "softmax", "scaled_dot_product_attention", "matmul", "bmm", "baddbmm",
                    "einsum", "group_norm", "_assert"}


def _method(name):
    return lambda x, *args, **kwargs: getattr(x, name)(*args, **kwargs)


@dataclass
class RelevanceNet:
    """The rewritten copy, and what was decided for each layer."""

    module: torch.fx.GraphModule
    rules: dict[str, str] = field(default_factory=dict)   # layer / node -> the rule it got
    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv, bn) folded
    passed: list[str] = field(default_factory=list)  # BatchNorms left unfolded (Pass)


class _Tracer(torch.fx.Tracer):
    """Keeps the layers rules apply to as leaves, and notes in each node's meta["where"] the
    module (path, class) whose forward it belongs to, for messages."""

    def __init__(self):
        super().__init__()
        self._inside: list[tuple[str, str]] = []

    def call_module(self, m, forward, args, kwargs):
        self._inside.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._inside.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        if self._inside:
            node.meta["where"] = self._inside[-1]
        return node

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (_ConvNd, PointwiseConv, nn.Linear, _BatchNorm) + ACTIVATIONS + AVG_POOLS + MOVERS)
                or super().is_leaf_module(m, qualname))


def _where(node: torch.fx.Node) -> str:
    path, kind = node.meta.get("where", ("", ""))
    return f" in {path or 'the forward'}{f' ({kind})' if kind else ''}"


def _op_name(node: torch.fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _carries_tensor(meta) -> bool:
    if isinstance(meta, TensorMetadata):
        return True
    if isinstance(meta, (list, tuple)):
        return any(_carries_tensor(m) for m in meta)
    if isinstance(meta, dict):
        return any(_carries_tensor(m) for m in meta.values())
    return False


def _is_tensor(a) -> bool:
    return isinstance(a, torch.fx.Node) and isinstance(a.meta.get("tensor_meta"), TensorMetadata)


class _Builder:
    """Walks the traced graph once, in execution order, giving every tensor node its rule."""

    def __init__(self, gm: torch.fx.GraphModule, assign, result: RelevanceNet):
        self.gm, self.assign, self.result = gm, assign, result
        self.modules = dict(gm.named_modules())
        self.nonneg: dict[torch.fx.Node, bool] = {}
        self.gates: set[torch.fx.Node] = set()
        self.installed: dict[int, RuleOp] = {}  # id(module) -> its RuleOp (a module used twice)
        self.first = True
        self.count = 0

    def install(self, node, op: nn.Module, args=None) -> None:
        name = f"_lrp{self.count}"
        self.count += 1
        self.gm.add_submodule(name, op)
        node.op, node.target = "call_module", name
        if args is not None:
            node.args, node.kwargs = args, {}

    def wrap_module(self, node, m, rule, layer, nonneg=False) -> None:
        """Replace `m` by a RuleOp everywhere; a module called again keeps its RuleOp, and its
        `nonneg` holds only if it holds on every call."""
        op = self.installed.get(id(m))
        if op is None:
            op = RuleOp(m, rule, layer, nonneg=nonneg, name=node.target)
            replace_module(self.gm, m, op)
            self.installed[id(m)] = op
            self.result.rules[node.target] = repr(rule)
        else:
            op.nonneg = op.nonneg and nonneg

    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op in ("placeholder", "output", "get_attr"):
                self.nonneg[node] = False
            elif _carries_tensor(node.meta.get("tensor_meta")):
                if node.op == "call_module":
                    self.module_node(node)
                else:
                    self.function_node(node)

    def module_node(self, node) -> None:
        m = self.modules[node.target]
        name = node.target
        args = [a for a in node.args if _is_tensor(a)]
        src_nonneg = bool(args) and all(self.nonneg.get(a, False) for a in args)
        self.nonneg[node] = False
        if isinstance(m, (_ConvNd, PointwiseConv, nn.Linear)):
            if getattr(m, "transposed", False):
                raise FastvizError(f"lrp: layer {name!r} is a transposed convolution; no rule here covers it")
            rule = self.installed[id(m)].rule if id(m) in self.installed else self.assign(
                name, "dense" if isinstance(m, nn.Linear) else "conv", m, self.first)
            self.first = False
            _check_kind(rule, AFFINE, name, type(m).__name__)
            self.wrap_module(node, m, rule, Affine(m), nonneg=src_nonneg)
        elif isinstance(m, (_BatchNorm,) + ACTIVATIONS):
            kind = "batchnorm" if isinstance(m, _BatchNorm) else "activation"
            rule = self.installed[id(m)].rule if id(m) in self.installed else self.assign(name, kind, m, False)
            _check_kind(rule, ELEMENTWISE, name, type(m).__name__)
            if kind == "batchnorm" and name not in self.result.passed:
                self.result.passed.append(name)
            self.wrap_module(node, m, rule, None)
            self.nonneg[node] = isinstance(m, NONNEG_MODULES) or (isinstance(m, nn.Hardtanh) and m.min_val >= 0)
            if isinstance(m, GATES):
                self.gates.add(node)
        elif isinstance(m, AVG_POOLS):
            rule = self.installed[id(m)].rule if id(m) in self.installed else self.assign(name, "pool", m, False)
            _check_kind(rule, LINEAR, name, type(m).__name__)
            self.wrap_module(node, m, rule, LinearMap(m))
            self.nonneg[node] = src_nonneg
        elif isinstance(m, MOVERS):
            self.nonneg[node] = src_nonneg
        else:
            raise FastvizError(
                f"lrp: layer {name!r} ({type(m).__name__}) has no LRP rule: convolutions, dense "
                f"layers, BatchNorm, element-wise activations, pools, sums, views and "
                f"concatenations are covered (transformer blocks are not: attention needs rules "
                f"of its own, AttnLRP, which fastviz does not have yet)")

    def function_node(self, node) -> None:
        target = node.target
        label = f"{node.name} ({_op_name(node)}{_where(node)})"
        args = [a for a in node.args if _is_tensor(a)]
        src_nonneg = bool(args) and all(self.nonneg.get(a, False) for a in args)
        self.nonneg[node] = False
        others = [a for a in [*node.args, *node.kwargs.values()] if isinstance(a, torch.fx.Node) and a not in args]
        if target in _MOVER_FUNCS:
            self.nonneg[node] = src_nonneg
            return
        if len(args) == 1 and not any(_carries_tensor(a.meta.get("tensor_meta")) for a in others):
            pos = node.args.index(args[0])
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
            if target in _ADD or target in _MUL or (target in _DIV and pos == 0) or target in _ACT_FUNCS:
                # an activation, or a constant added or scaling: element-wise, relevance passes
                self.install(node, RuleOp(_call(target), Pass(), name=label, pos=pos))
                self.nonneg[node] = (target in _NONNEG_FUNCS or (target in _ADD | _MUL and src_nonneg)
                                     or (target in ("clamp", "clamp_min", torch.clamp) and _min_at_least_zero(node)))
                if target in _GATE_FUNCS:
                    self.gates.add(node)
                return
            if target in _POOL_FUNCS:
                rule = self.assign(label, "pool", None, False)
                _check_kind(rule, LINEAR, label, _op_name(node))
                self.install(node, RuleOp(_call(target), rule, name=label, pos=pos))
                self.result.rules[label] = repr(rule)
                self.nonneg[node] = src_nonneg
                return
        if len(args) == 2 and len(node.args) == 2 and not node.kwargs:
            if target in _ADD:
                rule = self.assign(label, "sum", None, False)
                _check_kind(rule, LINEAR, label, "sum")
                self.install(node, SumOp(rule, name=label), args=tuple(args))
                self.result.rules[label] = repr(rule)
                self.nonneg[node] = src_nonneg
                return
            if target in _MUL and any(a in self.gates for a in args):
                gate_first = args[0] in self.gates
                self.install(node, GateOp(gate_first, name=label), args=tuple(args))
                self.result.rules[label] = "gate"
                self.nonneg[node] = self.nonneg.get(args[1 if gate_first else 0], False)
                return
        why = (": a product or quotient of two tensors that is not a sigmoid gate times a signal"
               if target in _MUL or target in _DIV else "")
        if _op_name(node) in _TRANSFORMER_OPS:
            why += (" (a transformer's operation: attention and layer norms need rules of their own, "
                    "AttnLRP, which fastviz does not have yet)")
        raise FastvizError(f"lrp: the network computes {label}{why}, which no LRP rule covers; covered: "
                           f"convolutions, dense layers, BatchNorm, element-wise activations, "
                           f"pools, sums of two branches, sigmoid gates, scaling by a constant, "
                           f"views and concatenations")


def build(net: nn.Module, x: torch.Tensor, assign) -> RelevanceNet:
    """The relevance network of `net` for inputs like `x` (normalised, one row is enough).

    Args:
        net: the user's network (read only).
        x: (1, C, H, W) an input it takes, to tell tensors from sizes in the trace.
        assign: (name, kind, module, first) -> Rule: the composite and the user's rules; kind is
            "conv", "dense", "batchnorm", "activation", "pool" or "sum".
    """
    try:
        new, folded = canonical_copy(net)
        gm = torch.fx.GraphModule(new, _Tracer().trace(new))
    except Exception as e:  # data-dependent control flow, ...
        why = str(e).splitlines()[0][:160] if str(e) else ""
        raise FastvizError(f"lrp: cannot trace {type(net).__name__} with torch.fx ({type(e).__name__}: "
                           f"{why}); LRP needs the whole forward as a graph to give every "
                           f"operation a rule") from None
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as e:  # the traced copy does not run on this input (a fixed-size model, ...)
        cause = e.__cause__ or e
        why = str(cause).splitlines()[0][:200] if str(cause) else ""
        raise FastvizError(f"x: {type(net).__name__} does not run on an input of shape "
                           f"{tuple(x.shape[1:])} ({type(cause).__name__}: {why})") from None
    result = RelevanceNet(gm, folded=folded)
    _Builder(gm, assign, result).run()
    gm.graph.lint()
    gm.recompile()
    return result


def _call(target):
    return _method(target) if isinstance(target, str) else target


def _min_at_least_zero(node) -> bool:
    lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
    return isinstance(lo, (int, float)) and lo >= 0


def _check_kind(rule: Rule, kind: str, name: str, what: str) -> None:
    if kind not in rule.kinds:
        raise FastvizError(f"rules: {rule} does not apply to {name!r} ({what}, {kind}); it applies "
                           f"to {' and '.join(rule.kinds)} layers")
