import numpy as np
import pytest
import torch
from PIL import Image

import fastviz as fv


def test_png_jpeg_grayscale_rgba_any_size(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 255, (50, 80, 4), dtype=np.uint8)).save(tmp_path / "d.png")
    (tmp_path / "notes.txt").write_text("not an image: ignored in a folder")
    x = fv.load_images(tmp_path)
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    gray = x[2]
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


def test_centre_crop_keeps_the_centre(tmp_path):
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, 100:200] = 255  # a white band in the middle third: exactly what the crop keeps
    Image.fromarray(arr).save(tmp_path / "band.png")
    x = fv.load_image(tmp_path / "band.png", size=50)
    assert x.shape == (3, 50, 50)
    assert float(x[:, :, 2:-2].min()) > 0.95


def test_sample_photos_ship_offline(photos):  # the session fixture: fv.sample_images() once
    assert {"chelsea", "coffee", "china", "flower"} <= set(photos)


def test_bad_files(tmp_path):
    with pytest.raises(fv.FastvizError, match="path: no such file"):
        fv.load_images(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(fv.FastvizError, match="is not a readable image"):
        fv.load_images(tmp_path / "corrupt.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(fv.FastvizError, match="holds no image files"):
        fv.load_images(empty)


def test_tensor_checks():
    assert fv.load_images(torch.rand(3, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(fv.FastvizError, match=r"x: expected images \(B, C, H, W\)"):
        fv.io.check_images(torch.rand(8, 8))
    with pytest.raises(fv.FastvizError, match="x: expected 3 channels"):
        fv.io.check_images(torch.rand(1, 4, 8, 8), channels=3)
    with pytest.raises(fv.FastvizError, match="float images"):
        fv.io.check_images(torch.zeros(1, 3, 8, 8, dtype=torch.int16))
    # uint8 is taken as 0-255 (docs/reliability.md)
    torch.testing.assert_close(fv.io.check_images(torch.full((1, 3, 2, 2), 51, dtype=torch.uint8)),
                               torch.full((1, 3, 2, 2), 0.2))
