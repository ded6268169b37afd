"""The validation layer (fastviz/checks.py) and the root causes of the foreign errors a fuzz run found, one case each.

Each bad call must raise FastvizError naming the argument, quickly, and leave the model as it
was; each reasonable input (numpy / 0-d tensor indices, int32 index tensors, uint8 / float16 /
float64 / channels_last / non-contiguous images, 16-bit / gray / RGBA / palette files) must run.
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz import checks


class Tiny(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def m():
    torch.manual_seed(0)
    return fv.Model(Tiny(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16)


X = torch.rand(2, 3, 16, 16)


def raises(call, name: str):
    """call() raises FastvizError whose message starts with / contains `name:`."""
    with pytest.raises(fv.FastvizError) as e:
        call()
    assert f"{name}" in str(e.value), str(e.value)
    return str(e.value)


# -- rule 1 under failures ---------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda m: fv.class_model(m, [1], steps=1, device="meta"),
    lambda m: fv.feature(m, "features.2", [0], steps=1, device="meta"),
    lambda m: fv.deepdream(m, X[:1], "features.2", octaves=1, steps_per_octave=1, device="meta"),
    lambda m: fv.invert(m, X[:1], "features.2", steps=1, device="meta"),
    lambda m: fv.features(m, X, device="meta"),
    lambda m: fv.embed(m, torch.rand(4, 3, 16, 16), method="pca", device="meta"),
], ids=["class_model", "feature", "deepdream", "invert", "features", "embed"])
def test_meta_device_is_refused_and_the_network_stays(m, snapshot, call):
    snap = snapshot(m.module)
    w = m.module.fc.weight
    raises(lambda: call(m), "device")
    snap.assert_unchanged()
    assert m.module.fc.weight is w and w.device.type == "cpu" and bool(w.isfinite().all())


def test_on_device_gives_back_the_very_tensors_even_from_meta(m, monkeypatch):
    """The move back assigns the saved tensors: it works where copying back cannot (meta)."""
    from fastviz import hooks

    monkeypatch.setattr(checks, "device", lambda d, name="device": torch.device(d))
    before = {k: (v, v.data_ptr()) for k, v in m.module.state_dict(keep_vars=True).items()}
    m.module.fc.weight.grad = torch.ones_like(m.module.fc.weight)
    with pytest.raises(KeyboardInterrupt):
        with hooks.on_device(m, "meta"):
            assert m.module.fc.weight.device.type == "meta"
            raise KeyboardInterrupt
    for k, v in m.module.state_dict(keep_vars=True).items():
        assert v is before[k][0] and v.data_ptr() == before[k][1], k
    assert m.module.fc.weight.grad is not None and float(m.module.fc.weight.grad.sum()) == 80


def test_keyboard_interrupt_from_progress_restores_the_model(m, snapshot):
    snap = snapshot(m.module)

    def progress(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fv.class_model(m, [1, 2], steps=5, progress=progress)
    snap.assert_unchanged()
    with pytest.raises(KeyboardInterrupt):
        fv.deepdream(m, X[:1], "features.2", octaves=2, steps_per_octave=3, progress=progress)
    snap.assert_unchanged()


def test_keyboard_interrupt_from_a_forward_hook_restores_the_model(m, snapshot):
    calls = []

    def hook(_m, _i, _o):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    handle = m.module.features[2].register_forward_hook(hook)
    snap = snapshot(m.module)  # the user's own hook is part of the state to keep
    m.module.train()
    with pytest.raises(KeyboardInterrupt):
        fv.feature(m, "features.2", [0, 1], steps=5)
    snap.assert_unchanged()
    assert m.module.training and len(m.module.features[2]._forward_hooks) == 1
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        fv.smoothgrad(m, X, n=4, batch_size=2)
    snap.assert_unchanged()
    handle.remove()


# -- indices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [3, np.int64(3), np.int32(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)],
                         ids=["int", "np.int64", "np.int32", "tensor0d", "tensor0d_int32"])
def test_integer_scalars_are_indices_everywhere(m, index):
    a = fv.class_model(m, index, steps=2)
    b = fv.class_model(m, [3], steps=2)
    torch.testing.assert_close(a.images, b.images)
    assert fv.feature(m, "features.2", index, steps=1).images.shape[0] == 1
    torch.testing.assert_close(fv.saliency(m, X, index), fv.saliency(m, X, 3))
    assert fv.Neuron("features.2", channel=index).channel == 3


@pytest.mark.parametrize("classes", [torch.tensor([1, 2], dtype=torch.int32), np.array([1, 2]), range(1, 3)])
def test_index_tensors_arrays_and_ranges(m, classes):
    torch.testing.assert_close(fv.class_model(m, classes, steps=2).images,
                               fv.class_model(m, [1, 2], steps=2).images)
    torch.testing.assert_close(fv.saliency(m, X, classes), fv.saliency(m, X, [1, 2]))


@pytest.mark.parametrize("call,name,match", [
    (lambda m: fv.class_model(m, "12", steps=1), "classes", "string"),
    (lambda m: fv.class_model(m, [1.5], steps=1), "classes", "expected an int"),
    (lambda m: fv.class_model(m, [10], steps=1), "classes", r"class index 10 is out of range for 10 classes \(0-9\)"),
    (lambda m: fv.saliency(m, X, 1j), "target", "expected an int"),
    (lambda m: fv.saliency(m, X, 10 ** 30), "target", "out of range"),
    (lambda m: fv.saliency(m, X, True), "target", "expected an int"),
    (lambda m: fv.gradcam(m, X, [1, 2, 3]), "target", "one class per image"),
    (lambda m: fv.class_model(m, [1], steps=1, seed=2 ** 70), "seed", "2**63"),
    (lambda m: fv.class_model(m, [1], steps=1, seed=-1), "seed", ""),
    (lambda m: fv.smoothgrad(m, X, n=2, seed=2 ** 70), "seed", ""),
    (lambda m: fv.predict(m, X, k=0), "k", ""),
    (lambda m: fv.predict(m, X, k=11), "k", ""),
    (lambda m: fv.Neuron("features.2", channel=None), "Neuron.channel", ""),
    (lambda m: fv.Neuron("features.2", channel=1.0), "Neuron.channel", ""),
])
def test_bad_indices_name_the_argument(m, snapshot, call, name, match):
    snap = snapshot(m.module)
    msg = raises(lambda: call(m), name)
    assert match in msg or __import__("re").search(match, msg), msg
    snap.assert_unchanged()


# -- images ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("convert", [
    lambda x: x.double(), lambda x: x.half(), lambda x: x.bfloat16(),
    lambda x: x.contiguous(memory_format=torch.channels_last),
    lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),  # non-contiguous, same values
    lambda x: x[:, :, ::1, :],
], ids=["float64", "float16", "bfloat16", "channels_last", "non_contiguous", "view"])
def test_image_dtypes_and_layouts_run(m, convert):
    x = convert(X)
    ref = fv.saliency(m, x.float())  # the same values in float32
    torch.testing.assert_close(fv.saliency(m, x), ref)
    assert fv.predict(m, x, k=2)[0][0][0] == fv.predict(m, x.float(), k=2)[0][0][0]
    r = fv.render_objective(m, fv.class_score([1, 2]), 2, steps=2, start=x)
    assert r.images.shape == (2, 3, 16, 16)


def test_uint8_images_are_divided_by_255(m):
    x8 = (X * 255).round().to(torch.uint8)
    torch.testing.assert_close(fv.saliency(m, x8), fv.saliency(m, x8.float() / 255))


@pytest.mark.parametrize("bad,match", [
    (lambda x: x.masked_fill(x > 0.9, float("nan")), "NaN or inf"),
    (lambda x: x.masked_fill(x > 0.9, float("inf")), "NaN or inf"),
    (lambda x: (x - 0.5) / 0.25, r"pixels must be in \[0, 1\]"),
    (lambda x: x.long(), "dtype torch.int64"),
    (lambda x: x.bool(), "dtype torch.bool"),
    (lambda x: x[:, :2], "3 channels"),
    (lambda x: x[:0], "empty"),
    (lambda x: x.numpy(), "numpy"),
    (lambda x: torch.zeros(1, 3, 1, 1).expand(1, 3, 60000, 60000), "too large"),
])
def test_bad_images_are_refused_fast(m, snapshot, bad, match):
    snap = snapshot(m.module)
    x = bad(X)
    for call in (lambda: fv.predict(m, x), lambda: fv.integrated_gradients(m, x, points=2),
                 lambda: fv.gradcam(m, x), lambda: fv.deepdream(m, x, "features.2")):
        t = time.perf_counter()
        msg = raises(call, "x" if call.__code__.co_names[-1] != "deepdream" else "photo")
        assert __import__("re").search(match, msg), msg
        assert time.perf_counter() - t < 2.0  # refused before any work (generous on a shared CPU)
    snap.assert_unchanged()


def test_out_of_range_pixels_pass_for_a_bare_module_and_slack_is_clamped(m):
    net = m.module
    x = torch.randn(2, 3, 16, 16) * 3
    assert fv.saliency(net, x).shape == (2, 16, 16)  # a bare nn.Module takes what it takes
    edge = X.clone()
    edge[0, 0, 0, 0] = 1.0005
    torch.testing.assert_close(fv.saliency(m, edge), fv.saliency(m, edge.clamp(0, 1)))


def test_nan_and_inf_elsewhere(m):
    raises(lambda: fv.integrated_gradients(m, X, baseline=float("nan")), "baseline")
    raises(lambda: fv.integrated_gradients(m, X, baseline=torch.full((3, 16, 16), float("inf"))), "baseline")
    raises(lambda: fv.Model(m.module, mean=(0.5, float("nan"), 0.5), std=(0.5,) * 3), "mean")
    raises(lambda: fv.Model(m.module, mean=(0.5,) * 3, std=(0.5, 0.0, 0.5)), "std")
    raises(lambda: fv.Model(m.module, mean=(0.5,) * 3, std=(0.5,) * 2), "mean and std")
    raises(lambda: fv.Model(m.module, input_size=0), "input_size")
    raises(lambda: fv.Model(m.module, labels="abc"), "labels")
    bad_labels = fv.Model(m.module, mean=(0.5,) * 3, std=(0.5,) * 3, labels=["a", "b"])
    raises(lambda: fv.predict(bad_labels, X, k=1), "labels")
    raises(lambda: fv.smoothgrad(m, X, noise=float("inf")), "noise")


# -- devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["nope", "cuda:7", 3.5, "meta"])
def test_device_strings_are_validated(m, snapshot, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    snap = snapshot(m.module)
    for call in (lambda: fv.class_model(m, [1], steps=1, device=device),
                 lambda: fv.features(m, X, device=device), lambda: fv.load_model("resnet18", weights=None, device=device)):
        raises(call, "device")
    snap.assert_unchanged()


# -- networks that return more than a tensor -------------------------------------------------------
class Heads(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.body, self.kind = Tiny(), kind

    def forward(self, x):
        y = self.body(x)
        if self.kind == "tuple":
            return y, y.detach() * 0
        return {"logits": y, "aux": y * 0}


@pytest.mark.parametrize("kind,output", [("tuple", 0), ("dict", "logits"), ("dict", lambda o: o["logits"])])
def test_output_selector(kind, output):
    torch.manual_seed(0)
    net = Heads(kind)
    plain = fv.Model(net.body, mean=(0.5,) * 3, std=(0.5,) * 3)
    bare = fv.Model(net, mean=(0.5,) * 3, std=(0.5,) * 3)
    msg = raises(lambda: fv.saliency(bare, X, 1), "output")
    assert "output=0" in msg
    raises(lambda: fv.class_model(bare, [1], steps=1), "output")
    sel = fv.Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, output=output)
    torch.testing.assert_close(fv.saliency(sel, X, 1), fv.saliency(plain, X, 1))
    torch.testing.assert_close(fv.scorecam(sel, X, 1, layer="body.features.2"),
                               fv.scorecam(plain, X, 1, layer="features.2"))
    torch.testing.assert_close(fv.class_model(sel, [1], steps=2).images, fv.class_model(plain, [1], steps=2).images)
    assert fv.predict(sel, X, k=1)[0][0][0] == fv.predict(plain, X, k=1)[0][0][0]


def test_output_selector_that_does_not_fit():
    net = Heads("dict")
    raises(lambda: fv.saliency(fv.Model(net, output="nope"), X), "output")
    raises(lambda: fv.saliency(fv.Model(Heads("tuple"), output=5), X), "output")
    raises(lambda: fv.Model(net, output=1.5), "output")


# -- synthesis and picture arguments ----------------------------------------------------------------
@pytest.mark.parametrize("call,name", [
    (lambda m: fv.class_model(m, [1], steps=1, lr=float("nan")), "lr"),
    (lambda m: fv.class_model(m, [1], steps=1, lr=-1), "lr"),
    (lambda m: fv.class_model(m, [1], steps=1, l2=-1), "l2"),
    (lambda m: fv.class_model(m, [1], steps=1, reg="yosinski"), "reg"),
    (lambda m: fv.class_model(m, [1], steps=1, optimizer="adamw"), "optimizer"),
    (lambda m: fv.class_model(m, [1], steps=1, size=10 ** 6), "size"),
    (lambda m: fv.class_model(m, [1], steps=1, size=(16, 16, 3)), "size"),
    (lambda m: fv.class_model(m, [1], steps=1, progress=5), "progress"),
    (lambda m: fv.class_model(m, [1], steps=1, snapshot_every=0), "snapshot_every"),
    (lambda m: fv.class_model(m, [1], steps=1, jiter=2), "jiter"),
    (lambda m: fv.class_model(m, [1], steps=10 ** 12), "steps"),
    (lambda m: fv.class_model(m, [1], steps=1.5), "steps"),
    (lambda m: fv.class_model(m, list(range(10)) * 10 ** 4, steps=10 ** 3, size=1024), "batch_size"),
    (lambda m: fv.deepdream(m, X[:1], "features.2", octave_scale=0.5), "octave_scale"),
    (lambda m: fv.deepdream(m, X[:1], "features.2", steps_per_octave=0), "steps_per_octave"),
    (lambda m: fv.invert(m, X[:1], "features.2", tv_weight=float("nan")), "tv_weight"),
    (lambda m: fv.invert(m, X[:1], "features.2", alpha=0), "alpha"),
    (lambda m: fv.render_objective(m, "class", 1, steps=1), "objective"),
    (lambda m: fv.render_objective(m, fv.class_score([1, 2]), 3, steps=1), "rows"),
    (lambda m: fv.render_objective(m, fv.class_score([1]), 1, steps=1, start=torch.rand(1, 3, 8, 8) * 3), "start"),
    (lambda m: fv.grid(torch.rand(4, 3, 8, 8), nrow=0), "nrow"),
    (lambda m: fv.grid(torch.rand(4, 3, 8, 8), scale=10 ** 6), "scale"),
    (lambda m: fv.normalize(torch.rand(3, 8, 8), "percentile", q=1.5), "q"),
    (lambda m: fv.overlay(torch.rand(3, 8, 8), torch.rand(8, 8), alpha=float("nan")), "alpha"),
    (lambda m: fv.overlay([1], torch.rand(8, 8)), "image"),
    (lambda m: fv.save_image(torch.rand(3, 8, 8), "x.xyz"), "path"),
    (lambda m: fv.filter_grid(m, scale=0), "scale"),
    (lambda m: fv.embed(m, torch.rand(4, 3, 16, 16), method="pca", seed=2 ** 40), "seed"),
])
def test_synthesis_and_picture_arguments(m, snapshot, call, name):
    snap = snapshot(m.module)
    t = time.perf_counter()
    raises(lambda: call(m), name)
    assert time.perf_counter() - t < 2.0
    snap.assert_unchanged()


def test_scatter_radius(m):
    e = fv.embed(m, torch.rand(4, 3, 16, 16), method="pca")
    raises(lambda: e.scatter(radius=-1), "radius")
    assert e.scatter(size=64).shape[0] == 3


def test_float64_start_renders(m):
    start = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    r = fv.render_objective(m, fv.class_score([1, 2]), 2, steps=3, start=start)
    assert r.images.dtype == torch.float32 and (r.images - start.float()).abs().amax() > 0


# -- files -----------------------------------------------------------------------------------------
def _png(path, width: int, height: int, bit_depth: int = 8, colour: int = 0, raw: bytes = b"\0") -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_grayscale_png_keeps_its_values(tmp_path):
    """A 0..65535 ramp used to load with mean 0.97 (clipped at 255 in an 8-bit conversion)."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    x = fv.load_image(tmp_path / "ramp16.png", size=None)
    assert x.shape == (3, 32, 64)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(ramp[0] / 65535.0).float(), atol=1e-6, rtol=0)
    assert abs(float(x.mean()) - 0.5) < 1e-3
    resized = fv.load_image(tmp_path / "ramp16.png", size=16)
    assert resized.shape == (3, 16, 16) and abs(float(resized.mean()) - 0.5) < 0.02


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "RGB"])
def test_8_bit_modes_load(tmp_path, mode):
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    im = rgb.convert(mode)
    im.save(tmp_path / "a.png")
    x = fv.load_image(tmp_path / "a.png", size=None)
    assert x.shape == (3, 20, 30) and 0.2 < float(x.mean()) < 0.8


def test_bomb_and_corrupt_files(tmp_path):
    _png(tmp_path / "bomb.png", 30000, 30000)
    t = time.perf_counter()
    raises(lambda: fv.load_images(tmp_path / "bomb.png"), "path")
    assert time.perf_counter() - t < 1.0
    _png(tmp_path / "corrupt.png", 4, 4, raw=b"\0\1\2")
    raises(lambda: fv.load_image(tmp_path / "corrupt.png"), "path")
    (tmp_path / "empty.png").write_bytes(b"")
    raises(lambda: fv.load_image(tmp_path / "empty.png"), "path")
    raises(lambda: fv.load_images([tmp_path / "bomb.png", 3]), "paths")
    raises(lambda: fv.load_images(tmp_path, size=0), "size")
    raises(lambda: fv.load_images(tmp_path, crop=float("nan")), "crop")


# -- the last bad inputs: each reached torch or Python with a foreign error ----------------------
class Unpadded(nn.Module):
    """Unpadded 3x3 convolutions: the smallest image it takes is 7x7."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_images_smaller_than_the_network_takes_say_the_smallest_side():
    m = fv.Model(Unpadded(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16)
    for side in (1, 6):
        with pytest.raises(fv.FastvizError, match=r"x: images of .* smaller than Unpadded takes.* 7x7"):
            fv.predict(m, torch.rand(1, 3, side, side))
    with pytest.raises(fv.FastvizError, match=r"images_or_folder: .*smallest it takes is 7x7"):
        fv.features(m, torch.rand(2, 3, 4, 4))
    assert len(fv.predict(m, torch.rand(2, 3, 7, 7), k=1)) == 2  # the smallest runs


def test_cams_on_a_1x1_image_blame_x_not_layer(m):
    for f in (fv.gradcam, fv.guided_gradcam, fv.layercam, fv.scorecam):
        with pytest.raises(fv.FastvizError, match=r"^x: at 1x1 pixels .* give larger images"):
            f(m, torch.rand(2, 3, 1, 1))


def test_features_of_a_nested_list_of_numbers(m):
    for f in (fv.features, lambda m, v: fv.embed(m, v, method="pca")):
        with pytest.raises(fv.FastvizError, match=r"images_or_folder: .*a list holding list.*torch.tensor"):
            f(m, [[0.5, 0.25], [0.1, 0.2]])


def test_load_model_name_and_weights(tmp_path):
    with pytest.raises(fv.FastvizError, match=r"^name: expected a model name \(str\), got list"):
        fv.load_model(["resnet18"], weights=None)
    with pytest.raises(fv.FastvizError, match=r"^weights: expected 'default', a path .* got int 3"):
        fv.load_model("resnet18", weights=3)
    path = tmp_path / "alexnet.pt"
    import torchvision
    torch.save(torchvision.models.alexnet().state_dict(), path)
    with pytest.raises(fv.FastvizError, match=r"^weights: this file is for a different network than ResNet: "
                                              r"122 missing keys \(e.g. 'conv1.weight'.*\), 16 unexpected"):
        fv.load_model("resnet18", weights=path)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(state, path)
    with pytest.raises(fv.FastvizError, match=r"^weights: .*differently sized network: 2 tensors have other "
                                              r"shapes \(e.g. 'fc.weight': \(10, 512\) in the file"):
        fv.load_model("resnet18", weights=path)


def test_class_model_on_a_network_that_returns_a_feature_map():
    net = nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(fv.FastvizError, match=r"^model: a class score needs \(B, classes\) .* \(1, 4, 16, 16\), "
                                              r"a feature map"):
        fv.class_model(fv.Model(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16), [1], steps=1)


def test_pictures_refuse_non_finite_values_and_4_channels():
    bad = torch.rand(2, 3, 8, 8)
    bad[0, 1, 2, 3] = float("nan")
    for call, name in ((lambda: fv.grid(bad), "images"), (lambda: fv.normalize(bad), "t"),
                       (lambda: fv.heatmap(bad[0, 1]), "m"), (lambda: fv.overlay(bad[0], torch.rand(8, 8)), "image"),
                       (lambda: fv.overlay(torch.rand(3, 8, 8), bad[0, 1] * float("inf")), "m")):
        with pytest.raises(fv.FastvizError, match=rf"^{name}: holds NaN or inf values"):
            call()
    with pytest.raises(fv.FastvizError, match=r"^image: expected 3 channels \(RGB\) or 1 \(gray\), got 4.*alpha"):
        fv.overlay(torch.rand(4, 8, 8), torch.rand(8, 8))
    assert fv.overlay(torch.rand(1, 8, 8), torch.rand(8, 8)).shape == (3, 8, 8)  # gray still blends


def test_embedding_scatter_and_neighbours_arguments(m):
    e = fv.embed(m, torch.rand(6, 3, 16, 16), method="pca")
    with pytest.raises(fv.FastvizError, match=r"^groups: expected one group per image \(a list of 6\), got int 3"):
        e.scatter(groups=3)
    with pytest.raises(fv.FastvizError, match=r"^k: expected an int, got str '5'"):
        e.neighbours(0, k="5")
    with pytest.raises(fv.FastvizError, match=r"^i: "):
        e.neighbours(True)
    assert e.neighbours(0, k=np.int64(2)).shape == (2,)
