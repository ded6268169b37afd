"""The API's grammar (docs/api.md): options are keyword-only, renamed names still work one
release with a DeprecationWarning, and `Features` is exported."""

import inspect

import pytest
import torch

import fastviz as fv
from tiny_net import tiny

POSITIONAL = {  # what docs/api.md says may be given by position
    "saliency": ["model", "x", "target"], "guided_backprop": ["model", "x", "target"],
    "deconvnet": ["model", "x", "target"], "input_x_gradient": ["model", "x", "target"],
    "gradient": ["model", "x", "target"], "neuron_gradient": ["model", "x", "neuron"],
    "gradcam": ["model", "x", "target"], "guided_gradcam": ["model", "x", "target"],
    "layercam": ["model", "x", "target"], "scorecam": ["model", "x", "target"],
    "smoothgrad": ["model", "x", "target"], "integrated_gradients": ["model", "x", "target"],
    "deletion": ["model", "x", "maps"], "insertion": ["model", "x", "maps"], "road": ["model", "x", "maps"],
    "randomization_check": ["model", "x", "method"], "class_model": ["model", "classes"],
    "feature": ["model", "layer", "channels"], "neuron": ["model", "neurons"],
    "deepdream": ["model", "photo", "layer"], "invert": ["model", "photo", "layer"],
    "render_objective": ["model", "objective", "rows"], "atlas": ["model", "out"],
    "dataset_examples": ["model", "data"],
    "features": ["model", "images_or_folder"], "embed": ["model", "images_or_folder"], "predict": ["model", "x"],
}


@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_only_the_documented_arguments_are_positional(name):
    params = inspect.signature(getattr(fv, name)).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert positional == POSITIONAL[name]


def test_renamed_arguments_warn_and_mean_the_same():
    m, x = tiny(), torch.rand(2, 3, 32, 32)
    with pytest.warns(DeprecationWarning, match="guided_relu"):
        old, _ = fv.gradient(m, x, 1, guided_relu=True)
    new, _ = fv.gradient(m, x, 1, guided=True)
    torch.testing.assert_close(old, new)
    with pytest.warns(DeprecationWarning, match="steps"):
        old = fv.integrated_gradients(m, x, 1, steps=4).attributions
    torch.testing.assert_close(old, fv.integrated_gradients(m, x, 1, points=4).attributions)
    maps = fv.saliency(m, x, 1)
    with pytest.warns(DeprecationWarning, match="steps"):
        old = fv.deletion(m, x, maps, steps=4).curve
    torch.testing.assert_close(old, fv.deletion(m, x, maps, points=4).curve)
    with pytest.raises(fv.FastvizError, match="both names"), pytest.warns(DeprecationWarning):
        fv.deletion(m, x, maps, steps=4, points=8)


def test_features_is_exported_and_returned():
    f = fv.features(tiny(), torch.rand(3, 3, 32, 32))
    assert isinstance(f, fv.Features) and "Features" in fv.__all__ and f.features.shape[0] == 3
