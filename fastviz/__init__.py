"""fastviz: fast, trustworthy pictures of what a convolutional network sees.

Inputs are images in [0, 1], (B, 3, H, W); the `Model` wrapper normalises them for the network.
"""

from .attribution import gradient, guided_backprop, neuron_gradient, predict, saliency
from .errors import FastvizError
from .image import grid, heatmap, normalize, overlay, save_image
from .io import load_image, load_images, sample_images
from .models import Model, as_model, imagenet_labels, load_model
from .targets import Neuron

__version__ = "0.1.0"

__all__ = [
    "FastvizError",
    "Model",
    "Neuron",
    "as_model",
    "gradient",
    "grid",
    "guided_backprop",
    "heatmap",
    "imagenet_labels",
    "load_image",
    "load_images",
    "load_model",
    "neuron_gradient",
    "normalize",
    "overlay",
    "predict",
    "saliency",
    "sample_images",
    "save_image",
]
