"""Picture statistics (fastviz.picture_stats): each against a case whose answer is known."""

import math

import pytest
import torch

from fastviz.param import make_param, photo_magnitude
from fastviz.picture_stats import axis_power, colourfulness, contrast, periodic_component, spectral_slope


def one_over_f(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) grey isotropic 1/f noise (random phases), no preferred direction."""
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    amp = (fy.square() + fx.square()).sqrt().clamp_min(1 / size).reciprocal()
    phase = 2 * math.pi * torch.rand(n, 1, size, size // 2 + 1, generator=g)
    x = torch.fft.irfft2(torch.polar(amp.expand_as(phase).contiguous(), phase), s=(size, size))
    x = 0.5 + 0.15 * x / x.std((2, 3), keepdim=True)
    return x.expand(-1, 3, -1, -1)


def test_axis_power_sees_fine_stripes_and_not_isotropic_texture():
    noise = one_over_f(4)
    y = torch.arange(128.0)
    stripes = 0.05 * (torch.sin(2 * math.pi * y / 5)[:, None] + torch.sin(2 * math.pi * y / 3)[None, :])
    striped = (noise + stripes).clamp(0, 1)
    plain, crossed = axis_power(noise), axis_power(striped)
    assert bool((plain < 0.08).all()), plain  # an isotropic 1/f picture: about 0.03-0.05
    assert bool((crossed > 3 * plain).all()), (plain, crossed)


def test_axis_power_ignores_a_pictures_borders():
    """The Hann window: a smooth gradient across the picture (a jump at the wrap-around, which
    an unwindowed FFT turns into a cross on the axes) adds almost nothing."""
    noise = one_over_f(4, seed=1)
    ramp = torch.linspace(0, 0.3, 128)
    tilted = noise + ramp[None, None, :, None] + ramp[None, None, None, :]
    assert torch.allclose(axis_power(tilted), axis_power(noise), rtol=0.2)
    g = tilted.mean(1)
    raw = torch.fft.rfft2(g - g.mean((1, 2), keepdim=True)).abs().square()
    assert float(raw[:, 20:60, 0].sum() / raw[:, 20:60, 20].sum()) > 3  # unwindowed: the cross (6.3)


def test_periodic_component_wraps_around_and_keeps_the_content():
    x = one_over_f(2, seed=2) + torch.linspace(0, 0.5, 128)[None, None, :, None]  # jumps top to bottom
    p = periodic_component(x)
    jump = lambda t: float((t[..., -1, :] - t[..., 0, :]).abs().mean())
    step = lambda t: float((t[..., 1:, :] - t[..., :-1, :]).abs().mean())  # next-row difference
    assert jump(x) > 5 * step(x)  # 0.50 against 0.08
    assert jump(p) < 1.5 * step(p)  # wrapping around is one more ordinary step
    assert step(x - p) < 0.1 * step(x)  # the smooth part has almost no fine detail


def test_contrast_and_colourfulness_by_hand():
    grey = torch.full((1, 3, 8, 8), 0.4)
    assert float(contrast(grey)) == 0 and float(colourfulness(grey)) == 0
    # Half red, half green: rg = +255 / -255 (std 255, mean 0), yb = 127.5 (std 0, mean 127.5).
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :, :4] = 1
    x[0, 1, :, 4:] = 1
    assert float(colourfulness(x)) == pytest.approx(255 + 0.3 * 127.5, rel=1e-5)
    assert float(contrast(x)) == pytest.approx(float(x[0, 0].std()) * 2 / 3, rel=1e-5)


def test_spectral_slope_of_one_over_f_noise():
    """Power of 1/f amplitude falls as f^-2."""
    s = spectral_slope(one_over_f(3))
    assert bool(((s > -2.2) & (s < -1.8)).all()), s


def test_maco_pictures_are_not_striped_and_have_photo_contrast():
    """The shipped spectrum was taken of the photos' periodic components (bench/maco_spectrum.py):
    random-phase MACO pictures sit inside the photos' quartiles on the three measures it prints
    (stripes 0.050-0.125, contrast 0.117-0.264, colourfulness 32-75). The spectrum before it
    (unwindowed crops) gave stripes 0.19; gain 1 gave contrast 0.12 and colourfulness 23."""
    img = make_param("maco", 8, (224, 224), seed=5).image().detach()
    assert bool((axis_power(img) < 0.125).all()), axis_power(img)
    assert 0.117 < float(contrast(img).median()) < 0.264
    assert 32 < float(colourfulness(img).median()) < 75


def test_the_shipped_spectrum_has_no_cross():
    """On the axes the magnitude is no larger than just beside them (the border cross is gone)."""
    m = photo_magnitude((224, 224)).mean(0)  # (224, 113)
    on = m[20:100, 0]
    beside = m[20:100, 3]
    assert float((on / beside).median()) < 1.6, float((on / beside).median())
