import pytest
import torch

import fastviz as fv
from fastviz.models import TORCHVISION


def test_pretrained_default_is_offline_imagenet(lite0):
    assert lite0.input_size == (224, 224)
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert lite0.num_classes == 1000 and lite0.labels[285] == "Egyptian cat"
    assert not lite0.module.training
    assert "_blocks.10" in lite0.layer_names()


def test_model_wraps_without_copying():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    mine = fv.Model(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=224)
    assert mine.module is net
    x = torch.rand(2, 3, 8, 8)
    expected = net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                   / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    torch.testing.assert_close(mine(x), expected)
    assert fv.as_model(net).module is net and fv.as_model(net).mean is None


def test_unknown_layer_lists_nearest_names(lite0):
    with pytest.raises(fv.FastvizError, match=r"layer: no module named '_block.10'.*nearest: _blocks.10"):
        lite0.layer("_block.10")


@pytest.fixture
def zero_init(monkeypatch):
    """torchvision's random initialisation writes zeros instead: drawing VGG-16's 138 M random
    weights takes seconds and these tests read names and shapes, not values."""
    for fn in ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, fn, lambda t, *a, **k: torch.nn.init.zeros_(t))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_names_with_random_weights(name, zero_init):
    m = fv.load_model(name, weights=None)
    assert m.num_classes == 1000 and m.mean == fv.models.IMAGENET_MEAN
    with torch.no_grad():  # 64 x 64 is enough: every one of them ends in an adaptive pool
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_missing_torchvision_weights_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(fv.FastvizError, match=r"weights: pretrained resnet18 weights are not on disk; looked for .*checkpoints"):
        fv.load_model("resnet18")


def test_weights_from_file_roundtrip(tmp_path):
    src = fv.load_model("resnet18", weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.module.state_dict(), path)
    loaded = fv.load_model("resnet18", weights=path)
    for a, b in zip(src.module.parameters(), loaded.module.parameters()):
        assert torch.equal(a, b)


def test_bad_model_arguments(tmp_path):
    with pytest.raises(fv.FastvizError, match="unknown model 'resnet19'.*did you mean resnet18"):
        fv.load_model("resnet19")
    with pytest.raises(fv.FastvizError, match="weights: no such file"):
        fv.load_model("resnet18", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(fv.FastvizError, match="weights: could not load"):
        fv.load_model("alexnet", weights=bad)
    with pytest.raises(fv.FastvizError, match="module: expected a torch.nn.Module"):
        fv.Model("resnet18")


class OnlyAt32(torch.nn.Module):
    """A network that takes 32 x 32 images only (as a ViT with a fixed patch grid does)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 32 * 32, 5)

    def forward(self, x):
        assert x.shape[-2:] == (32, 32), f"takes 32x32, got {tuple(x.shape[-2:])}"
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_fixed_size_network_sees_its_size_and_the_gradient_reaches_the_image():
    m = fv.Model(OnlyAt32(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32, fixed_size=True)
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    assert m.fit_size(x) == (32, 32) and m.fit(x).shape == (2, 3, 32, 32)
    s = fv.saliency(m, x, [1, 2])
    assert s.shape == (2, 48, 64) and (s > 0).float().mean() > 0.5  # through the resize, everywhere
    with pytest.raises(AssertionError, match="takes 32x32"):  # without it the network refuses
        fv.Model(OnlyAt32(), input_size=32)(x)


def test_bad_fixed_size():
    with pytest.raises(fv.FastvizError, match="fixed_size: expected True or False"):
        fv.Model(OnlyAt32(), input_size=32, fixed_size="yes")
    with pytest.raises(fv.FastvizError, match="fixed_size: a network of one fixed size needs input_size"):
        fv.Model(OnlyAt32(), fixed_size=True)
