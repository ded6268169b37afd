"""The synthesis loop's optimisers: a direction from the gradient, state in preallocated buffers.

Each takes the leaf at construction, keeps its state in tensors of the leaf's shape (so a CUDA
graph can capture the step), and has `direction(g)` and `reset()`. `OPTIMIZERS` maps the names
`fastviz.settings` accepts to the classes.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SGD:
    """Momentum SGD: v = momentum * v + g; direction v."""

    def __init__(self, x: Tensor, momentum: float = 0.9):
        self.momentum = momentum
        self.v = torch.zeros_like(x)

    def reset(self) -> None:
        self.v.zero_()

    def direction(self, g: Tensor) -> Tensor:
        if self.momentum == 0:
            return g
        return self.v.mul_(self.momentum).add_(g)


class Adam:
    """Adam (Kingma & Ba) with the step count on the device, so a CUDA graph can replay it."""

    def __init__(self, x: Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.d = torch.zeros_like(x)
        self.t = torch.zeros((), device=x.device)

    def reset(self) -> None:
        for t in (self.m, self.v, self.d, self.t):
            t.zero_()

    def direction(self, g: Tensor) -> Tensor:
        self.t.add_(1)
        self.m.lerp_(g, 1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        bc1 = 1 - torch.pow(self.b1, self.t)
        bc2 = 1 - torch.pow(self.b2, self.t)
        # d = m_hat / (sqrt(v_hat) + eps), built in the preallocated buffer.
        torch.div(self.v, bc2, out=self.d)
        self.d.sqrt_().add_(self.eps).mul_(bc1)
        return torch.div(self.m, self.d, out=self.d)


class Normalized:
    """The DeepDream step: the gradient divided by its mean magnitude, per image (no state).

    Unlike Adam, pixels with a small gradient move little, so the image changes where the
    objective responds.
    """

    def __init__(self, x: Tensor, eps: float = 1e-8):
        self.eps = eps
        self.d = torch.zeros_like(x)

    def reset(self) -> None:
        self.d.zero_()

    def direction(self, g: Tensor) -> Tensor:
        scale = g.abs().mean((1, 2, 3), keepdim=True).add_(self.eps)
        return torch.div(g, scale, out=self.d)


OPTIMIZERS = {"adam": Adam, "sgd": SGD, "normalized": Normalized}
