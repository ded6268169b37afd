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
  class, returns a marked input as it is (see `activations.fuse_activations`). A name the caller reads
  (`keep`) is never on such a path. The backward takes the activation's mask from the output,
  so that output must not change in place afterwards: a conv whose activated output fx sees
  changed in place is left alone, and one forward + backward of the copy at lowering catches
  what fx does not see (`y += 1`); if it fails, nothing is fused and the report says why.
  Where the activated output's only consumer is a conv, the gradient reaching the fused conv's
  backward is that conv's fresh input gradient, so the mask is applied to it in place
  (`grad_owned`, `report.mask_in_place`); a residual add, which hands one tensor to two
  branches, never qualifies.

Rooms: `pairs` (conv -> BN pairs), `fold` (the exact BN fold), `rewrites` (pads, pointwise),
`activations` (fused activations), `build` (`lower_module`: the rewrites in order), `cache`
(`lowered`, `release`), `report` (`LowerReport`, `LoweredModel`), `trace` (fx helpers), and
`fused`: the modules and CPU kernels the copy is rewritten into (`Pointwise`, `PadConv2d`,
`ConvAct`, the pass-through activations).

A folded BN is replaced by `nn.Identity`, or, for timm's norm + activation modules
(`BatchNormAct2d`: normalise, then its own `drop` and `act`), by a `NormTail` that still runs those
two under the same names; any other BatchNorm subclass with a forward of its own is not folded.
Last, the finished copy's output on the example input is compared with the network's own (a
frozen eval copy): more than `build.OUTPUT_TOL` (1e-3 relative L2; fp32 rounding gives below
1e-6) and the copy is refused (`LoweringMismatch`): the call runs the user's network and the
report's `method` says "not lowered (...)" with the error.

A copy where nothing was folded or rewritten (LayerNorm families: ConvNeXt, ViT, Swin) keeps
the network's own layout: channels_last alone cost convnext_tiny 3-5% on the CPU.

The copy is cached on the `Model` per (device, dtype) and made again when the weights change:
the fingerprint is each parameter and buffer's identity, shape, dtype, autograd version counter
(bumped by every in-place change, `load_state_dict` included) and its sum (which also catches
changes through `.data`, which bypass the version counter). Checking it costs one pass over the
weights per call, never per step. Memory: one copy of the weights and buffers per (device, dtype),
plus, on the CPU, each matmul's weight transposed for its backward (EfficientNet-Lite0: 4.7 M
parameters, 29.7 MB in fp32, 12 MB of it the transposes); `release(model)` drops it.
"""

from .build import lower_module
from .cache import fingerprint, lowered, release
from .fold import fold_batchnorm, unfoldable
from .report import LowerReport, LoweredModel

__all__ = ["fingerprint", "fold_batchnorm", "lower_module", "lowered", "LoweredModel", "LowerReport",
           "release", "unfoldable"]
