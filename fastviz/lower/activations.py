"""ReLU / ReLU6 fused into the conv before them on the CPU (oneDNN epilogues): where the fx graph
says a conv's output feeds only the activation, the conv applies it and the activation module
passes the marked output through; the backward masks in place where the gradient is provably
its own. Checked per conv on a random input and end to end by one forward + backward."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .fused import Act, ConvAct, PadConv2d, Pointwise, activate_, activation_of, pass_through
from .report import LowerReport, reads
from .rewrites import replace_module
from .trace import LeafTracer, call_counts, tensors


# The conv kinds that can take an activation, and whose backward returns a fresh input gradient.
_FUSABLE_CONVS = (nn.Conv2d, PadConv2d, Pointwise)

def fuse_activations(net: nn.Module, report: LowerReport, keep: set) -> None:
    """Each ReLU / ReLU6 module call whose input is a conv's output (through folded BNs, now
    Identity) and nothing else's: the conv applies it (`ConvAct`, `Pointwise.act`) and the
    activation module passes that output through. Skipped when the network does not trace,
    when a name on the way is one the caller reads (`keep`), or when the fused conv does not
    compute what conv + activation did on a random input.
    """
    try:
        graph = LeafTracer().trace(net)
    except Exception as e:
        if any(activation_of(m) is not None for m in net.modules()):
            report.skipped.append(("activations", f"not fused: fx cannot trace the network ({type(e).__name__})"))
        return
    modules = dict(net.named_modules())
    calls = call_counts(graph)
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
                or reads(keep, changed, node.target) \
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
        replace_module(net, conv, new)
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
    `y += 1` as an ordinary add; `backward_fails` catches that one."""
    if user.op == "call_function":
        return getattr(user.target, "__name__", "").endswith("_")
    if user.op == "call_method":
        return str(user.target).endswith("_")
    if user.op == "call_module":
        m = modules[user.target]
        return bool(getattr(m, "inplace", False)) and activation_of(m) != act
    return False


def backward_fails(net: nn.Module, x: torch.Tensor) -> str:
    """Why one forward + backward to `x` of `net` raises, or "" (the end-to-end check of the fusion)."""
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            out = net(xi.contiguous(memory_format=torch.channels_last) if xi.dim() == 4 else xi)
            outs = [t for t in tensors(out) if t.requires_grad]
            if outs:
                torch.autograd.grad(sum(t.float().sum() for t in outs), xi, allow_unused=True)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return ""


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
