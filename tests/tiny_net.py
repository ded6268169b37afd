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
