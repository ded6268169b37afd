"""The running top-k of every channel of a layer, kept on the device, and its exact merge.

Order: score descending, then image index ascending (ties go to the lower index, so a scan, a
resumed scan and a sharded scan all give the same lists). The state is three (C, k) tensors;
its size does not depend on how many images went through it. Padding rows (fewer than k
images seen) carry score -inf and index PAD_INDEX, which sorts after every real image.
"""

from __future__ import annotations

import torch

PAD_INDEX = 2 ** 62


def select(scores: torch.Tensor, indices: torch.Tensor, positions: torch.Tensor, k: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best k of each row of (C, M) candidates: score descending, index ascending on ties.

    Two stable sorts (by index, then by score) give the lexicographic order without a host sync.
    """
    order = torch.argsort(indices, dim=1, stable=True)
    scores, indices, positions = scores.gather(1, order), indices.gather(1, order), positions.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), indices.gather(1, order), positions.gather(1, order)


class TopK:
    """(C, k) best scores, their image indices and flat positions (y * w + x) in the layer's map.

    Args:
        channels: rows kept (the scanned channels of one layer).
        k: examples per channel.
        device: where the state lives (the model's device).
    """

    def __init__(self, channels: int, k: int, device):
        self.k = k
        self.scores = torch.full((channels, k), float("-inf"), device=device)
        self.indices = torch.full((channels, k), PAD_INDEX, dtype=torch.long, device=device)
        self.positions = torch.zeros((channels, k), dtype=torch.long, device=device)

    def update(self, scores: torch.Tensor, indices: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge a batch: scores (B, C) float, indices (B,) long, positions (B, C) long, on the device.

        NaN scores count as -inf (never a top example)."""
        scores = torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        c, b = self.scores.shape[0], scores.shape[0]
        self.scores, self.indices, self.positions = select(
            torch.cat([self.scores, scores.t()], 1),
            torch.cat([self.indices, indices.view(1, b).expand(c, b)], 1),
            torch.cat([self.positions, positions.t()], 1), self.k)

    def state(self) -> dict:
        """The state on the CPU (for a checkpoint or a gather between ranks)."""
        return {"scores": self.scores.cpu(), "indices": self.indices.cpu(), "positions": self.positions.cpu()}

    def load(self, state: dict) -> None:
        dev = self.scores.device
        self.scores, self.indices, self.positions = (state[n].to(dev) for n in ("scores", "indices", "positions"))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.scores, self.indices, self.positions))


def merge(states: list[dict], k: int) -> dict:
    """The exact top-k of several states (ranks' shards): the same as one scan over all images."""
    s, i, p = select(torch.cat([st["scores"] for st in states], 1), torch.cat([st["indices"] for st in states], 1),
                     torch.cat([st["positions"] for st in states], 1), k)
    return {"scores": s, "indices": i, "positions": p}
