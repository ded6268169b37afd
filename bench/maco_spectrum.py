"""Make fastviz/data/maco_spectrum.npy: the mean magnitude spectrum of natural photos for MACO.

No ImageNet offline, so the spectrum comes from the colour photos that ship with scikit-image
(astronaut, chelsea, coffee, rocket) and scikit-learn (china, flower): 6 photos. From each, square
crops of 100%, 70% and 50% of the short side on a 3 x 3 grid of positions (1 + 9 + 9 = 19 crops,
the 100% crop once: 114 crops in all), resized to 224 x 224 with antialiasing, centred and turned
into Lucid's decorrelated colour channels (the inverse of `fastviz.param.color_matrix`), then
|rfft2| per channel, averaged over the crops. Stored as float16 log-magnitude, (3, 224, 113).

    .venv/bin/python bench/maco_spectrum.py   # prints the spectral slope of the photos
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastviz.param import color_matrix, photo_magnitude, spectral_slope, _photo_log_magnitude

SIZE = 224
OUT = Path(__file__).resolve().parents[1] / "fastviz" / "data" / "maco_spectrum.npy"


def photos() -> list[np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    ims = [getattr(sd, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    return ims + list(load_sample_images().images)


def crops(im: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(im).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    out = []
    for frac in (1.0, 0.7, 0.5):
        s = int(min(h, w) * frac)
        ys = [(h - s) // 2] if frac == 1.0 else [0, (h - s) // 2, h - s]
        xs = [(w - s) // 2] if frac == 1.0 else [0, (w - s) // 2, w - s]
        for y in ys:
            for xx in xs:
                c = x[:, :, y:y + s, xx:xx + s]
                out.append(F.interpolate(c, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def main() -> None:
    x = torch.cat([crops(im) for im in photos()])  # (114, 3, 224, 224)
    inv = torch.linalg.inv(color_matrix())
    t = torch.einsum("bchw,dc->bdhw", x - x.mean((2, 3), keepdim=True), inv)
    mag = torch.fft.rfft2(t).abs().mean(0)  # (3, 224, 113)
    np.save(OUT, mag.clamp_min(1e-6).log().numpy().astype(np.float16))
    _photo_log_magnitude.cache_clear()
    print(f"{x.shape[0]} crops of 6 photos -> {OUT} ({OUT.stat().st_size} bytes)")
    print(f"spectral slope of the crops: median {float(spectral_slope(x).median()):.2f}")
    assert torch.allclose(photo_magnitude((SIZE, SIZE)).log(), mag.log(), atol=0.01)


if __name__ == "__main__":
    main()
