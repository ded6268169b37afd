"""The lowered network for the synthesis loop: a private copy, BNs folded, activations fused, NHWC.

The loop never trains, so the network it runs can be rewritten once for speed. `lowered(model, x)`
returns a `LoweredModel`: a deep copy of the user's network, in eval mode with parameters frozen,
where every BatchNorm that directly follows a convolution is folded into that convolution's
weight and bias (the BN module is replaced by `nn.Identity`, so its name still resolves and a
hook on it sees what the BN would have output), with 4-D weights and the input in channels_last.
The user's network is only read (docs/design.md, rule 1): it is copied, never hooked or changed.

Conv -> BN pairs come from the forward that actually runs: `torch.fx` (convolutions and
BatchNorms kept as leaves) where the network traces, else one recorded forward with hooks on
the copy, where the autograd graph says who else uses a conv's output. A pair is folded only when
it is safe, else skipped with the reason in `LoweredModel.report` (and `Render.info["lower"]`):
- the BN's input is something other than a conv module's output (a BN after a ReLU, a cat, ...);
- the conv's output is also used elsewhere (a residual, an in-place op, a second consumer);
- either module runs more than once in one forward, has hooks of its own or is parametrized;
- the BN keeps no running statistics (it normalises by batch statistics even in eval mode);
- the conv is transposed, or a layer the caller needs unchanged (`keep`: a conv whose own
  output an objective reads would otherwise show the folded, BN-scaled values).

More rewrites, each checked on a random input and skipped when in doubt, all keeping the
module's name, so hooks and layer names resolve as before:
- a conv that pads with a zero-padding module first (EfficientNet's TensorFlow "SAME" ports)
  gets the padding as its own, saving a padded copy per call (a depthwise conv's one-sided pad by
  growing the kernel by a zero row and column; see `_plain_conv`);
- on the CPU in channels_last, a 1x1 stride-1 conv becomes `Pointwise`, one matmul over the
  NHWC view (PyTorch sends these, at one thread and small batches, to an im2col path that
  copies around the same GEMM);
- on the CPU in channels_last, a ReLU / ReLU6 module whose input is a conv's output and nothing
  else's (through folded BNs) runs in that conv's oneDNN epilogue (`ConvAct`, `Pointwise.act`):
  the conv marks its output, and the activation module, now a pass-through subclass of its own
  class, returns a marked input as it is (see `_fuse_activations`). A name the caller reads
  (`keep`) is never on such a path. The backward takes the activation's mask from the output,
  so that output must not change in place afterwards: a conv whose activated output fx sees
  changed in place is left alone, and one forward + backward of the copy at lowering catches
  what fx does not see (`y += 1`); if it fails, nothing is fused and the report says why.
  Where the activated output's only consumer is a conv, the gradient reaching the fused conv's
  backward is that conv's fresh input gradient, so the mask is applied to it in place
  (`grad_owned`, `report.mask_in_place`); a residual add, which hands one tensor to two
  branches, never qualifies.

The modules the copy is rewritten into (`Pointwise`, `PadConv2d`, `ConvAct`, the pass-through
activations) and their kernels are in `fastviz.fused`; this module decides where they go.

The copy is cached on the `Model` per (device, dtype) and made again when the weights change:
the fingerprint is each parameter and buffer's identity, shape, dtype, autograd version counter
(bumped by every in-place change, `load_state_dict` included) and its sum (which also catches
changes through `.data`, which bypass the version counter). Checking it costs one pass over the
weights per call, never per step. Memory: one copy of the weights and buffers per (device, dtype),
plus, on the CPU, each matmul's weight transposed for its backward (EfficientNet-Lite0: 4.7 M
parameters, 29.7 MB in fp32, 12 MB of it the transposes); `release(model)` drops it.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .fused import Act, ConvAct, PadConv2d, Pointwise, activate_, activation_of, pass_through
from .models import Model


@dataclass
class LowerReport:
    """What lowering did: folded (conv, bn) pairs, skipped BNs with reasons, how pairs were found."""

    folded: list = field(default_factory=list)   # [(conv name, bn name)]
    skipped: list = field(default_factory=list)  # [(bn name, reason)]
    method: str = ""                             # "fx" or "recorded forward (fx: <why not>)"
    channels_last: bool = False
    copy_bytes: int = 0
    padding_folded: list = field(default_factory=list)  # convs whose zero padding module became conv padding
    matmul: list = field(default_factory=list)           # 1x1 convs run as one matmul over NHWC
    activation_fused: list = field(default_factory=list)  # [(conv, [Identities after it], activation)]:
                                                          # the conv now applies that activation
    mask_in_place: list = field(default_factory=list)     # fused convs whose backward masks in place

    def shows_other_values(self, names) -> bool:
        """Whether a layer named in `names` shows other values than in the original: a folded
        conv, or a conv (or BN after it) that now applies its activation, or a parent of those."""
        names = set(names)
        return bool(names & {c for c, _ in self.folded}) or any(
            _reads(names, [c, *path], act) for c, path, act in self.activation_fused)

    def summary(self) -> dict:
        """A small dict for `Render.info["lower"]`."""
        return {"folded": len(self.folded), "skipped": [f"{n}: {r}" for n, r in self.skipped],
                "method": self.method, "channels_last": self.channels_last,
                "padding_folded": len(self.padding_folded), "matmul": len(self.matmul),
                "activation_fused": len(self.activation_fused), "mask_in_place": len(self.mask_in_place),
                "copy_mb": round(self.copy_bytes / 2**20, 1)}


class _ChannelsLast(torch.autograd.Function):
    """x in channels_last forward; the gradient back in x's own (contiguous) layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.contiguous()


class LoweredModel(Model):
    """A `Model` over the lowered copy: same normalisation, labels and layer names.

    Attributes:
        report: the `LowerReport`.
        source: the user's `Model` it was made from.
    """

    def __init__(self, source: Model, module: nn.Module, report: LowerReport):
        super().__init__(module, source.mean, source.std, source.input_size, source.labels,
                         name=source.name, output=source.output)
        self.source, self.report = source, report

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.report.channels_last and x.dim() == 4:
            x = _ChannelsLast.apply(x)
        return self.select(self.module(x))

    def __repr__(self) -> str:
        return f"LoweredModel({self.name}, folded {len(self.report.folded)} BN, {self.report.method})"


# -- finding conv -> BN pairs ------------------------------------------------------------------
class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps every conv, BatchNorm (subclasses included) and `Pointwise` as one
    call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_ConvNd, _BatchNorm, Pointwise)) or super().is_leaf_module(m, qualname)


def _call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times each module runs in one forward (its call_module nodes)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


@dataclass
class _Candidate:
    bn: str
    conv: str | None  # None: the BN's input is not a conv module's output
    reason: str = ""  # non-empty: not foldable, and why


def _pairs_fx(net: nn.Module) -> list[_Candidate]:
    graph = _LeafTracer().trace(net)
    modules = dict(net.named_modules())
    calls = _call_counts(graph)
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], _ConvNd)):
            what = src.target if isinstance(src, torch.fx.Node) else src
            out.append(_Candidate(node.target, None, f"its input is not a conv's output (comes from {what})"))
            continue
        reason = ""
        if calls[node.target] != 1 or calls[src.target] != 1:
            reason = f"runs more than once in one forward ({calls[src.target]}x conv, {calls[node.target]}x BN)"
        elif len(src.users) != 1:
            reason = f"the conv's output is also used by {', '.join(str(u) for u in src.users if u is not node)}"
        out.append(_Candidate(node.target, src.target, reason))
    return out


def _grad_nodes(outputs) -> dict:
    """In-degree of every autograd node reachable from the output tensors."""
    indeg: dict = {}
    todo = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
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


def _pairs_recorded(net: nn.Module, x: torch.Tensor) -> list[_Candidate]:
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

    handles = []
    for m, n in names.items():
        if isinstance(m, _ConvNd):
            handles.append(m.register_forward_hook(on_conv))
        elif isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(on_bn))
    try:
        with torch.enable_grad():
            out = net(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    indeg = _grad_nodes(out)
    result = []
    for bn, (conv, t) in bn_in.items():
        if conv is None:
            result.append(_Candidate(bn, None, "its input is not a conv module's output"))
        elif calls[bn] != 1 or calls[conv] != 1:
            result.append(_Candidate(bn, conv, f"runs more than once in one forward "
                                               f"({calls[conv]}x conv, {calls[bn]}x BN)"))
        elif t.grad_fn is not None and indeg.get(t.grad_fn, 0) != 1:
            result.append(_Candidate(bn, conv, f"the conv's output is also used elsewhere "
                                               f"({indeg.get(t.grad_fn, 0)} consumers)"))
        else:
            result.append(_Candidate(bn, conv))
    return result


# -- folding -----------------------------------------------------------------------------------
def _unfoldable(conv: nn.Module, bn: nn.Module) -> str:
    if getattr(conv, "transposed", False):
        return "the conv is transposed"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "the BN keeps no running statistics (batch statistics in eval mode)"
    if bn.num_features != conv.out_channels:
        return f"the BN has {bn.num_features} features for {conv.out_channels} conv channels"
    for m in (conv, bn):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return "a hook is registered on it"
        if torch.nn.utils.parametrize.is_parametrized(m):
            return "it is parametrized"
    if not isinstance(conv.weight, torch.Tensor) or conv.weight.dim() < 3:
        return "the conv has no plain weight tensor"
    return ""


@torch.no_grad()
def _fold(conv: _ConvNd, bn: _BatchNorm) -> None:
    """conv(x) -> bn(conv(x)) in place: W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    w = conv.weight
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    w.copy_((w.double() * s.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    bias = ((b - mean) * s + beta).to(w.dtype)
    if conv.bias is not None:
        conv.bias.copy_(bias)
    else:
        conv.bias = nn.Parameter(bias, requires_grad=False)


# -- activations fused into the conv before them (CPU) -----------------------------------------
# The conv kinds that can take an activation, and whose backward returns a fresh input gradient.
_FUSABLE_CONVS = (nn.Conv2d, PadConv2d, Pointwise)

def _fuse_activations(net: nn.Module, report: LowerReport, keep: set) -> None:
    """Each ReLU / ReLU6 module call whose input is a conv's output (through folded BNs, now
    Identity) and nothing else's: the conv applies it (`ConvAct`, `Pointwise.act`) and the
    activation module passes that output through. Skipped when the network does not trace,
    when a name on the way is one the caller reads (`keep`), or when the fused conv does not
    compute what conv + activation did on a random input.
    """
    try:
        graph = _LeafTracer().trace(net)
    except Exception as e:
        if any(activation_of(m) is not None for m in net.modules()):
            report.skipped.append(("activations", f"not fused: fx cannot trace the network ({type(e).__name__})"))
        return
    modules = dict(net.named_modules())
    calls = _call_counts(graph)
    fused: dict[str, tuple[Act, list, str, bool]] = {}  # conv -> (act, path, act module, grad owned)
    for node in graph.nodes:
        act = activation_of(modules[node.target]) if node.op == "call_module" else None
        if act is None:
            continue
        src, path = node.args[0] if node.args else None, []
        while isinstance(src, torch.fx.Node) and src.op == "call_module" \
                and type(modules[src.target]) is nn.Identity and len(src.users) == 1:
            path.append(src.target)
            src = src.args[0] if src.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = modules[src.target]
        changed = [src.target, *path]
        if any(_in_place(u, modules, act) for u in node.users):
            continue  # the fused op keeps its output for the backward: it must not change after
        if type(conv) not in _FUSABLE_CONVS or calls[src.target] != 1 or src.target in fused \
                or _reads(keep, changed, node.target) \
                or any(modules[n]._forward_hooks or modules[n]._forward_pre_hooks for n in changed):
            continue
        fused[src.target] = (act, path, node.target, _owned_gradient(node, modules))
    for name, (act, path, act_name, owned) in fused.items():
        conv = modules[name]
        if isinstance(conv, Pointwise):
            new = copy.copy(conv)
            new.act = act
        else:
            new = ConvAct.of(conv, act)
        if not _same_function(conv, new, act):
            continue
        new.grad_owned = owned
        _replace(net, conv, new)
        report.activation_fused.append((name, path, act_name))
        if owned:
            report.mask_in_place.append(name)
    if report.activation_fused:
        for m in net.modules():
            if activation_of(m) is not None:
                pass_through(m)


def _owned_gradient(act_node: torch.fx.Node, modules: dict) -> bool:
    """Whether the gradient of `act_node`'s output is, in every backward, a tensor nothing else
    holds: its only consumer is a conv (or `Pointwise`) without backward hooks, whose backward
    returns a fresh input gradient. A residual add, by contrast, hands one tensor to both its
    inputs, so masking it in place would change the other branch's gradient."""
    if len(act_node.users) != 1:
        return False
    (user,) = act_node.users
    if user.op != "call_module" or type(modules[user.target]) not in _FUSABLE_CONVS:
        return False
    m = modules[user.target]
    return user.args[:1] == (act_node,) and not (m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


def _in_place(user: torch.fx.Node, modules: dict, act: Act) -> bool:
    """Whether fx node `user` changes its input in place: `add_`, `torch.relu_`, an inplace module
    other than a same-kind activation (which passes the activated output through). fx records
    `y += 1` as an ordinary add; `_backward_fails` catches that one."""
    if user.op == "call_function":
        return getattr(user.target, "__name__", "").endswith("_")
    if user.op == "call_method":
        return str(user.target).endswith("_")
    if user.op == "call_module":
        m = modules[user.target]
        return bool(getattr(m, "inplace", False)) and activation_of(m) != act
    return False


def _backward_fails(net: nn.Module, x: torch.Tensor) -> str:
    """Why one forward + backward to `x` of `net` raises, or "" (the end-to-end check of the fusion)."""
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            out = net(xi.contiguous(memory_format=torch.channels_last) if xi.dim() == 4 else xi)
            outs = [t for t in _tensors(out) if t.requires_grad]
            if outs:
                torch.autograd.grad(sum(t.float().sum() for t in outs), xi, allow_unused=True)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return ""


def _tensors(out) -> list:
    """The tensors in a (nested) network output."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _reads(keep: set, changed: list, act: str) -> bool:
    """Whether a name the caller reads shows one of `changed`'s outputs: the name itself, or a
    parent module holding it but not the activation (a Sequential(conv, bn) whose output is
    the BN's)."""
    return any(n == k or (n.startswith(k + ".") and not act.startswith(k + "."))
               for k in keep for n in changed)


@torch.no_grad()
def _same_function(conv: nn.Module, new: nn.Module, act: Act) -> bool:
    """new(x) == act(conv(x)) on a random channels_last input (the op exists and does that)."""
    k = conv.kernel_size if isinstance(conv, nn.Conv2d) else (1, 1)
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(2, conv.in_channels, 2 * k[0] + 3, 2 * k[1] + 3, generator=g)
    x = x.to(conv.weight).contiguous(memory_format=torch.channels_last)
    try:
        want = activate_(conv(x).clone(), act)
        got = new(x)
    except Exception:
        return False
    return want.shape == got.shape and torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def _identity_like(m) -> bool:
    """nn.Identity, or a package's own `Identity` module (EfficientNet's static padding of 0)."""
    return m is None or isinstance(m, nn.Identity) or (type(m).__name__ == "Identity" and not list(m.parameters()))


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """A plain nn.Conv2d computing what `conv` computes, sharing its weights; None if unsure.

    `conv` is a plain Conv2d already, or a subclass that pads with a `static_padding` module
    first (TensorFlow "SAME" padding in EfficientNet ports). The pad becomes the conv's own
    padding, which saves a zero-filled, padded copy of the activation forward and a slice of the
    gradient backward:
    - a symmetric pad (p, p) is the conv's padding p;
    - a one-sided "SAME" pad (p, p + 1), as at stride 2, of a depthwise conv is padding p + 1
      with one zero row and column prepended to the kernel: the extra tap meets only the extra
      padding, and the larger kernel costs less than the padded copy (Lite0, batch 8, forward +
      backward: 0.6x the time at 96 x 112 x 112, 0.8x at 672 x 14 x 14);
    - any other one-sided pad stays an explicit pad in a `PadConv2d` (a dense conv's grown kernel
      costs more than the copy: Lite0's stem, 3 -> 32 channels, 1.5x the time of pad + 3x3).
    The result is checked on a random input; any doubt keeps the original.
    """
    if type(conv) is nn.Conv2d:
        return conv
    pad = getattr(conv, "static_padding", None)
    if conv.padding_mode != "zeros" or any(conv.padding) or "forward" not in type(conv).__dict__:
        return None
    weight = conv.weight
    if _identity_like(pad):
        p = (0, 0)
    elif not isinstance(pad, nn.ZeroPad2d):
        return None
    elif pad.padding[0] == pad.padding[1] and pad.padding[2] == pad.padding[3]:
        p = (pad.padding[2], pad.padding[0])
    elif pad.padding[1] == pad.padding[0] + 1 and pad.padding[3] == pad.padding[2] + 1 \
            and conv.dilation == (1, 1) and conv.groups == conv.in_channels:
        p = (pad.padding[3], pad.padding[1])
        weight = nn.Parameter(nn.functional.pad(conv.weight.detach(), (1, 0, 1, 0)), requires_grad=False)
    else:
        p = (0, 0)
    cls = nn.Conv2d if _identity_like(pad) or p != (0, 0) else PadConv2d
    new = cls(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride, p, conv.dilation,
              conv.groups, conv.bias is not None)
    new.weight, new.bias = weight, conv.bias
    if cls is PadConv2d:
        new.pre_pad = tuple(pad.padding)
    kh, kw = conv.kernel_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, conv.in_channels, 2 * kh + 4, 2 * kw + 4, generator=g).to(conv.weight)
    with torch.no_grad():
        want, got = conv(x), new(x)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
        return None
    return new


def _rewrite_convs(net: nn.Module, report: LowerReport, matmul: bool) -> None:
    """Padding folded into convs (every device) and 1x1 convs as matmuls (`matmul`: CPU, NHWC)."""
    for name, conv in list(net.named_modules()):
        if not isinstance(conv, nn.Conv2d) or conv._forward_hooks or conv._forward_pre_hooks \
                or torch.nn.utils.parametrize.is_parametrized(conv):
            continue
        plain = _plain_conv(conv)
        if plain is None:
            continue
        if matmul and plain.kernel_size == (1, 1) and plain.stride == (1, 1) and plain.padding == (0, 0) \
                and plain.dilation == (1, 1) and plain.groups == 1:
            _replace(net, conv, Pointwise(plain))
            report.matmul.append(name)
        elif plain is not conv and (plain.padding != (0, 0) or type(plain) is PadConv2d):
            _replace(net, conv, plain)
            if type(plain) is not PadConv2d:
                report.padding_folded.append(name)


def _replace(net: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put `new` in every place `target` is registered (a module may be registered under two names)."""
    for _, parent in net.named_modules(remove_duplicate=False):
        for k, child in list(parent._modules.items()):
            if child is target:
                parent._modules[k] = new


def lower_module(net: nn.Module, x: torch.Tensor, *, keep=(), channels_last: bool = True,
                 activations: bool = True) -> tuple[nn.Module, LowerReport]:
    """A lowered deep copy of `net` (which is only read): eval, frozen, BN folded, channels_last.

    Args:
        net: the network.
        x: (B, C, H, W) an input the network takes: recorded where fx cannot trace the network,
            and run forward + backward once to check the fused activations (`_backward_fails`).
        keep: module names whose own output must stay as it is (a conv named here is not folded).
        channels_last: put 4-D weights in channels_last.
        activations: on the CPU in channels_last, let convs apply the ReLU / ReLU6 after them
            (`_fuse_activations`). Off for backward rules that replace the activation's own
            backward (deconvnet).

    Returns:
        (the copy, LowerReport).
    """
    new = copy.deepcopy(net)
    new.eval()
    for p in new.parameters():
        p.requires_grad_(False)
        p.grad = None
    report = LowerReport()
    try:
        cands = _pairs_fx(new)
        report.method = "fx"
    except Exception as e:  # fx cannot trace it (data-dependent control flow, ...): record a forward
        why = str(e).splitlines()[0][:120] if str(e) else ""
        report.method = f"recorded forward (fx: {type(e).__name__}: {why})"
        cands = _pairs_recorded(new, x)
    modules = dict(new.named_modules())
    keep = set(keep)
    for c in cands:
        reason = c.reason
        if not reason and c.conv in keep:
            reason = f"the conv {c.conv!r} is a layer the objective reads"
        if not reason:
            reason = _unfoldable(modules[c.conv], modules[c.bn])
        if reason:
            report.skipped.append((c.bn, reason))
            continue
        _fold(modules[c.conv], modules[c.bn])
        _replace(new, modules[c.bn], nn.Identity())
        report.folded.append((c.conv, c.bn))
    cpu_nhwc = channels_last and x.device.type == "cpu"
    _rewrite_convs(new, report, matmul=cpu_nhwc)
    if cpu_nhwc and activations:
        _fuse_activations(new, report, keep)
        why = _backward_fails(new, x) if report.activation_fused else ""
        if why:  # e.g. an in-place change of a fused output that fx did not see: none fused
            new, report = lower_module(net, x, keep=keep, channels_last=channels_last, activations=False)
            report.skipped.append(("activations", f"not fused: with them the backward failed ({why})"))
            return new, report
    if channels_last:
        new.to(memory_format=torch.channels_last)
        report.channels_last = True
    report.copy_bytes = sum(t.numel() * t.element_size()
                            for t in [*new.parameters(), *new.buffers()])
    return new, report


# -- the cache on the Model --------------------------------------------------------------------
def fingerprint(net: nn.Module) -> tuple:
    """Identity, shape, dtype, version and sum of every parameter and buffer (one pass, one sync)."""
    tensors = [*net.parameters(), *net.buffers()]
    meta = tuple((id(t), tuple(t.shape), t.dtype, t.device, t._version) for t in tensors)
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float64) for t in floats]).cpu() if floats else None
    return meta, sums


def _same(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    return (a[1] is None and b[1] is None) or (a[1] is not None and b[1] is not None
                                                and torch.equal(a[1], b[1]))


def lowered(model: Model, x: torch.Tensor, *, keep=(), channels_last: bool = True,
            activations: bool = True) -> LoweredModel:
    """The lowered copy of `model` for inputs like `x`, from the cache when the weights are unchanged.

    Args:
        model: the user's `Model` (read only; the cache lives in `model._lowered`).
        x: (B, C, H, W) an input in [0, 1] on the device the copy is for.
        keep: layer names the caller reads whose own output must not change (see module doc).
        channels_last: put weights and input in channels_last (4-D inputs).
        activations: let convs apply the activation after them (see `lower_module`).

    Returns:
        LoweredModel on x's device. If the copy cannot be made (a module that cannot be deep-copied),
        a RuntimeWarning says why and the LoweredModel wraps the user's own network unchanged
        (`report.method` starts with "not lowered"; the caller's session restores it as usual).
    """
    if isinstance(model, LoweredModel):
        return model
    cache = model.__dict__.setdefault("_lowered", {})
    key = (x.device, x.dtype, channels_last, activations)
    fp = fingerprint(model.module)
    hit = cache.get(key)
    convs = frozenset(keep)
    if hit is not None and _same(hit[0], fp):
        lm = hit[1]
        if not lm.report.shows_other_values(convs):
            return lm
    try:
        new, report = lower_module(model.module, model.normalize(x[:1]), keep=convs,
                                   channels_last=channels_last, activations=activations)
    except Exception as e:  # e.g. a module that cannot be deep-copied: run the network as it is, and say so
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        warnings.warn(f"fastviz: could not lower {model.name} ({why}); running it as it is",
                      RuntimeWarning, stacklevel=3)
        report = LowerReport(method=f"not lowered ({why})")
        return LoweredModel(model, model.module, report)  # not cached: tried again next call
    new.to(x.device)
    lm = LoweredModel(model, new, report)
    cache[key] = (fp, lm)
    return lm


def release(model: Model) -> None:
    """Drop the lowered copies cached on `model` (their memory goes back)."""
    model.__dict__.pop("_lowered", None)
