"""Transformation robustness for synthesis: per-row random transforms into a fixed-size buffer.

lucent chains pad, jitter, random scale and random rotation, each changing the image's shape;
MACO takes random crops resized to the network's input and adds noise. Here all of it is one
affine matrix per output row and one `grid_sample`, so shapes never change, the random numbers
come from a device `torch.Generator`, nothing syncs with the host, and a step captures in a CUDA
graph. `k = crops` output rows per image ("views"): the network sees B * k rows.

Coordinates are grid_sample's normalised ones ([-1, 1] over the image, align_corners=False):
an output pixel at p reads the input at A p + t. In that frame, for an output of side S:
- crop of fraction s centred at c: q = s p + c, with |c| <= 1 - s so the crop stays inside;
- scale sigma (zoom in when > 1): q = p / sigma; rotation by a (degrees) about the centre;
- pad by P pixels (a border of `fill` around the image, as lucent's pad): q = p (S + 2P) / S;
- jitter by up to J pixels: q += 2 j / S, j uniform in [-J, J].

Example:
    >>> t = Transforms(crops=4, crop=(0.5, 1.0), noise=0.01)
    >>> t(torch.rand(2, 3, 64, 64), torch.Generator().manual_seed(0), (32, 32)).shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FastvizError


def affine(angle: Tensor, scale: Tensor, shift: Tensor, aspect: float = 1.0) -> Tensor:
    """(N, 2, 3) grid_sample matrices: the output reads the input at R(angle) p / scale + shift.

    Args:
        angle: (N,) degrees, counter-clockwise as seen on the image (y pointing down).
        scale: (N,) zoom; > 1 magnifies.
        shift: (N, 2) (x, y) translation in normalised coordinates (2 = the whole width).
        aspect: W / H of the input, so a rotation is a rotation in pixels.
    """
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # Rotation in pixel units conjugated into normalised units: x_n = x_px * 2 / W, y_n = y_px * 2 / H.
    # Output p reads R(angle) p: a point right of the centre lands above it after +90 degrees.
    row0 = torch.stack([cos, -sin / aspect, shift[:, 0]], 1)
    row1 = torch.stack([sin * aspect, cos, shift[:, 1]], 1)
    return torch.stack([row0, row1], 1)


def warp(images: Tensor, matrices: Tensor, size: tuple[int, int], fill: float = 0.5) -> Tensor:
    """Sample each output row from its source row through its matrix, bilinear, `fill` outside.

    Args:
        images: (B, C, H, W).
        matrices: (B * k, 2, 3); output row i reads images[i // k].
        size: (h, w) output size.
        fill: the value outside the image.

    Returns:
        (B * k, C, h, w).
    """
    B, C = images.shape[:2]
    n = matrices.shape[0]
    if n % B:
        raise FastvizError(f"matrices: {n} rows is not a multiple of the batch {B}")
    src = images - fill
    if n != B:
        src = src.repeat_interleave(n // B, 0)
    grid = F.affine_grid(matrices.to(images.dtype), [n, C, *size], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _pair(v, name: str, centre: float) -> tuple[float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (centre - v, centre + v) if centre == 0 else (float(v), float(v))
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError) as e:
        raise FastvizError(f"{name}: expected a number or (low, high), got {v!r}") from e
    if lo > hi:
        raise FastvizError(f"{name}: expected low <= high, got {v!r}")
    return lo, hi


@dataclass(frozen=True)
class Transforms:
    """Random per-row transforms of a synthesis step, as one affine warp into a fixed buffer.

    Args:
        pad: border of `fill` in pixels around the image before the rest (lucent: 12).
        jitter: random translation of up to this many pixels, per row (lucent: 8 + 4).
        scale: zoom range (low, high) or one number; lucent: (0.9, 1.1).
        rotate: rotation range in degrees, (low, high) or r for (-r, r); lucent: 10.
        crops: k views per image (each a network row).
        crop: the side of a random square crop as a fraction of the image's side, (low, high)
            drawn uniformly per view; (1, 1) takes the whole image. MACO: (0.5, 1.0).
        noise: std of Gaussian noise added to each view, on the [0, 1] scale.
        fill: the value of the border (0.5 grey).

    Raises:
        FastvizError: a field out of range; the message names it.
    """

    pad: int = 0
    jitter: int = 0
    scale: tuple | float = 1.0
    rotate: tuple | float = 0.0
    crops: int = 1
    crop: tuple | float = 1.0
    noise: float = 0.0
    fill: float = 0.5

    def __post_init__(self):
        for name in ("pad", "jitter", "crops"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "crops" else 0):
                raise FastvizError(f"{name}: expected an int >= {1 if name == 'crops' else 0}, got {v!r}")
        object.__setattr__(self, "scale", _pair(self.scale, "scale", 1.0))
        object.__setattr__(self, "rotate", _pair(self.rotate, "rotate", 0.0))
        object.__setattr__(self, "crop", _pair(self.crop, "crop", 1.0))
        if self.scale[0] <= 0:
            raise FastvizError(f"scale: expected > 0, got {self.scale}")
        if not (0 < self.crop[0] and self.crop[1] <= 1):
            raise FastvizError(f"crop: expected fractions in (0, 1], got {self.crop}")
        if not self.noise >= 0:
            raise FastvizError(f"noise: expected >= 0, got {self.noise}")

    @classmethod
    def lucent(cls) -> "Transforms":
        """lucent's standard_transforms: pad 12, jitter 8 (+4), scale 0.9-1.1, rotate +-10."""
        return cls(pad=12, jitter=12, scale=(0.9, 1.1), rotate=10)

    @classmethod
    def maco(cls, crops: int = 4) -> "Transforms":
        """MACO-style: k crops of 50-100% of the side resized to the input, noise 0.01."""
        return cls(crops=crops, crop=(0.5, 1.0), noise=0.01)

    def matrices(self, rows: int, size: tuple[int, int], out: tuple[int, int], generator, device) -> Tensor:
        """(rows * crops, 2, 3) random matrices, drawn on `device` from `generator`."""
        n = rows * self.crops
        h, w = size
        u = torch.rand(n, 7, device=device, generator=generator)
        draw = lambda r, i: r[0] + (r[1] - r[0]) * u[:, i]
        angle, zoom, side = draw(self.rotate, 0), draw(self.scale, 1), draw(self.crop, 2)
        # q = side * R p / (zoom * pad) + centre + jitter; the crop's centre keeps it inside.
        pad = (w + 2 * self.pad) / w
        scale = zoom / (side * pad)
        centre = (1 - side[:, None]) * (2 * u[:, 3:5] - 1)
        # Jitter in pixels -> normalised units (no host tensor: a graph capture forbids the copy).
        jit = torch.stack([(2 * self.jitter / w) * (2 * u[:, 5] - 1), (2 * self.jitter / h) * (2 * u[:, 6] - 1)], 1)
        return affine(angle, scale, centre + jit, aspect=w / h)

    def __call__(self, images: Tensor, generator, out: tuple[int, int] | None = None) -> Tensor:
        """(B, C, H, W) -> (B * crops, C, h, w) transformed views (out = (h, w), default (H, W))."""
        out = tuple(images.shape[-2:]) if out is None else tuple(out)
        m = self.matrices(images.shape[0], tuple(images.shape[-2:]), out, generator, images.device)
        views = warp(images, m, out, self.fill)
        if self.noise:
            views = views + self.noise * torch.randn(views.shape, device=views.device, generator=generator)
        return views

    @property
    def identity(self) -> bool:
        return (self.pad == self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == (0.0, 0.0)
                and self.crops == 1 and self.crop == (1.0, 1.0) and self.noise == 0)


def roll_rows(img: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Roll each row by its own integer (dy, dx) pixels (wrapping around, as DeepDream's np.roll).

    dy, dx: (B,) int64 on the device. Two gathers with broadcast (never materialised) indices:
    no host sync, fixed shapes, so a CUDA graph can capture it.
    """
    b, c, h, w = img.shape
    iy = (torch.arange(h, device=img.device)[None] - dy[:, None]).remainder_(h)
    ix = (torch.arange(w, device=img.device)[None] - dx[:, None]).remainder_(w)
    img = img.gather(2, iy[:, None, :, None].expand(b, c, h, w))
    return img.gather(3, ix[:, None, None, :].expand(b, c, h, w))


class Views:
    """What the network sees of each image in one step: a random integer roll (`jitter`), then
    `transforms` (k views per image, k consecutive network rows), all drawn from one device
    generator seeded once, so a run is reproducible and a CUDA graph can replay it.

    Args:
        jitter: roll of up to this many pixels per row and step (0: none).
        transforms: a `Transforms` or None.
        seed: the generator's seed; `reset()` goes back to it.
        device: where the generator lives.
        out: (h, w) the transforms resample each view to (None: the image's size; needs
            transforms).
    """

    def __init__(self, jitter: int, transforms: Transforms | None, seed: int, device,
                 out: tuple[int, int] | None = None):
        self.jitter, self.transforms, self.seed, self.out = jitter, transforms, seed, out
        self.count = transforms.crops if transforms is not None else 1
        self.generator = None
        if jitter or transforms is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def reset(self) -> None:
        if self.generator is not None:
            self.generator.manual_seed(self.seed)

    def __call__(self, img: Tensor) -> Tensor:
        """(B, C, H, W) -> (B * count, C, H, W)."""
        if self.jitter:
            shift = torch.randint(-self.jitter, self.jitter + 1, (2, img.shape[0]), device=img.device,
                                  generator=self.generator)
            img = roll_rows(img, shift[0], shift[1])
        if self.transforms is not None:
            img = self.transforms(img, self.generator, self.out)
        return img

    def fit(self, img: Tensor) -> Tensor:
        """(B, C, H, W) -> the whole image at the views' size, no randomness (for checks and
        tracing: the shape the network will see)."""
        if self.out is None or tuple(img.shape[-2:]) == tuple(self.out):
            return img
        return F.interpolate(img, size=self.out, mode="bilinear", antialias=True, align_corners=False)

    def mean(self, score: Tensor) -> Tensor:
        """(B * count,) per-view scores -> (B,) per-image means."""
        return score.view(-1, self.count).mean(1) if self.count > 1 else score


def as_transforms(t) -> Transforms | None:
    """None / "none" -> None; "lucent" / "maco" / a Transforms -> a Transforms."""
    if t is None or t == "none":
        return None
    if isinstance(t, Transforms):
        return t
    if t == "lucent":
        return Transforms.lucent()
    if t == "maco":
        return Transforms.maco()
    raise FastvizError(f"transforms: expected None, 'lucent', 'maco' or fastviz.Transforms, got {t!r}")
