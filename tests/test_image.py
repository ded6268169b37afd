import numpy as np
import pytest
import torch
from PIL import Image

import fastviz as fv


def test_normalize_modes():
    t = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])
    torch.testing.assert_close(fv.normalize(t, "minmax"), torch.tensor([[[0.0, 0.5], [0.75, 1.0]]]))
    s = fv.normalize(t, "signed", q=1.0)
    torch.testing.assert_close(s, torch.tensor([[[0.0, 0.5], [0.75, 1.0]]]))
    with pytest.raises(fv.FastvizError, match="mode: expected"):
        fv.normalize(t, "log")


def test_heatmap_and_overlay():
    m = torch.zeros(8, 8)
    m[0, 0] = 1.0
    h = fv.heatmap(m)  # jet: low -> blue, high -> red
    assert h.shape == (3, 8, 8)
    assert h[0, 0, 0] > 0.4 and h[2, 0, 0] < 0.1 and h[2, 4, 4] > 0.4 and h[0, 4, 4] < 0.1
    img = torch.full((3, 16, 16), 0.5)
    o = fv.overlay(img, m, alpha=0.5)  # the map is resized to the image
    assert o.shape == (3, 16, 16) and not torch.allclose(o, img)
    with pytest.raises(fv.FastvizError, match="alpha"):
        fv.overlay(img, m, alpha=2)


def test_grid_layout_pixel_for_pixel():
    imgs = torch.stack([torch.full((3, 2, 3), float(i) / 4) for i in range(5)])
    g = fv.grid(imgs, nrow=3, padding=1, pad_value=1.0)
    assert g.shape == (3, 2 * 3 + 1, 3 * 4 + 1)
    assert torch.all(g[:, 1:3, 1:4] == 0.0) and torch.all(g[:, 1:3, 5:8] == 0.25)
    assert torch.all(g[:, 4:6, 5:8] == 1.0)  # image 4 (value 1.0) at row 1, column 1
    assert torch.all(g[:, 4:6, 9:12] == 1.0)  # the empty cell is padding
    assert torch.all(g[:, 0] == 1.0)


def test_save_image_roundtrip(tmp_path):
    t = torch.rand(3, 5, 7)
    p = fv.save_image(t, tmp_path / "sub" / "a.png")
    back = np.asarray(Image.open(p), dtype=np.float32) / 255
    assert np.abs(back - t.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(fv.FastvizError, match="image: expected"):
        fv.save_image(torch.rand(2, 5, 7), tmp_path / "b.png")


def test_minmax_per_row_and_constant_rows():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = fv.image.minmax(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))
    assert torch.equal(fv.image.minmax(maps, constant=0.5)[1], torch.full((2, 2), 0.5))
    tiny = torch.tensor([[0.0, 1e-30]])  # a span far below any epsilon still reaches 1
    torch.testing.assert_close(fv.image.minmax(tiny), torch.tensor([[0.0, 1.0]]))
