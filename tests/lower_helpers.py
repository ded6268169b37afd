"""What the lowering tests share: tolerances, randomised BatchNorms, float64 references."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import fastviz as fv
from fastviz.hooks import session

LOGIT_TOL = 1e-5
GRAD_TOL = 2e-2


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return net


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def logits_and_grad(model, x: torch.Tensor):
    with session(model):
        xi = x.detach().clone().requires_grad_(True)
        out = model(xi)
        # A fixed random weighting of the outputs (a plain sum is constant through a BN that uses
        # batch statistics, so its gradient would be rounding noise).
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        (g,) = torch.autograd.grad((out * w.to(out.dtype)).sum(), xi)
    return out.detach(), g


def float64(model: fv.Model) -> fv.Model:
    return fv.Model(copy.deepcopy(model.module).double(), model.mean, model.std)


def torchvision_model(name: str) -> fv.Model:
    torch.manual_seed(0)
    m = fv.load_model(name, weights=None)
    randomise_bn(m.module)
    return m


