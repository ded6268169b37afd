"""The receptive field of each position of a layer's map, measured on the network by a gradient probe.

For position (y, x) of the layer's output, the input pixels that can change it are those where
g = d(sum over channels of a[:, y, x]) / d(input) is non-zero: the theoretical field (`mass`
1.0). Deep layers' theoretical fields cover the whole image while most of the gradient sits in
a much smaller middle part (the effective receptive field, Luo et al. 2016), so by default the
span keeps the middle `mass` = 0.9 of |g| along rows and along columns (5% cut from each side).
Convolutional networks are separable in this respect (rows depend on y, columns on x), so one
probe per diagonal position (i, i) gives the row span of map row i and the column span of map
column i: max(h, w) probes, batched. Each probe is taken on two random images (supports
joined, masses averaged), so that a unit dead at one point (a ReLU at zero, a max-pool's losing
input) does not shrink the field.
"""

from __future__ import annotations

import torch

from .. import budget
from ..hooks import session
from ..models import Model

PROBE_IMAGES = 2
CHUNK = 8


def _span(weights: torch.Tensor, mass: float) -> tuple[int, int]:
    """[start, stop) of a 1-D profile of |gradient|: the non-zero support (mass >= 1) or the
    middle `mass` of it; the whole length when it is all zero."""
    if mass >= 1:
        idx = (weights > 0).nonzero().flatten()
        if idx.numel() == 0:
            return 0, weights.numel()
        return int(idx[0]), int(idx[-1]) + 1
    total = float(weights.sum())
    if total <= 0:
        return 0, weights.numel()
    c = weights.double().cumsum(0) / total
    cut = (1 - mass) / 2
    start = int((c <= cut).sum())
    stop = int((c < 1 - cut).sum()) + 1
    return start, max(stop, start + 1)


def receptive_field(m: Model, layer: str, image_hw: tuple[int, int], map_hw: tuple[int, int],
                    device, mass: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Row spans (h, 2) and column spans (w, 2), [start, stop) in input pixels, of `layer`'s map.

    Args:
        m: the model; its network is borrowed in a restoring session (rule 1).
        layer: the layer's dotted name.
        image_hw: (H, W) of the scanned images.
        map_hw: (h, w) of the layer's output at that size.
        device: where to run the probe.
        mass: the share of |gradient| the span keeps (1.0: every pixel that can change the unit).
    """
    (H, W), (h, w) = image_hw, map_hw
    n = max(h, w)
    ys, xs = [min(i, h - 1) for i in range(n)], [min(i, w - 1) for i in range(n)]
    rows, cols = torch.zeros(h, 2, dtype=torch.long), torch.zeros(w, 2, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    # positions per probe batch within the memory budget (the random images are one stream, so
    # the chunking does not change them)
    one = torch.zeros(1, m.channels or 3, H, W, device=device)
    chunk = max(1, budget.rows(m, one, grad=True, total=CHUNK * PROBE_IMAGES, name="data",
                               what="one image") // PROBE_IMAGES)
    with session(m, no_inplace=True) as s, torch.enable_grad():
        for a in range(0, n, chunk):
            pos = list(range(a, min(a + chunk, n)))
            x = torch.rand(len(pos) * PROBE_IMAGES, m.channels or 3, H, W, generator=gen).to(device)
            x.requires_grad_(True)
            acts, _ = s.forward(x, [layer], stop=True)
            act = acts[layer]
            py = torch.tensor([ys[p] for p in pos for _ in range(PROBE_IMAGES)], device=act.device)
            px = torch.tensor([xs[p] for p in pos for _ in range(PROBE_IMAGES)], device=act.device)
            picked = act[torch.arange(act.shape[0], device=act.device), :, py, px]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            g = grad.abs().sum(1).double()
            g = g / g.flatten(1).sum(1).clamp_min(1e-300)[:, None, None]  # each probe image weighs the same
            g = g.view(len(pos), PROBE_IMAGES, H, W).sum(1).cpu()
            for j, p in enumerate(pos):
                rows[ys[p]] = torch.tensor(_span(g[j].sum(1), mass))
                cols[xs[p]] = torch.tensor(_span(g[j].sum(0), mass))
    return rows, cols


def boxes(rows: torch.Tensor, cols: torch.Tensor, positions: torch.Tensor, map_w: int) -> torch.Tensor:
    """(..., 4) boxes (top, left, bottom, right) in input pixels for flat positions y * w + x."""
    y, x = positions // map_w, positions % map_w
    return torch.stack([rows[y, 0], cols[x, 0], rows[y, 1], cols[x, 1]], -1)
