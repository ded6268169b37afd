"""What lowering did (`LowerReport`) and the `Model` over the lowered copy (`LoweredModel`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import Model


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
            reads(names, [c, *path], act) for c, path, act in self.activation_fused)

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
                         name=source.name, output=source.output, fixed_size=source.fixed_size)
        self.source, self.report = source, report

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fit(self.normalize(x))
        if self.report.channels_last and x.dim() == 4:
            x = _ChannelsLast.apply(x)
        return self.select(self.module(x))

    def __repr__(self) -> str:
        return f"LoweredModel({self.name}, folded {len(self.report.folded)} BN, {self.report.method})"


def reads(keep: set, changed: list, act: str) -> bool:
    """Whether a name the caller reads shows one of `changed`'s outputs: the name itself, or a
    parent module holding it but not the activation (a Sequential(conv, bn) whose output is
    the BN's)."""
    return any(n == k or (n.startswith(k + ".") and not act.startswith(k + "."))
               for k in keep for n in changed)
