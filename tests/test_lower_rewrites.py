"""Conv rewrites (fastviz/lower/rewrites.py): pads folded into the conv, 1x1 convs as matmuls."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.lower import lowered
from lower_helpers import LOGIT_TOL, rel


def test_lite0_padding_folded_and_pointwise_convs_run_as_matmuls(lite0):
    x = torch.rand(1, 3, 224, 224)
    r = lowered(lite0, x).report
    # The stem and 16 depthwise convs pad with a ZeroPad2d: 12 symmetric (stride 1), 5 one-sided
    # "SAME" pads at stride 2, 4 of them depthwise (kernel grown by a zero row and column).
    # 31 expand / project 1x1 convs + the head run as matmuls.
    assert len(r.padding_folded) == 16 and "_blocks.1._depthwise_conv" in r.padding_folded
    assert tuple(lowered(lite0, x).module._blocks[1]._depthwise_conv.kernel_size) == (4, 4)
    # The stem (3 -> 32, dense) keeps its one-sided pad, explicit: a grown kernel costs it more.
    assert lowered(lite0, x).module._conv_stem.pre_pad == (0, 1, 0, 1)
    assert len(r.matmul) == 32 and "_conv_head" in r.matmul
    no_nhwc = lowered(lite0, x, channels_last=False).report  # the matmul needs the NHWC view
    assert not no_nhwc.matmul and len(no_nhwc.padding_folded) == 16


class _PadsThenConv(nn.Conv2d):
    """A conv padding first with a module, as EfficientNet ports do; `twist` breaks the pattern."""

    def __init__(self, pad, twist: bool = False, kernel_size: int = 3, stride: int = 1):
        super().__init__(3, 4, kernel_size, stride)
        self.static_padding, self.twist = nn.ZeroPad2d(pad), twist

    def forward(self, x):
        y = super().forward(self.static_padding(x))
        return y * 2 if self.twist else y


@pytest.mark.parametrize("pad,kernel,stride,twist,becomes", [
    ((1, 1, 1, 1), 3, 1, False, "folded"),
    ((0, 1, 0, 1), 3, 2, False, "pad"),   # one-sided on a dense conv: an explicit pad (PadConv2d)
    ((1, 2, 1, 2), 5, 2, False, "pad"),
    ((0, 2, 0, 2), 3, 2, False, "pad"),   # no conv padding expresses it
    ((1, 1, 1, 1), 3, 1, True, "kept"),   # the forward is not pad + conv
])
def test_padding_is_folded_only_where_it_is_the_same_function(pad, kernel, stride, twist, becomes):
    torch.manual_seed(0)
    net = nn.Sequential(_PadsThenConv(pad, twist, kernel, stride), nn.ReLU(), nn.Conv2d(4, 3, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    m = fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=16)
    x = torch.rand(2, 3, 16, 16)
    lm = lowered(m, x)
    assert (lm.report.padding_folded == ["0"]) is (becomes == "folded")
    assert (getattr(lm.module[0], "pre_pad", None) == pad) is (becomes == "pad")
    assert isinstance(lm.module[0], _PadsThenConv) is (becomes == "kept")
    assert [c for c, *_ in lm.report.activation_fused] == ([] if becomes == "kept" else ["0"])
    assert lm.report.matmul == ["2"]
    assert rel(lm(x), m(x)) <= LOGIT_TOL
