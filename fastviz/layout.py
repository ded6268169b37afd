"""How a layer's output lies on the image: one room that lays any layer out as a map (B, C, h, w).

Every method that reads a layer spatially (the CAMs, channel / neuron / dream objectives,
inversion, `features` / `embed`, `neuron_gradient`, dataset examples, the atlas) sees the
layer through a `Layout`, so it works the same on a CNN's (B, C, h, w) maps, on a vision
transformer's token sequences and on channels-last stages, and the user never writes a reshape.

What a layer's output can be, and how it is read (`layout_of`):
- (B, C, h, w), NCHW: as it is. (B, h, w, C), channels last (Swin's stages, timm's
  `output_fmt = "NHWC"`): permuted. The module's own `output_fmt` decides where it has one;
  else the reading whose (h, w) has the image's aspect (a grid one stride of the image: a
  (B, 56, 56, 96) output of a 224 x 224 image is 56 x 56 of 96 channels, not 56 x 96 of 56);
  where both readings fit, the network's `output_fmt`, else NCHW.
- (B, N, C), tokens: the first `num_prefix_tokens` tokens (class, distillation, register
  tokens) are set aside and the rest laid out row by row on the patch grid: the patch
  embedding's grid for the image (`dynamic_feat_size` where the network takes any size), else
  the grid of the image's aspect with N tokens (stages that change resolution: LeViT,
  EfficientFormer's last stage). Prefix tokens are tried as the network declares them, then none
  (the patch embedding's own output has none).
- (B, C), a vector per image: a 1 x 1 map (a unit of a linear layer is a channel of it);
  `Layout.spatial` is False and the CAMs refuse it.
Refused, naming the layer, its shape and what was tried: a first dimension other than the batch
(MobileViT's and Swin's inner blocks fold patches or windows into it: pick the enclosing
block), tokens that make no grid of the image's aspect, any other rank.

`to_map` and `from_map` are differentiable views and reshapes: an objective's gradient flows
through them to the image, and a CAM swaps a laid-out leaf back into the forward with
`from_map` (its prefix tokens taken from the original output, so the network after the layer
runs on the same values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import FastvizError

__all__ = ["Layout", "layout_of"]

FORMS = ("nchw", "nhwc", "tokens", "vector")


@dataclass(frozen=True)
class Layout:
    """How one layer's output maps to (B, C, h, w).

    Attributes:
        form: "nchw", "nhwc", "tokens" (B, N, C) or "vector" (B, C).
        channels: C.
        grid: (h, w) of the map.
        prefix: tokens before the patch tokens (tokens only): class, distillation, registers.
    """

    form: str
    channels: int
    grid: tuple[int, int]
    prefix: int = 0

    @property
    def spatial(self) -> bool:
        """Whether the map has positions (a vector per image has none)."""
        return self.form != "vector"

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's output `t` as (B, C, h, w) (a view where the layout allows, else a copy)."""
        if self.form == "nchw":
            return t
        if self.form == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.form == "vector":
            return t[:, :, None, None]
        return t[:, self.prefix:].transpose(1, 2).reshape(t.shape[0], self.channels, *self.grid)

    def from_map(self, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A map `a` (B, C, h, w) back in the layer's own layout; `like` is the layer's output
        (the prefix tokens come from it)."""
        if self.form == "nchw":
            return a
        if self.form == "nhwc":
            return a.permute(0, 2, 3, 1)
        if self.form == "vector":
            return a[:, :, 0, 0]
        tokens = a.flatten(2).transpose(1, 2)
        return torch.cat([like[:, :self.prefix], tokens], 1) if self.prefix else tokens

    def describe(self) -> str:
        h, w = self.grid
        if self.form == "tokens":
            return f"{h}x{w} tokens of {self.channels} channels after {self.prefix} prefix tokens"
        return f"{self.form} map of {self.channels} channels on {h}x{w}"


def _fmt(obj) -> str | None:
    """timm's `output_fmt` (a str enum or a str) as "NCHW" / "NHWC", or None."""
    f = getattr(obj, "output_fmt", None)
    if f is None:
        return None
    f = str(getattr(f, "value", f)).upper()
    return f if f in ("NCHW", "NHWC") else None


def _fits(grid: tuple[int, int], image: tuple[int, int]) -> bool:
    """Whether a grid (h, w) is the image (H, W) at one stride: h = H/s, w = W/s up to one cell
    of rounding each, i.e. |h W - w H| < H + W."""
    (h, w), (H, W) = grid, image
    return h >= 1 and w >= 1 and abs(h * W - w * H) < H + W


def _aspect_grid(n: int, image: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) with h * w = n closest to the image's aspect, if it fits the image."""
    if n < 1:
        return None
    H, W = image
    best = min(((h, n // h) for h in range(1, n + 1) if n % h == 0), key=lambda g: abs(g[0] * W - g[1] * H))
    return best if _fits(best, image) else None


def _patch_grid(net: nn.Module, image: tuple[int, int]) -> tuple[int, int] | None:
    """The patch embedding's grid for `image` (timm's PatchEmbed), or None."""
    pe = getattr(net, "patch_embed", None)
    if pe is None:
        return None
    if getattr(net, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        return tuple(pe.dynamic_feat_size(image))
    grid = getattr(pe, "grid_size", None)
    if grid is not None and not getattr(pe, "strict_img_size", False):
        patch = getattr(pe, "patch_size", None)
        if patch is not None:  # a network that takes other sizes: the grid of this image
            return image[0] // patch[0], image[1] // patch[1]
    return tuple(grid) if grid is not None else None


def layout_of(net: nn.Module, module: nn.Module, name: str, out, image: tuple[int, int],
              batch: int) -> Layout:
    """How `module`'s output `out` (in a forward of `batch` images of size `image`) lies on the
    image, by the rules in the module docstring.

    Args:
        net: the network (its `num_prefix_tokens`, `patch_embed`, `output_fmt` are read).
        module: the layer, named `name` (its own `output_fmt` is read).
        out: what the layer returned.
        image: (H, W) the size of the network's input.
        batch: B, the images in that forward.

    Raises:
        FastvizError: a layout that cannot be read, naming the layer, its shape and what was tried.
    """
    if not isinstance(out, torch.Tensor):
        raise FastvizError(f"layer: {name!r} returns a {type(out).__name__}, not a tensor; "
                           f"pick a module whose output is a feature map")
    shape = tuple(out.shape)
    if out.dim() not in (2, 3, 4):
        raise FastvizError(f"layer: {name!r} gives shape {shape}; fastviz lays out (B, C, h, w) maps, "
                           f"(B, h, w, C) stages, (B, N, C) tokens and (B, C) vectors")
    if shape[0] != batch:
        raise FastvizError(
            f"layer: {name!r} gives shape {shape} for a batch of {batch}: its first dimension is not "
            f"the batch (windows or patches folded into it, as in Swin's and MobileViT's inner "
            f"blocks); pick the enclosing block, whose output is one map per image")
    if out.dim() == 2:
        return Layout("vector", shape[1], (1, 1))
    if out.dim() == 4:
        return _four(net, module, name, shape, image)
    return _tokens(net, name, shape, image)


def _four(net, module, name, shape, image) -> Layout:
    nchw = Layout("nchw", shape[1], (shape[2], shape[3]))
    nhwc = Layout("nhwc", shape[3], (shape[1], shape[2]))
    own = _fmt(module)
    if own is not None:
        return nhwc if own == "NHWC" else nchw
    fits = [lay for lay in (nchw, nhwc) if _fits(lay.grid, image)]
    if len(fits) == 1:
        return fits[0]
    return nhwc if _fmt(net) == "NHWC" else nchw


def _tokens(net, name, shape, image) -> Layout:
    _, n, c = shape
    declared = getattr(net, "num_prefix_tokens", None)
    prefixes = list(dict.fromkeys([int(declared), 0] if isinstance(declared, int) else [0]))
    patch = _patch_grid(net, image)
    for p in prefixes:
        if patch is not None and patch[0] * patch[1] == n - p:
            return Layout("tokens", c, patch, p)
    for p in prefixes:
        grid = _aspect_grid(n - p, image)
        if grid is not None:
            return Layout("tokens", c, grid, p)
    tried = ", ".join(f"{n - p} after {p} prefix tokens" for p in prefixes)
    grid_note = f"the patch grid {patch[0]}x{patch[1]}" if patch else "no patch embedding"
    raise FastvizError(
        f"layer: {name!r} gives shape {shape}, read as (B, N, C) tokens, but they lay out on no grid "
        f"of a {image[0]}x{image[1]} image (tried {tried}; {grid_note}); pick a layer whose tokens "
        f"are the image's patches")
