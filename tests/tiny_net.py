"""The tiny classifier several tests share: 10 classes, 8 channels, BatchNorm, inplace ReLU and ReLU6.

Small enough that a render takes milliseconds, and with every part that rule 1 and the lowered
network care about (a BatchNorm to fold, inplace activations, two activation types).
"""

import torch
from torch import nn

import fastviz as fv


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny(seed: int = 0, labels: str = "class {}") -> fv.Model:
    """The seeded tiny network in eval mode, behind a (0.5, 0.25) normalisation, 32 x 32 input."""
    torch.manual_seed(seed)
    return fv.Model(Net().eval(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32,
                    labels=[labels.format(i) for i in range(10)])


# A linear classifier on 8 x 8 images, for closed forms (metrics, the randomisation check).
H = W = 8


def linear_model(seed=0, classes=3, size=H):
    """logit_c(x) = sum_{k, y, x} w[c, k, y, x] x[k, y, x] + b_c, on [0, 1] images as they are."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))
    return fv.Model(net, input_size=size)


def contributions(model, x, c):
    """(B, H, W) per-pixel contribution to logit c: sum over channels of w * x."""
    w = model.module[1].weight[c].view(3, x.shape[2], x.shape[3])
    return (w * x).sum(1).detach()


# A classifier without BatchNorm, 5 classes on 32 x 32 images (inspection and embedding tests).
def tiny_net(in_channels: int = 3) -> fv.Model:
    """conv (3 -> 4, 3x3) -> ReLU -> conv -> pool -> Linear(6 -> 5): a classifier small enough to run often."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 5))
    return fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32,
                    labels=[f"class{i}" for i in range(5)], name="tiny")


def tiny_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
