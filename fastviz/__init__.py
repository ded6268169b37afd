"""fastviz: fast, trustworthy pictures of what a convolutional network sees.

Inputs are images in [0, 1], (B, 3, H, W); the `Model` wrapper normalises them for the network.
"""

from .attribution import gradient, guided_backprop, neuron_gradient, predict, saliency
from .engine import Render
from .errors import FastvizError
from .image import grid, heatmap, normalize, overlay, save_image
from .io import load_image, load_images, sample_images
from .models import Model, as_model, imagenet_labels, load_model
from .objectives import channel, class_score, dream, neurons
from .regularizers import Yosinski
from .render import class_model, deepdream, feature, invert, neuron, render_objective
from .targets import Neuron

__version__ = "0.1.0"

__all__ = [
    "FastvizError",
    "Model",
    "Neuron",
    "Render",
    "Yosinski",
    "as_model",
    "channel",
    "class_model",
    "class_score",
    "deepdream",
    "dream",
    "feature",
    "gradient",
    "grid",
    "guided_backprop",
    "heatmap",
    "imagenet_labels",
    "invert",
    "load_image",
    "load_images",
    "load_model",
    "neuron",
    "neuron_gradient",
    "neurons",
    "normalize",
    "overlay",
    "predict",
    "render_objective",
    "saliency",
    "sample_images",
    "save_image",
]
