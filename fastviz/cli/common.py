"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import re
from pathlib import Path

import torch

from ..errors import FastvizError

# glibc's default malloc returns large activation buffers to the OS and page-faults them back
# every step (measured: a 27 ms step took 29-42 ms). Keep them mapped.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; True when it took effect."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MALLOC_THRESHOLD // 2)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, MALLOC_THRESHOLD))
    except (OSError, AttributeError):
        return False


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet-lite0",
                   help="efficientnet-lite0 (default, pretrained), alexnet, vgg16, resnet18, resnet101, densenet121, "
                        "or timm:NAME (any timm model; --weights FILE or none)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained; torchvision names read the torch hub cache), a state-dict or "
                        ".safetensors file, or 'none'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, help=f"output folder (default: {default})")


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise FastvizError(f"--device: not a device: {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastvizError(f"--device: {name} asked for but CUDA is not available")
    return dev


def rank_device(args) -> torch.device | None:
    """The device a distributed-aware command runs on. Under torchrun (WORLD_SIZE > 1) without
    --device: None, and the model loads on the CPU (the call moves it to the rank's GPU,
    LOCAL_RANK); otherwise --device, or the default."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.device is None:
        args.device = "cpu"
        return None
    return pick_device(args.device)


def model_from_args(args):
    from ..models import load_model

    weights = None if str(args.weights).lower() == "none" else args.weights
    return load_model(args.model, weights=weights, device=pick_device(args.device))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def out_dir(path: str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def parse_targets(values: list[str] | None, n: int):
    """--target: none (top-1), one class for all, or one per image."""
    if not values:
        return None
    try:
        ints = [int(v) for v in values]
    except ValueError as e:
        raise FastvizError(f"--target: expected class indices, got {values}") from e
    if len(ints) == 1:
        return ints[0]
    if len(ints) != n:
        raise FastvizError(f"--target: expected one class for all images or one per image ({n}), got {len(ints)}")
    return ints
