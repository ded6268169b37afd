"""Image parameterisations: what the synthesis optimiser updates, and how it becomes an image.

Each is a tiny object that owns its leaf tensor and maps it to a (B, 3, H, W) image in [0, 1]
(lucent's param/spatial.py and color.py; MACO, Fel et al. NeurIPS 2023). The engine only calls
`image()`, `update(...)`, `reset()` and reads `leaf`; it never asks which one it holds.

- `Pixel`: the image itself, centred on the network's mean colour (the classic method). Its update
  is the Yosinski regularizer step (update, decay, blur, clips, clamp to [0, 1]).
- `FFT`: Lucid's spectrum parameterisation: the real and imaginary parts of the 2-D spectrum,
  scaled by 1 / f^decay so every frequency has equal energy, an inverse FFT, ImageNet colour
  decorrelation (the Cholesky-like square root Lucid publishes) and a sigmoid.
- `Maco`: the magnitude spectrum is fixed to that of natural photos (shipped with the package,
  see bench/maco_spectrum.py), only the phase is optimised; the image is standardised, colours
  re-correlated and squashed by a sigmoid.

The constants (1/f scale, colour matrix, magnitude) are buffers made once on the device, so a
step makes no host-to-device copy (a CUDA graph can capture it).

Example:
    >>> p = make_param("maco", 2, (224, 224), device="cpu")
    >>> p.image().shape
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import functools
import io
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FastvizError
from .regularizers import Yosinski, regularize

PARAMS = ("pixel", "fft", "maco")

# MACO's gains before the sigmoid, chosen so that the pictures' pixel std and colourfulness sit
# at the sample photos' medians (`Maco`'s docstring; docs/quality.md).
MACO_CONTRAST = 1.6
MACO_SATURATION = 1.3

# Lucid's colour correlation square root (lucid/optvis/param/color.py), columns normalised by the
# largest column norm as Lucid does.
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


def color_matrix(device=None) -> Tensor:
    """(3, 3) matrix taking decorrelated channels to RGB (Lucid's, max column norm 1)."""
    c = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32)
    return (c / c.norm(dim=0).max()).to(device)


def to_rgb(t: Tensor, matrix: Tensor) -> Tensor:
    """Decorrelated (B, 3, H, W) -> correlated RGB (B, 3, H, W): out_d = sum_c M[d, c] t_c."""
    return torch.einsum("bchw,dc->bdhw", t, matrix)


def rfft_freqs(h: int, w: int) -> Tensor:
    """(h, w // 2 + 1) frequency magnitudes in cycles per pixel, the layout of torch.fft.rfft2."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return (fy.square() + fx.square()).sqrt()


class Param:
    """Base: `leaf` is what the optimiser updates; `image()` is (B, 3, H, W) in [0, 1]."""

    name = "param"
    leaf: Tensor
    start: Tensor

    def image(self) -> Tensor:
        raise NotImplementedError

    def update(self, d: Tensor, g: Tensor, *, lr: float, reg: Yosinski, blur: bool, impl: str) -> None:
        """leaf += lr * d, in place (no grad)."""
        self.leaf.add_(d, alpha=lr)

    def reset(self) -> None:
        with torch.no_grad():
            self.leaf.copy_(self.start)

    @property
    def rows(self) -> int:
        return self.leaf.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({tuple(self.leaf.shape)})"


class Pixel(Param):
    """The image itself, centred: image = mean + x (so x = 0 is the mean colour).

    Args:
        x0: (B, C, H, W) centred start, on the device.
        mean: (1, C, 1, 1) the network's mean colour (the model's `mean_tensor`).

    The update is the Yosinski step (`fastviz.regularizers.regularize`), which ends with a clamp
    of mean + x to [0, 1]; `image()` is not clamped, as in the classic loop.
    """

    name = "pixel"

    def __init__(self, x0: Tensor, mean: Tensor):
        self.start = x0
        self.leaf = x0.clone().requires_grad_(True)
        self.mean = mean
        self.lo = (-mean).flatten().contiguous()
        self.hi = (1 - mean).flatten().contiguous()

    def image(self) -> Tensor:
        return self.leaf + self.mean

    def update(self, d, g, *, lr, reg, blur, impl):
        regularize(self.leaf, d, g, lr=lr, reg=reg, blur=blur, lo=self.lo, hi=self.hi, impl=impl, out=self.leaf)


class _Spectrum(Param):
    """What FFT and Maco share: a leaf laid out like `torch.fft.rfft2` of the image,
    (B, 3, H, W // 2 + 1, *extra), drawn normal with `start_std`; decorrelated colour and a
    sigmoid take the inverse transform to RGB in [0, 1]."""

    extra: tuple[int, ...] = ()
    start_std = 1.0
    what = "start"

    def __init__(self, start: Tensor, size: tuple[int, int]):
        h, w = size
        want = (3, h, w // 2 + 1, *self.extra)
        if tuple(start.shape[1:]) != want:
            raise FastvizError(f"param: {self.what} must be (B, {', '.join(map(str, want))}), got {tuple(start.shape)}")
        self.size = size
        self.matrix = color_matrix(start.device)
        self.start = start
        self.leaf = start.clone().requires_grad_(True)

    @classmethod
    def random(cls, rows: int, size, generators, device, std: float | None = None) -> Tensor:
        """(rows, 3, H, W // 2 + 1, *extra) normal start, one generator per row."""
        h, w = size
        std = cls.start_std if std is None else std
        return torch.stack([std * torch.randn(3, h, w // 2 + 1, *cls.extra, generator=g) for g in generators]).to(device)

    def _to_image(self, t: Tensor) -> Tensor:
        """Decorrelated (B, 3, H, W) -> RGB in [0, 1]."""
        return torch.sigmoid(to_rgb(t, self.matrix))


class FFT(_Spectrum):
    """Lucid's Fourier parameterisation with colour decorrelation and a sigmoid.

    Args:
        start: (B, 3, H, W // 2 + 1, 2) real and imaginary parts of the start spectrum
            (`FFT.random` draws Lucid's: normal, std 0.01).
        size: (H, W) image size.
        decay: the spectrum is scaled by 1 / max(f, 1 / max(H, W)) ** decay.
    """

    name = "fft"
    extra = (2,)  # real and imaginary parts
    start_std = 0.01
    what = "FFT start"

    def __init__(self, start: Tensor, size: tuple[int, int], decay: float = 1.0):
        super().__init__(start, size)
        h, w = size
        f = rfft_freqs(h, w).clamp_min(1.0 / max(h, w))
        self.scale = f.pow(-decay)[None, None, :, :, None].to(start.device)

    def image(self) -> Tensor:
        spectrum = torch.view_as_complex(self.scale * self.leaf)
        t = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0  # Lucid's "magic" 4
        return self._to_image(t)


@functools.lru_cache(maxsize=1)
def _photo_log_magnitude() -> np.ndarray:
    data = resources.files("fastviz").joinpath("data/maco_spectrum.npy").read_bytes()
    return np.load(io.BytesIO(data)).astype(np.float32)


def photo_magnitude(size: tuple[int, int], device=None) -> Tensor:
    """(3, H, W // 2 + 1) mean magnitude spectrum of natural photos (decorrelated colours).

    The shipped array is the spectrum at 224 x 224 (bench/maco_spectrum.py); other sizes
    resample its logarithm bilinearly over the rfft layout (as horama does), with the
    frequencies of the fftshift-ed rows kept in order.
    """
    h, w = size
    logm = torch.from_numpy(_photo_log_magnitude())  # (3, 224, 113)
    if (h, w // 2 + 1) != tuple(logm.shape[1:]):
        full = torch.fft.fftshift(logm, dim=1)[None]
        full = F.interpolate(full, size=(h, w // 2 + 1), mode="bilinear", align_corners=True)[0]
        logm = torch.fft.ifftshift(full, dim=1)
    return logm.exp().to(device)


class Maco(_Spectrum):
    """MACO (Fel et al. 2023): fixed natural magnitude spectrum, only the phase is optimised.

    image = sigmoid(colour(gain * standardise(irfft2(magnitude * exp(i * phase))))), the
    standardisation per image (zero mean, unit std over channels and pixels), the gain per
    decorrelated channel: `contrast` on the luminance, `contrast * saturation` on the two
    colour-opponent channels. Gain 1 (the plain MACO recipe) gives pictures greyer and paler
    than photos (pixel std 0.12, colourfulness 23 where the sample photos' medians are 0.18 and
    43); the defaults put both at the photos' medians (bench/maco_spectrum.py prints the
    photos', docs/quality.md measures the rendered pictures').

    Args:
        start: (B, 3, H, W // 2 + 1) start phase (`Maco.random`: normal, std 1).
        size: (H, W) image size.
        magnitude: (3, H, W // 2 + 1) magnitude spectrum (default: `photo_magnitude(size)`).
        contrast: gain on the standardised luminance before the sigmoid.
        saturation: extra gain on the colour-opponent channels.
    """

    name = "maco"
    what = "MACO start phase"

    def __init__(self, start: Tensor, size: tuple[int, int], magnitude: Tensor | None = None,
                 contrast: float = MACO_CONTRAST, saturation: float = MACO_SATURATION):
        super().__init__(start, size)
        mag = photo_magnitude(size) if magnitude is None else magnitude
        self.magnitude = mag.to(start.device, torch.float32)[None]
        gain = torch.tensor([contrast, contrast * saturation, contrast * saturation], dtype=torch.float32)
        self.gain = gain.view(1, 3, 1, 1).to(start.device)

    def image(self) -> Tensor:
        spectrum = torch.polar(self.magnitude.expand_as(self.leaf), self.leaf)
        t = torch.fft.irfft2(spectrum, s=self.size)
        mu = t.mean((1, 2, 3), keepdim=True)
        sd = t.std((1, 2, 3), keepdim=True)
        return self._to_image((t - mu) * (self.gain / (sd + 1e-5)))


def row_generators(seed: int, rows: range) -> list[torch.Generator]:
    """One CPU generator per row, seeded by (seed, row), so row r starts the same whatever batch
    it is rendered in."""
    return [torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + r) % 2 ** 63) for r in rows]


def make_param(kind: str, rows: int, size, *, device=None, seed: int = 0, first_row: int = 0,
               mean: Tensor | None = None, init: str = "zero", start: Tensor | None = None) -> Param:
    """The one place a parameterisation is built: `rows` rows of `kind`, the leaf on `device`.

    Row r's random start comes from a generator seeded by (seed, first_row + r), so it does not
    depend on the batch it is rendered in. Arguments are checked by the caller (the public
    synthesis calls check them once).

    Args:
        kind: "pixel", "fft" or "maco".
        rows: B.
        size: (H, W).
        mean: pixel only: (1, C, 1, 1) the network's mean colour (`Model.mean_tensor`); the
            channels of a pixel image are mean's.
        init: pixel only: "zero" (the mean colour) or "noise" (std 0.01 around it).
        start: pixel only: (rows, C, H, W) images in [0, 1] to start from instead of `init`.

    Returns:
        the parameterisation.
    """
    if kind not in PARAMS:  # a programming error: the public calls check `param` first
        raise FastvizError(f"param: expected one of {PARAMS}, got {kind!r}")
    h, w = size
    gens = row_generators(seed, range(first_row, first_row + rows))
    if kind == "pixel":
        mean = torch.zeros(1, 3, 1, 1, device=device) if mean is None else mean.to(device, torch.float32)
        c = mean.shape[1]
        if start is not None:
            x0 = start.to(device, torch.float32) - mean
        elif init == "noise":
            x0 = torch.stack([0.01 * torch.randn(c, h, w, generator=g) for g in gens]).to(device)
        else:
            x0 = torch.zeros(rows, c, h, w, device=device)
        return Pixel(x0, mean)
    cls = FFT if kind == "fft" else Maco
    return cls(cls.random(rows, (h, w), gens, device), (h, w))
