"""Image parameterisations: round trips, gradients, what each keeps fixed, and the loop on them."""

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.param import FFT, Maco, Pixel, color_matrix, make_param, photo_magnitude
from fastviz.picture_stats import spectral_slope
from fastviz.regularizers import NONE

SIZE = (48, 64)


def params():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    return [Pixel(0.01 * torch.randn(2, 3, *SIZE), mean), make_param("fft", 2, SIZE), make_param("maco", 2, SIZE)]


@pytest.mark.parametrize("p", params(), ids=["pixel", "fft", "maco"])
def test_start_image_is_in_range_with_its_shape(p):
    img = p.image().detach()
    assert img.shape == (2, 3, *SIZE) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    assert p.leaf.requires_grad and p.leaf.is_leaf


@pytest.mark.parametrize("p", params(), ids=["pixel", "fft", "maco"])
def test_gradients_reach_the_leaf_row_by_row(p):
    img = p.image()
    img[0, 0].mean().backward()  # row 0, red only
    g = p.leaf.grad
    assert bool(torch.isfinite(g).all()) and float(g[0].abs().sum()) > 0
    assert float(g[1].abs().sum()) == 0  # rows are independent images


def test_pixel_is_the_mean_plus_its_leaf():
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    x0 = 0.1 * torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(Pixel(x0, mean).image(), x0 + mean)


def test_fft_zero_spectrum_is_grey_and_colours_are_decorrelated():
    p = FFT(torch.zeros(1, 3, 16, 9, 2), (16, 16))
    torch.testing.assert_close(p.image(), torch.full((1, 3, 16, 16), 0.5))
    m = color_matrix()
    assert float(m.norm(dim=0).max()) == pytest.approx(1.0)
    # A unit DC value in the first decorrelated channel gives RGB in the ratio of the first column.
    start = torch.zeros(1, 3, 16, 9, 2)
    start[0, 0, 0, 0, 0] = 1.0
    rgb = torch.logit(FFT(start, (16, 16)).image()[0, :, 0, 0])
    torch.testing.assert_close(rgb / rgb[0], m[:, 0] / m[0, 0], atol=1e-4, rtol=0)


def test_maco_optimises_the_phase_only():
    """After updates, the spectrum of the image before colour and sigmoid still has the photos'
    magnitude (up to the per-image standardisation): only the phase moved."""
    p = make_param("maco", 2, SIZE, seed=3)
    with torch.no_grad():
        p.leaf.add_(torch.randn_like(p.leaf))
        img = p.image()
    t = torch.logit(img.clamp(1e-6, 1 - 1e-6))
    t = torch.einsum("bchw,dc->bdhw", t, torch.linalg.inv(color_matrix())) / p.gain
    mag = torch.fft.rfft2(t).abs()[..., 1:-1]  # columns 0 and W/2 are folded by irfft
    ratio = mag / photo_magnitude(SIZE)[None, ..., 1:-1]
    assert float((ratio / ratio.mean((1, 2, 3), keepdim=True) - 1).abs().max()) < 0.02


def test_maco_starts_like_a_photo_and_fft_flatter():
    maco = spectral_slope(make_param("maco", 4, (224, 224)).image().detach())
    fft = spectral_slope(make_param("fft", 4, (224, 224)).image().detach())
    assert bool(((maco < -2.4) & (maco > -3.2)).all()), maco  # photos: -2.7 (bench/maco_spectrum.py)
    assert bool((fft > maco + 0.3).all()), (fft, maco)


def test_photo_magnitude_resamples_and_falls_with_frequency():
    m = photo_magnitude((224, 224))
    assert m.shape == (3, 224, 113)
    small = photo_magnitude((40, 60))
    assert small.shape == (3, 40, 31) and bool((small > 0).all())
    assert bool((small[:, 1, 1] > small[:, 10, 15]).all())  # low frequencies carry more


def test_a_row_starts_the_same_in_any_batch():
    whole = make_param("maco", 3, SIZE, seed=1)
    third = make_param("maco", 1, SIZE, seed=1, first_row=2)
    assert torch.equal(whole.leaf[2], third.leaf[0])
    assert not torch.equal(whole.leaf[0], whole.leaf[1])


def test_unknown_kind_and_wrong_shapes_raise():
    with pytest.raises(fv.FastvizError, match="param"):
        make_param("wavelet", 1, SIZE)
    with pytest.raises(fv.FastvizError, match="param"):
        Maco(torch.zeros(1, 3, 48, 64), SIZE)


def tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return fv.Model(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32, labels=[str(i) for i in range(5)])


@pytest.mark.parametrize("param", ["fft", "maco"])
def test_the_loop_raises_the_score_on_each_param(param):
    m = tiny()
    r = fv.class_model(m, [1, 3], steps=40, param=param, lr=0.5, transforms=None)
    assert r.images.shape == (2, 3, 32, 32) and r.info["param"] == param
    assert 0 <= float(r.images.min()) and float(r.images.max()) <= 1
    # Random weights: logits move little (measured +0.1 to +0.4 over 40 steps).
    assert bool((r.history[-1] > r.history[0] + 0.05).all()), r.history[[0, -1]]


def test_the_yosinski_step_is_for_pixels_only():
    with pytest.raises(fv.FastvizError, match="reg"):
        fv.class_model(tiny(), [1], steps=1, param="maco", reg=fv.Yosinski())
    with pytest.raises(fv.FastvizError, match="start"):
        fv.render_objective(tiny(), fv.class_score([1]), 1, steps=1, param="fft", start=torch.rand(1, 3, 32, 32))
    r = fv.class_model(tiny(), [1], steps=2, param="fft", reg=NONE)
    assert r.info["param"] == "fft"


def test_views_run_k_network_rows_per_image():
    m = tiny()
    seen = []
    h = m.module[0].register_forward_hook(lambda mod, i, o: seen.append(o.shape[0]))
    try:
        fv.class_model(m, [1, 2], steps=2, param="maco", transforms=fv.Transforms(crops=3, crop=(0.5, 1.0)))
    finally:
        h.remove()
    assert seen[-1] == 6
