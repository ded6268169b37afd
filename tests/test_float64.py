"""A float64 network: attribution runs in float64 (to check a method against a reference without
float32 rounding, as the LRP test does against zennit); synthesis, float32 by design, refuses it."""

import copy

import pytest
import torch
import torchvision

import fastviz as fv

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
T = [1, 2]
METHODS = {
    "saliency": lambda m: fv.saliency(m, X, T),
    "input_x_gradient": lambda m: fv.input_x_gradient(m, X, T),
    "guided_backprop": lambda m: fv.guided_backprop(m, X, T),
    "neuron_gradient": lambda m: fv.neuron_gradient(m, X, fv.Neuron("layer2", 3)),
    "gradcam": lambda m: fv.gradcam(m, X, T),
    "layercam": lambda m: fv.layercam(m, X, T),
    "integrated_gradients": lambda m: fv.integrated_gradients(m, X, T).attributions,
    "lrp": lambda m: fv.lrp(m, X, T).relevance,
}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    def wrap(n):
        return fv.Model(n, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=64)
    return wrap(net), wrap(copy.deepcopy(net).double())


@pytest.mark.parametrize("name", METHODS)
def test_a_float64_network_explains_in_float64(nets, name):
    """The same maps as in float32, in float64. Measured 1.5e-7 .. 7e-7 apart, integrated
    gradients 4e-4 (its 32-step quadrature sums float32 rounding): float32's error, not a method's."""
    m32, m64 = nets
    a, b = METHODS[name](m32), METHODS[name](m64)
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    bound = 1e-2 if name == "integrated_gradients" else 1e-5
    assert float((a.double() - b).norm() / b.norm()) < bound


def test_synthesis_refuses_a_float64_network(nets):
    with pytest.raises(fv.FastvizError, match="float32.*float64"):
        fv.class_model(nets[1], [1], steps=2)
