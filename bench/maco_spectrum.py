"""Make fastviz/data/maco_spectrum.npy: the mean magnitude spectrum of natural photos for MACO.

No ImageNet offline, so the spectrum comes from the colour photos that ship with scikit-image
(astronaut, chelsea, coffee, rocket) and scikit-learn (china, flower): 6 photos. From each,
square crops of 100%, 70%, 50% and 35% of the short side, the smaller three on a 3 x 3 grid of
positions (1 + 9 + 9 + 9 = 28 crops a photo, 168 in all), resized to 224 x 224 with
antialiasing, centred and turned into Lucid's decorrelated colour channels (the inverse of
`fastviz.param.color_matrix`).

Each crop's spectrum is taken of its periodic component (Moisan's periodic-plus-smooth
decomposition, `fastviz.picture_stats.periodic_component`): the FFT of a crop as it is treats
the crop as a tile that repeats, and the jump from one border to the opposite one puts a bright
cross on the frequency axes. A picture built on that spectrum inherits the cross as fine
horizontal and vertical stripes across the whole image (the spectrum shipped before
2026-12-03). |rfft2| per channel, averaged over the crops, stored as float16 log-magnitude,
(3, 224, 113).

It also prints the photos' statistics that docs/quality.md measures pictures against (the
crops' median and quartiles): stripes (`axis_power`), contrast, colourfulness, spectral slope.

    .venv/bin/python bench/maco_spectrum.py
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastviz.param import _photo_log_magnitude, color_matrix, photo_magnitude
from fastviz.picture_stats import axis_power, colourfulness, contrast, periodic_component, spectral_slope

SIZE = 224
SCALES = (1.0, 0.7, 0.5, 0.35)
OUT = Path(__file__).resolve().parents[1] / "fastviz" / "data" / "maco_spectrum.npy"


def photos() -> list[np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    ims = [getattr(sd, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    return ims + list(load_sample_images().images)


def crops(im: np.ndarray, scales=SCALES) -> torch.Tensor:
    """(n, 3, 224, 224) square crops in [0, 1]: the whole short side once, smaller ones on a 3 x 3 grid."""
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    out = []
    for frac in scales:
        s = int(min(h, w) * frac)
        ys = [(h - s) // 2] if frac == 1.0 else [0, (h - s) // 2, h - s]
        xs = [(w - s) // 2] if frac == 1.0 else [0, (w - s) // 2, w - s]
        for y in ys:
            for xx in xs:
                c = x[:, :, y:y + s, xx:xx + s]
                out.append(F.interpolate(c, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def photo_crops(scales=SCALES) -> torch.Tensor:
    """(168, 3, 224, 224): every crop of every photo."""
    return torch.cat([crops(im, scales) for im in photos()])


def magnitude(x: torch.Tensor, periodic: bool = True) -> torch.Tensor:
    """(3, 224, 113) mean |rfft2| of the crops' periodic components, decorrelated colours
    (periodic=False: of the crops as they are, the spectrum shipped before 2026-12-03)."""
    inv = torch.linalg.inv(color_matrix())
    t = torch.einsum("bchw,dc->bdhw", x - x.mean((2, 3), keepdim=True), inv)
    return torch.fft.rfft2(periodic_component(t) if periodic else t).abs().mean(0)


def photo_statistics(x: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """{name: (first quartile, median, third quartile)} over the crops."""
    q = torch.tensor([0.25, 0.5, 0.75])
    stats = {"stripes (axis_power)": axis_power(x), "contrast (pixel std)": contrast(x),
             "colourfulness": colourfulness(x), "spectral slope": spectral_slope(x)}
    return {k: tuple(float(v) for v in torch.quantile(s, q)) for k, s in stats.items()}


def main() -> None:
    x = photo_crops()
    mag = magnitude(x)
    np.save(OUT, mag.clamp_min(1e-6).log().numpy().astype(np.float16))
    _photo_log_magnitude.cache_clear()
    print(f"{x.shape[0]} crops of 6 photos -> {OUT} ({OUT.stat().st_size} bytes)")
    for name, (lo, mid, hi) in photo_statistics(x).items():
        print(f"photos' {name}: median {mid:.3f}, quartiles {lo:.3f} .. {hi:.3f}")
    assert torch.allclose(photo_magnitude((SIZE, SIZE)).log(), mag.clamp_min(1e-6).log(), atol=0.01)


if __name__ == "__main__":
    main()
