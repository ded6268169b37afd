"""Statistics that say whether a synthesised picture looks like a photo (docs/quality.md).

- `spectral_slope`: the slope of the radially averaged power spectrum (photos: about -2 to -3).
- `axis_power`: stripes. The share of spectral power on the horizontal and vertical frequency
  axes, outside the lowest frequencies, of the Hann-windowed picture. A photo's own borders
  put a cross into an unwindowed FFT; the window removes that, so what is left on the axes is
  real horizontal and vertical structure (stripes, or a photo's horizon and walls).
- `contrast`: the per-channel pixel standard deviation, averaged over the channels.
- `colourfulness`: Hasler & Suesstrunk (2003), M = sigma_rgyb + 0.3 mu_rgyb on 0-255 values.
- `periodic_component`: Moisan's periodic-plus-smooth decomposition (2011): the periodic part
  of an image, whose FFT carries no cross from the borders.

Every function takes (B, C, H, W) images (in [0, 1] where it matters) and returns (B,) values,
so a batch of pictures and a batch of photo crops are measured alike.

Example:
    >>> axis_power(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2])
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .param import rfft_freqs


def spectral_slope(images: Tensor, fmin: float = 1 / 64, fmax: float = 1 / 4) -> Tensor:
    """(B,) slope of log radially-averaged power vs log frequency (natural photos: about -2 to -3).

    Args:
        images: (B, C, H, W); the channel mean is analysed.
        fmin, fmax: the band fitted, cycles per pixel.
    """
    g = images.float().mean(1)
    g = g - g.mean((1, 2), keepdim=True)
    p = torch.fft.rfft2(g).abs().square()
    f = rfft_freqs(*g.shape[-2:])
    keep = (f >= fmin) & (f <= fmax)
    bins = torch.logspace(math.log10(fmin), math.log10(fmax), 25)
    idx = torch.bucketize(f[keep], bins)
    lf, lp = [], []
    for b in range(1, len(bins)):
        m = idx == b
        if m.any():
            lf.append(f[keep][m].mean().log())
            lp.append(p[:, keep][:, m].mean(1).log())
    x = torch.stack(lf)
    y = torch.stack(lp, 1)  # (B, n)
    xc = x - x.mean()
    return ((y - y.mean(1, keepdim=True)) * xc).sum(1) / xc.square().sum()


@functools.lru_cache(maxsize=8)
def _hann2d(h: int, w: int) -> Tensor:
    return torch.hann_window(h, periodic=False)[:, None] * torch.hann_window(w, periodic=False)[None]


def axis_power(images: Tensor, fmin: float = 1 / 8, width: int = 1) -> Tensor:
    """(B,) share of spectral power on the frequency axes: how striped a picture is.

    The grey picture (channel mean) is centred, multiplied by a 2-D Hann window and transformed;
    the power within `width` bins of the horizontal or vertical axis is divided by all the
    power, both counted only above `fmin` cycles per pixel (the lowest frequencies carry the
    picture's layout, not its texture). An isotropic 1/f picture of 224 x 224 gives about 0.03;
    a picture crossed by fine horizontal and vertical lines, several times that.

    Args:
        images: (B, C, H, W).
        fmin: frequencies below this (cycles per pixel) are left out.
        width: bins on each side of an axis counted as the axis (the Hann window spreads a line
            over its neighbour bins: 1).
    """
    g = images.float().mean(1)
    g = g - g.mean((1, 2), keepdim=True)
    h, w = g.shape[-2:]
    p = torch.fft.rfft2(g * _hann2d(h, w).to(g.device)).abs().square()
    ky = torch.fft.fftfreq(h, d=1 / h).abs()[:, None]  # integer bin distances from the axis
    kx = torch.fft.rfftfreq(w, d=1 / w)[None, :]
    keep = rfft_freqs(h, w) >= fmin
    on_axis = ((ky <= width) | (kx <= width)) & keep
    return p[:, on_axis.to(p.device)].sum(1) / p[:, keep.to(p.device)].sum(1)


def contrast(images: Tensor) -> Tensor:
    """(B,) pixel standard deviation per channel, averaged over the channels."""
    return images.float().flatten(2).std(2).mean(1)


def colourfulness(images: Tensor) -> Tensor:
    """(B,) Hasler & Suesstrunk (2003) colourfulness of RGB images in [0, 1] (their 0-255 scale).

    rg = R - G, yb = (R + G) / 2 - B; M = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2).
    About 15 is "slightly colourful", 33 "moderately", 45 "averagely", 59 "quite", 82 "highly".
    """
    x = 255 * images.float().flatten(2)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = r - g, (r + g) / 2 - b
    sd = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mu = (rg.mean(1).square() + yb.mean(1).square()).sqrt()
    return sd + 0.3 * mu


def periodic_component(images: Tensor) -> Tensor:
    """(B, C, H, W) periodic part of each image (Moisan 2011, periodic plus smooth).

    The smooth part s solves Laplace(s) = the jumps across opposite borders; u - s has the same
    content but wraps around without a jump, so its FFT has no cross from the borders.
    """
    u = images.float()
    h, w = u.shape[-2:]
    v = torch.zeros_like(u)
    jump_y = u[..., -1, :] - u[..., 0, :]
    jump_x = u[..., :, -1] - u[..., :, 0]
    v[..., 0, :] += jump_y
    v[..., -1, :] -= jump_y
    v[..., :, 0] += jump_x
    v[..., :, -1] -= jump_x
    q = torch.arange(h, dtype=u.dtype)[:, None]
    r = torch.arange(w, dtype=u.dtype)[None, :]
    denom = 2 * torch.cos(2 * math.pi * q / h) + 2 * torch.cos(2 * math.pi * r / w) - 4
    denom[0, 0] = 1.0  # the mean: s has none
    s_hat = torch.fft.fft2(v) / denom.to(u.device)
    s_hat[..., 0, 0] = 0
    return u - torch.fft.ifft2(s_hat).real
