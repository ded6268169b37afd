"""Transforms: one affine warp per row into a fixed buffer; exact where it can be."""

import pytest
import torch

import fastviz as fv
from fastviz.transforms import Transforms, affine, as_transforms, warp


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_zero_degree_scale_one_is_the_identity():
    x = torch.rand(2, 3, 17, 31)
    m = affine(torch.zeros(2), torch.ones(2), torch.zeros(2, 2), aspect=31 / 17)
    torch.testing.assert_close(warp(x, m, (17, 31)), x, atol=1e-5, rtol=0)  # bilinear at pixel centres
    t = Transforms()
    assert t.identity
    torch.testing.assert_close(t(x, gen()), x, atol=1e-5, rtol=0)


def test_a_quarter_turn_is_rot90():
    """+90 degrees (counter-clockwise as seen) maps pixel centres onto pixel centres: equal to
    torch.rot90, and a bright block right of the centre lands above it."""
    x = torch.rand(1, 3, 32, 32)
    m = affine(torch.tensor([90.0]), torch.ones(1), torch.zeros(1, 2))
    torch.testing.assert_close(warp(x, m, (32, 32)), torch.rot90(x, 1, (-2, -1)), atol=1e-4, rtol=0)
    pattern = torch.zeros(1, 1, 32, 32)
    pattern[..., 14:18, 24:28] = 1  # right of the centre
    out = warp(pattern, m, (32, 32), fill=0.0)[0, 0]
    ys, xs = (out > 0.5).nonzero(as_tuple=True)
    assert ys.tolist() and set(ys.tolist()) == set(range(4, 8)) and set(xs.tolist()) == set(range(14, 18))


def test_a_rotation_keeps_pixels_square_on_a_wide_image():
    """On a 2:1 image a 90-degree turn of a centred 8x8 square is the same 8x8 square."""
    x = torch.zeros(1, 1, 32, 64)
    x[..., 12:20, 28:36] = 1
    out = warp(x, affine(torch.tensor([90.0]), torch.ones(1), torch.zeros(1, 2), aspect=2.0), (32, 64), fill=0.0)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_pad_shrinks_the_picture_into_a_fill_border():
    x = torch.ones(1, 3, 40, 40)
    out = Transforms(pad=10)(x, gen())  # the 40 px image drawn at 40 * 40 / 60 px, 0.5 around
    assert float(out[..., 0, 0].max()) == pytest.approx(0.5)
    assert float(out[..., 20, 20].min()) == pytest.approx(1.0)


def test_views_come_from_their_own_row_and_stay_inside():
    """k views per image: rows i*k..(i+1)*k-1 read image i; crops stay inside the image."""
    x = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 3, 24, 24) / 10
    out = Transforms(crops=4, crop=(0.3, 1.0))(x, gen(), (16, 16))
    assert out.shape == (12, 3, 16, 16)
    expect = (torch.arange(3).float() / 10).repeat_interleave(4)
    torch.testing.assert_close(out.amin((1, 2, 3)), expect, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.amax((1, 2, 3)), expect, atol=1e-6, rtol=0)


def test_rows_are_independent():
    x = torch.rand(3, 3, 32, 32)
    t = Transforms(pad=4, jitter=3, scale=(0.9, 1.1), rotate=10, crops=2, crop=(0.6, 1.0))
    a = t(x, gen(5))
    y = x.clone()
    y[1] = torch.rand(3, 32, 32)
    b = t(y, gen(5))
    assert torch.equal(a[:2], b[:2]) and torch.equal(a[4:], b[4:])
    assert not torch.equal(a[2:4], b[2:4])


def test_random_parameters_come_from_the_generator():
    x = torch.rand(2, 3, 32, 32)
    t = Transforms.lucent()
    assert torch.equal(t(x, gen(1)), t(x, gen(1)))
    assert not torch.equal(t(x, gen(1)), t(x, gen(2)))
    views = t(x, gen(1))
    assert float((views - x).abs().mean()) > 0.05  # it did transform


def test_noise_has_its_std():
    x = torch.full((4, 3, 64, 64), 0.5)
    out = Transforms(noise=0.05)(x, gen())
    assert float((out - x).std()) == pytest.approx(0.05, rel=0.05)


def test_gradients_flow_through_the_warp():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    Transforms.maco()(x, gen()).square().sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("kw,name", [(dict(crops=0), "crops"), (dict(pad=-1), "pad"), (dict(crop=(0, 1)), "crop"),
                                     (dict(scale=(1.2, 0.8)), "scale"), (dict(noise=-1.0), "noise"),
                                     (dict(rotate="x"), "rotate")])
def test_bad_fields_name_themselves(kw, name):
    with pytest.raises(fv.FastvizError, match=name):
        Transforms(**kw)


def test_as_transforms():
    assert as_transforms(None) is None and as_transforms("maco").crops == 4
    assert as_transforms("lucent").pad == 12
    with pytest.raises(fv.FastvizError, match="transforms"):
        as_transforms("big")
