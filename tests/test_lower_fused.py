"""The fused modules' marks (fastviz/lower/fused.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastviz.lower.fused import Pointwise, _activated, _onednn, _tag


def test_the_mark_is_void_after_an_in_place_change():
    y = _tag(torch.rand(4), ("hardtanh", (0.0, 6.0)))
    assert _activated(y, ("hardtanh", (0.0, 6.0))) and not _activated(y, ("relu", ()))
    y.add_(10.0)
    assert not _activated(y, ("hardtanh", (0.0, 6.0)))
    assert not _activated(torch.rand(4), ("relu", ()))


def test_a_pointwise_output_is_its_own_tensor_and_takes_an_in_place_add():
    """`y += skip` after a 1x1 conv (a ResNet block's conv3): the output must not be a view, which
    would make autograd clone it and run a strided backward; the gradient stays the conv's. (With
    an activation fused the output is saved for the backward: the lowering never fuses one whose
    output is changed in place, tests/test_lower_activations.py.)"""
    if not _onednn():
        pytest.skip("needs oneDNN's fused linear")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 1).requires_grad_(False)
    pw = Pointwise(conv)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    skip = torch.randn(2, 16, 5, 7)
    y = pw(x)
    assert y._base is None and y.is_contiguous(memory_format=torch.channels_last)
    y += skip
    (g,) = torch.autograd.grad((y * skip).sum(), x)
    xr = x.detach().clone().requires_grad_(True)
    yr = conv(xr) + skip
    (gr,) = torch.autograd.grad((yr * skip).sum(), xr)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)  # fp32 rounding of one GEMM
    torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-5)
