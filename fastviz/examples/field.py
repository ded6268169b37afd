"""The receptive field of each position of a layer's map, measured on the network by a gradient probe.

For position (y, x) of the layer's output, the input pixels that can change it are those where
d(sum over channels of a[:, y, x]) / d(input) is non-zero. Convolutional networks are separable
in this respect (rows depend on y, columns on x), so one probe per diagonal position (i, i)
gives the row span of map row i and the column span of map column i: max(h, w) probes, batched.
Each probe is taken on two random images and the supports are joined, so that a unit dead at
one point (a ReLU at zero, a max-pool's losing input) does not shrink the field.
"""

from __future__ import annotations

import torch

from ..hooks import session
from ..models import Model

PROBE_IMAGES = 2
CHUNK = 8


def _span(support: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1-D mask; the whole length when there are none."""
    idx = support.nonzero().flatten()
    if idx.numel() == 0:
        return 0, support.numel()
    return int(idx[0]), int(idx[-1]) + 1


def receptive_field(m: Model, layer: str, image_hw: tuple[int, int], map_hw: tuple[int, int],
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row spans (h, 2) and column spans (w, 2), [start, stop) in input pixels, of `layer`'s map.

    Args:
        m: the model; its network is borrowed in a restoring session (rule 1).
        layer: the layer's dotted name.
        image_hw: (H, W) of the scanned images.
        map_hw: (h, w) of the layer's output at that size.
        device: where to run the probe.
    """
    (H, W), (h, w) = image_hw, map_hw
    n = max(h, w)
    ys, xs = [min(i, h - 1) for i in range(n)], [min(i, w - 1) for i in range(n)]
    rows, cols = torch.zeros(h, 2, dtype=torch.long), torch.zeros(w, 2, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    with session(m, no_inplace=True) as s, torch.enable_grad():
        for a in range(0, n, CHUNK):
            pos = list(range(a, min(a + CHUNK, n)))
            x = torch.rand(len(pos) * PROBE_IMAGES, m.channels or 3, H, W, generator=gen).to(device)
            x.requires_grad_(True)
            acts, _ = s.forward(x, [layer], stop=True)
            act = acts[layer]
            py = torch.tensor([ys[p] for p in pos for _ in range(PROBE_IMAGES)], device=act.device)
            px = torch.tensor([xs[p] for p in pos for _ in range(PROBE_IMAGES)], device=act.device)
            picked = act[torch.arange(act.shape[0], device=act.device), :, py, px]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            support = (grad.abs().sum(1) > 0).view(len(pos), PROBE_IMAGES, H, W).any(1).cpu()
            for j, p in enumerate(pos):
                rows[ys[p]] = torch.tensor(_span(support[j].any(1)))
                cols[xs[p]] = torch.tensor(_span(support[j].any(0)))
    return rows, cols


def boxes(rows: torch.Tensor, cols: torch.Tensor, positions: torch.Tensor, map_w: int) -> torch.Tensor:
    """(..., 4) boxes (top, left, bottom, right) in input pixels for flat positions y * w + x."""
    y, x = positions // map_w, positions % map_w
    return torch.stack([rows[y, 0], cols[x, 0], rows[y, 1], cols[x, 1]], -1)
