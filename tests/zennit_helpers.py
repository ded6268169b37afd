"""zennit as the reference for `fv.lrp`: its attribution with a composite and canonizers, and
the two canonizers a fair comparison needs.

- `ExactNamedMerge`: zennit's `NamedMergeBatchNorm`, except that the merged BatchNorm becomes an
  exact identity. zennit's merge sets the BN's statistics to mean 0, var 1, weight 1, bias 0,
  which still computes x / sqrt(1 + eps): a scale of 0.999995 per BN at eps = 1e-5 (torchvision)
  and 0.9995 at eps = 1e-3 (EfficientNet-Lite0), applied to the forward but not to the folded
  weights. fastviz folds exactly; zeroing the merged BN's eps makes zennit fold exactly too.
- `Lite0Skip`: EfficientNet-Lite0's MBConv skip connection through zennit's `Sum` module (as
  zennit's `ResNetCanonizer` does for torchvision's blocks), so the sum gets zennit's Norm rule.
"""

from __future__ import annotations

import torch

zennit = __import__("pytest").importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat  # noqa: E402
from zennit.layer import Sum  # noqa: E402


class ExactNamedMerge(NamedMergeBatchNorm):
    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.eps

    def copy(self):
        return ExactNamedMerge(self.name_map)


def _block_forward(self, inputs, drop_connect_rate=None):
    x = inputs
    if self._block_args.expand_ratio != 1:
        x = self._swish(self._bn0(self._expand_conv(inputs)))
    x = self._swish(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    a = self._block_args
    if self.id_skip and a.stride == 1 and a.input_filters == a.output_filters:
        x = self.canonizer_sum(torch.stack([x, inputs], dim=-1))
    return x


class Lite0Skip(AttributeCanonizer):
    def __init__(self):
        from efficientnet_lite_pytorch.model import MBConvBlock

        def attributes(name, module):
            if isinstance(module, MBConvBlock):
                return {"forward": _block_forward.__get__(module), "canonizer_sum": Sum()}
            return None
        super().__init__(attributes)


def conv_bn_pairs(net: torch.nn.Module) -> list[tuple[tuple[str], str]]:
    """(conv,), bn name pairs where a BN directly follows a conv in registration order, the conv
    counted as a leaf even when it holds a padding module (zennit's own sequential merge skips
    those convs: a conv with a child is not a leaf)."""
    names = [(n, m) for n, m in net.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.ReLU,
                               torch.nn.ReLU6, torch.nn.MaxPool2d))]
    return [((a,), b) for (a, ma), (b, mb) in zip(names, names[1:])
            if isinstance(ma, torch.nn.Conv2d) and isinstance(mb, torch.nn.BatchNorm2d)]


def composite(name: str, canonizers, low=None, high=None):
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return EpsilonAlpha2Beta1Flat(canonizers=canonizers)
    return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)


def zennit_lrp(model, x: torch.Tensor, target: torch.Tensor, name: str, canonizers) -> torch.Tensor:
    """zennit's relevance of the normalised input, starting from the target logit."""
    xn = model.normalize(x)
    low = model.normalize(torch.zeros_like(x))
    high = model.normalize(torch.ones_like(x))
    with Gradient(model=model.module, composite=composite(name, canonizers, low, high)) as attributor:
        _, rel = attributor(xn.clone(), lambda o: torch.nn.functional.one_hot(target, o.shape[1]) * o)
    return rel


__all__ = ["ExactNamedMerge", "Lite0Skip", "SequentialMergeBatchNorm", "conv_bn_pairs", "zennit_lrp"]
