"""The modules the lowered copy (`fastviz.lower`) is rewritten into, and their CPU kernels.

- `Pointwise`: a 1x1 conv as one matmul over the channels_last (NHWC) view;
- `PadConv2d`: a conv after an explicit one-sided zero pad;
- `ConvAct` and `Pointwise.act`: a conv that applies the ReLU / ReLU6 after it in oneDNN's
  epilogue (`torch.ops.mkldnn._convolution_pointwise` / `_linear_pointwise`, the CPU kernels
  inductor's freezing path uses), with a backward to the input only (weights are frozen) that
  applies the activation's mask in place where the incoming gradient is its own (`grad_owned`);
- the mark on such an output (`_tag`, `_activated`) and the pass-through the activation module
  becomes (`pass_through`).

Which convs get rewritten, and the checks that make it safe, are `fastviz.lower`'s.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _nn_module

# (attr, scalars) in oneDNN's post-op terms: "none", "relu" or "hardtanh" [lo, hi] (ReLU6).
Act = tuple[str, tuple[float, ...]]
NO_ACT: Act = ("none", ())


def activation_of(m: nn.Module) -> Act | None:
    """The fusable activation a module computes (exact types only: a subclass may do more)."""
    if type(m) is nn.ReLU:
        return ("relu", ())
    if type(m) in (nn.ReLU6, nn.Hardtanh) and float(m.min_val) < float(m.max_val):
        return ("hardtanh", (float(m.min_val), float(m.max_val)))
    return None


def activate_(y: torch.Tensor, act: Act) -> torch.Tensor:
    """The activation in place on a fresh op output (autograd saves the result, not the input)."""
    if act[0] == "relu":
        return torch.relu_(y)
    if act[0] == "hardtanh":
        return nn.functional.hardtanh(y, *act[1], inplace=True)
    return y


def _act_backward(g: torch.Tensor, y: torch.Tensor, act: Act, owned: bool = False) -> torch.Tensor:
    """The activation's backward from its output: y in (lo, hi) exactly where the input was.

    `owned`: `g` is this backward's alone (see `grad_owned`), so the mask is applied in place,
    which saves writing a fresh tensor of the activation's size (a quarter of the mask's time)."""
    if act[0] == "relu":
        op = torch.ops.aten.threshold_backward
        return op.grad_input(g, y, 0, grad_input=g) if owned else op(g, y, 0)
    if act[0] == "hardtanh":
        op = torch.ops.aten.hardtanh_backward
        return op.grad_input(g, y, *act[1], grad_input=g) if owned else op(g, y, *act[1])
    return g


def _no_global_backward_hooks() -> bool:
    """No module backward hook registered for every module (it could keep a gradient)."""
    return not (getattr(_nn_module, "_global_backward_hooks", None)
                or getattr(_nn_module, "_global_backward_pre_hooks", None))


def _onednn() -> bool:
    """oneDNN's fused conv / linear + post-op kernels (the CPU ops inductor's freezing uses)."""
    mk = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and hasattr(mk, "_linear_pointwise")
                    and hasattr(mk, "_convolution_pointwise"))
    except Exception:  # an op namespace that raises on lookup: no oneDNN here
        return False


def _autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class _LinearAct(torch.autograd.Function):
    """act(conv1x1(x)) on a channels_last (N, C, H, W) x as one oneDNN matmul over its NHWC view;
    backward to x only (weights are frozen).

    The output is a tensor of its own (channels_last strides over the matmul's storage), not a
    view: a view would make a later in-place op on it (`y += shortcut` in a ResNet block) cost
    autograd's view machinery, a clone of the whole output and a strided backward (measured on
    resnet50 at batch 8: the lowered network 1.10x the eager one instead of 0.86x)."""

    @staticmethod
    def forward(ctx, x, weight, weight_t, bias, act: Act, owned: bool):
        n, c, h, w = x.shape
        x2 = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
        y2 = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, act[0], list(act[1]), "")
        cout = y2.shape[1]
        y = y2.new_empty(0).set_(y2.untyped_storage(), y2.storage_offset(), (n, cout, h, w),
                                 (h * w * cout, 1, w * cout, cout))
        ctx.act, ctx.owned = act, owned
        ctx.save_for_backward(weight_t, None if act == NO_ACT else y)
        return y

    @staticmethod
    @once_differentiable  # the loop needs no second derivative; asking for one is an error
    def backward(ctx, g):
        weight_t, y = ctx.saved_tensors
        n, cout, h, w = g.shape
        g = g.contiguous(memory_format=torch.channels_last)  # one layout for the mask and the matmul
        if y is not None:
            g = _act_backward(g, y, ctx.act, ctx.owned)
        g2 = g.permute(0, 2, 3, 1).reshape(n * h * w, cout)
        gx = torch.ops.mkldnn._linear_pointwise(g2, weight_t, None, "none", [], "")
        return gx.view(n, h, w, -1).permute(0, 3, 1, 2), None, None, None, None, None


class _ConvAct(torch.autograd.Function):
    """act(conv2d(x)) in one oneDNN kernel; backward to x only (weights are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, act: Act, owned: bool):
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), list(stride),
                                                    list(dilation), groups, act[0], list(act[1]), "")
        ctx.conv, ctx.act, ctx.owned = (stride, padding, dilation, groups), act, owned
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        if y.is_contiguous(memory_format=torch.channels_last):
            g = g.contiguous(memory_format=torch.channels_last)  # one layout for the mask's pass
        g = _act_backward(g, y, ctx.act, ctx.owned)
        (gx, _, _) = torch.ops.aten.convolution_backward(g, x, weight, None, list(stride), list(padding),
                                                         list(dilation), False, [0, 0], groups,
                                                         [True, False, False])
        return gx, None, None, None, None, None, None, None, None


def _tag(y: torch.Tensor, act: Act) -> torch.Tensor:
    """Mark an output as already activated: the activation module after it passes it through.

    The mark holds the tensor's version counter, so an in-place change after it (`y += skip`)
    voids it."""
    if act != NO_ACT:
        y._fastviz_act = (act, y._version)
    return y


def _activated(x: torch.Tensor, act: Act) -> bool:
    """Whether `x` is a conv's output with `act` applied and unchanged since (see `_tag`)."""
    return getattr(x, "_fastviz_act", None) == (act, x._version)


class Pointwise(nn.Module):
    """A 1x1, stride-1, ungrouped convolution as one matmul over the channels_last (NHWC) view.

    On a channels_last input the (N, H, W, C) permutation is contiguous, so the forward is one
    GEMM with no copy and the backward to the input another. PyTorch's own CPU convolution sends
    such a conv, at one thread and batches under 16, to its im2col path, which copies and
    zero-fills around the same GEMM (measured on Lite0, batch 8: 32 of its 49 convs).

    With oneDNN the GEMM is oneDNN's, with the bias and `act` (the ReLU / ReLU6 that follows,
    see `fastviz.lower.activations.fuse_activations`) applied in its epilogue instead of two more passes.
    """

    # Set by `fastviz.lower` where the activated output's only consumer is a conv: the gradient
    # reaching this backward is then that conv's fresh input gradient, which nothing else holds,
    # and the activation's mask is applied to it in place.
    grad_owned: bool = False

    def __init__(self, conv: nn.Conv2d, act: Act = NO_ACT):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.act, self.onednn = act, _onednn()
        # W.T for the oneDNN backward's GEMM (it takes its weight as (out, in)); moves with .to().
        self.register_buffer("weight_t", self.weight.detach().t().contiguous() if self.onednn else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.dtype == self.weight.dtype and not _autocast():
            y = _LinearAct.apply(x, self.weight, self.weight_t, self.bias, self.act,
                                 self.grad_owned and _no_global_backward_hooks())
        else:
            y = activate_(nn.functional.linear(x.permute(0, 2, 3, 1), self.weight, self.bias), self.act)
            y = y.permute(0, 3, 1, 2)
        return _tag(y, self.act)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}, act={self.act[0]}"


class ConvAct(nn.Conv2d):
    """A plain Conv2d (or `PadConv2d`) that applies the activation after it (`act`) itself, in
    oneDNN's epilogue."""

    act: Act = NO_ACT
    onednn: bool = False
    grad_owned: bool = False  # as `Pointwise.grad_owned`
    pre_pad: tuple | None = None  # from a PadConv2d

    @classmethod
    def of(cls, conv: nn.Conv2d, act: Act) -> "ConvAct":
        new = cls.__new__(cls)
        new.__dict__ = dict(conv.__dict__)  # the same parameters, hooks dicts and attributes
        new.act, new.onednn = act, _onednn()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = nn.functional.pad(x, self.pre_pad)
        if self.onednn and self.padding_mode == "zeros" and isinstance(self.padding, tuple) \
                and x.dtype == self.weight.dtype and not _autocast():
            y = _ConvAct.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                               self.groups, self.act, self.grad_owned and _no_global_backward_hooks())
        else:
            y = activate_(super().forward(x), self.act)
        return _tag(y, self.act)


class PadConv2d(nn.Conv2d):
    """A conv after an explicit zero pad `pre_pad` (left, right, top, bottom): the one-sided
    "SAME" pads that no conv padding expresses, as a plain module the rewrites can recognise."""

    pre_pad: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = nn.functional.pad(x, self.pre_pad)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pre_pad={self.pre_pad}"


class _PassThrough:
    """Mixin of an activation module: an input its conv already activated comes back as it is."""

    _fastviz_act: Act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if _activated(x, self._fastviz_act) else super().forward(x)


class PassThroughReLU(_PassThrough, nn.ReLU):
    pass


class PassThroughReLU6(_PassThrough, nn.ReLU6):
    pass


class PassThroughHardtanh(_PassThrough, nn.Hardtanh):
    pass


_PASS_THROUGH = {nn.ReLU: PassThroughReLU, nn.ReLU6: PassThroughReLU6, nn.Hardtanh: PassThroughHardtanh}


def pass_through(m: nn.Module) -> None:
    """Make activation module `m` (one `activation_of` knows) pass through an input that its conv
    already activated.

    Its class becomes a subclass of its own, so it still counts as a ReLU / ReLU6 (guided
    backprop's hooks) and keeps its name and attributes; an input that is not marked gets the
    activation as before (a module called twice, once after a fused conv and once after
    something else, stays right for both). Activations are idempotent, so a marked tensor that
    meets a second module of the same kind is right to pass through it too.
    """
    m._fastviz_act = activation_of(m)
    m.__class__ = _PASS_THROUGH[type(m)]
