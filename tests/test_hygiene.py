"""Rule 1: every public call gives the user's network back as it came, also when it raises.

Each case runs on a network that starts in *training* mode with some parameters frozen and an
inplace ReLU, so that a call which forgets to restore eval/requires_grad/inplace is caught.
"""

import pytest
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


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = Net().train()
    net.features[0].bias.requires_grad_(False)
    return fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32, labels=[str(i) for i in range(10)])


X = torch.rand(2, 3, 32, 32)
N = fv.Neuron("features.3", channel=1)

# (name, call) pairs; each call takes the model. Other test files extend these lists.
CALLS = [
    ("predict", lambda m: fv.predict(m, X, k=3)),
    ("saliency", lambda m: fv.saliency(m, X)),
    ("saliency neuron", lambda m: fv.saliency(m, X, N)),
    ("guided_backprop", lambda m: fv.guided_backprop(m, X, [1, 2])),
    ("neuron_gradient", lambda m: fv.neuron_gradient(m, X, N)),
    ("neuron_gradient guided", lambda m: fv.neuron_gradient(m, X, N, guided=True)),
]
BAD_CALLS = [
    ("predict k", lambda m: fv.predict(m, X, k=11)),
    ("saliency target", lambda m: fv.saliency(m, X, target=10)),
    ("saliency shape", lambda m: fv.saliency(m, X[:, :2])),
    ("guided targets", lambda m: fv.guided_backprop(m, X, [1, 2, 3])),
    ("neuron layer", lambda m: fv.neuron_gradient(m, X, fv.Neuron("features.9", 0))),
    ("neuron channel", lambda m: fv.neuron_gradient(m, X, fv.Neuron("features.3", 99), guided=True)),
]


def _extend(calls, bad):
    CALLS.extend(calls)
    BAD_CALLS.extend(bad)


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
def test_model_unchanged_after_call(model, snapshot, name, call):
    snap = snapshot(model.module)
    call(model)
    snap.assert_unchanged()


@pytest.mark.parametrize("name,call", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_model_unchanged_after_error(model, snapshot, name, call):
    snap = snapshot(model.module)
    with pytest.raises(fv.FastvizError):
        call(model)
    snap.assert_unchanged()


def test_session_restores_on_an_exception_inside(model, snapshot):
    from fastviz.hooks import session

    snap = snapshot(model.module)
    with pytest.raises(RuntimeError, match="boom"):
        with session(model, no_inplace=True) as s:
            s.add_forward_hook(model.layer("features.2"), lambda *a: None)
            assert not model.module.training and not model.layer("features.2").inplace
            raise RuntimeError("boom")
    snap.assert_unchanged()
