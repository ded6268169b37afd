"""fastviz: fast, trustworthy pictures of what a convolutional network sees.

Inputs are images in [0, 1], (B, 3, H, W); the `Model` wrapper normalises them for the network.
"""

from .atlas import AtlasResult, atlas
from .attribution import (deconvnet, gradient, guided_backprop, input_x_gradient, neuron_gradient,
                          predict, saliency)
from .relevance import LRPResult, lrp, rules
from .averaged import IGResult, integrated_gradients, smoothgrad
from .budget import memory_budget
from .cam import gradcam, guided_gradcam, layercam, scorecam
from .demo_data import demo_set
from .engine import Render
from .examples import Examples, dataset_examples
from .errors import FastvizError
from .image import grid, heatmap, normalize, overlay, save_image
from .embedding import Embedding, embed, neighbour_agreement
from .inspection import Features, features, filter_grid, filters
from .io import load_image, load_images, sample_images
from .metrics import CurveResult, ROADResult, deletion, insertion, road
from .sanity import RandomizationResult, randomization_check
from .models import Model, as_model, imagenet_labels, load_model
from .objectives import channel, class_score, dream, neurons
from .regularizers import Yosinski
from .render import class_model, deepdream, feature, invert, neuron, render_objective
from .targets import Neuron
from .transformer import attention_rollout, transformer_attribution
from .objectives import diversity
from .param import FFT, Maco, Pixel
from .transforms import Transforms

__version__ = "0.1.0"

__all__ = [
    "atlas",
    "attention_rollout",
    "AtlasResult",
    "as_model",
    "channel",
    "class_model",
    "class_score",
    "CurveResult",
    "deconvnet",
    "deepdream",
    "deletion",
    "demo_set",
    "dataset_examples",
    "dream",
    "embed",
    "Embedding",
    "Examples",
    "FastvizError",
    "feature",
    "features",
    "Features",
    "filter_grid",
    "filters",
    "gradcam",
    "gradient",
    "grid",
    "guided_backprop",
    "guided_gradcam",
    "heatmap",
    "IGResult",
    "imagenet_labels",
    "input_x_gradient",
    "insertion",
    "integrated_gradients",
    "invert",
    "layercam",
    "load_image",
    "load_images",
    "load_model",
    "lrp",
    "LRPResult",
    "memory_budget",
    "Model",
    "neighbour_agreement",
    "Neuron",
    "neuron",
    "neuron_gradient",
    "neurons",
    "normalize",
    "overlay",
    "predict",
    "randomization_check",
    "RandomizationResult",
    "Render",
    "transformer_attribution",
    "rules",
    "render_objective",
    "road",
    "ROADResult",
    "saliency",
    "sample_images",
    "save_image",
    "scorecam",
    "smoothgrad",
    "Yosinski",
    # image parameterisations, transformation robustness, diversity
    "diversity",
    "FFT",
    "Maco",
    "Pixel",
    "Transforms",
]
