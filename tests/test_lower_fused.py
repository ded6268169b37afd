"""The fused modules' marks (fastviz/lower/fused.py)."""

from __future__ import annotations

import torch

from fastviz.lower.fused import _activated, _tag


def test_the_mark_is_void_after_an_in_place_change():
    y = _tag(torch.rand(4), ("hardtanh", (0.0, 6.0)))
    assert _activated(y, ("hardtanh", (0.0, 6.0))) and not _activated(y, ("relu", ()))
    y.add_(10.0)
    assert not _activated(y, ("hardtanh", (0.0, 6.0)))
    assert not _activated(torch.rand(4), ("relu", ()))
