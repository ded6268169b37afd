"""The BatchNorm fold (fastviz/lower/fold.py): the folded conv is conv -> BN in eval mode."""

import pytest
import torch
from torch import nn

from fastviz.lower import fold_batchnorm, unfoldable
from lower_helpers import randomise_bn


@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(3, 8, 3, padding=1),
    lambda: nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False),
    lambda: nn.Conv1d(4, 6, 5),
], ids=["dense", "depthwise-no-bias", "conv1d"])
def test_folded_conv_equals_conv_then_bn(conv):
    seed = int(torch.randint(0, 2 ** 31, ()))
    torch.manual_seed(seed)
    c = conv()
    bn = (nn.BatchNorm2d if isinstance(c, nn.Conv2d) else nn.BatchNorm1d)(c.out_channels)
    randomise_bn(nn.Sequential(c, bn), seed)
    bn.eval()
    x = torch.randn(2, c.in_channels, *([13] * (c.weight.dim() - 2)))
    want = bn(c(x))
    assert unfoldable(c, bn) == ""
    fold_batchnorm(c, bn)
    # Folded in float64, stored in fp32: rounding of one fp32 conv (measured < 1e-6 relative).
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


def test_unfoldable_pairs_say_why():
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    assert "running statistics" in unfoldable(nn.Conv2d(3, 4, 1), bn)
    assert "features" in unfoldable(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(4))
    assert "transposed" in unfoldable(nn.ConvTranspose2d(3, 4, 2), nn.BatchNorm2d(4))
    c = nn.Conv2d(3, 4, 1)
    c.register_forward_hook(lambda *a: None)
    assert "hook" in unfoldable(c, nn.BatchNorm2d(4))


class ScaledBN(nn.BatchNorm2d):
    """A BatchNorm subclass that does more than normalise: folding it would lose the * 2."""

    def forward(self, x):
        return 2 * super().forward(x)


class PlainSubclassBN(nn.BatchNorm2d):
    pass


def test_a_batchnorm_subclass_with_its_own_forward_is_not_folded():
    assert "forward of its own" in unfoldable(nn.Conv2d(3, 4, 1), ScaledBN(4))
    assert unfoldable(nn.Conv2d(3, 4, 1), PlainSubclassBN(4)) == ""
