"""Inspection: filter grids equal the weights; embeddings stop early and group views of a photo."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.errors import FastvizError
from fastviz.embedding import embed
from fastviz.inspection import features, filter_grid, filters
from tiny_net import tiny_images, tiny_net


# -- filters ------------------------------------------------------------------------------
def known_conv_model() -> tuple[fv.Model, torch.Tensor]:
    conv = nn.Conv2d(3, 3, (3, 2), bias=False)
    w = torch.arange(3 * 3 * 3 * 2, dtype=torch.float32).reshape(3, 3, 3, 2) - 20.0
    w[2] = 7.0  # a constant filter
    with torch.no_grad():
        conv.weight.copy_(w)
    return fv.Model(nn.Sequential(conv, nn.ReLU())), w


def test_filters_per_filter_equal_the_weights(snapshot):
    m, w = known_conv_model()
    snap = snapshot(m.module)
    f = filters(m)
    assert f.shape == (3, 3, 3, 2)
    for i in range(2):
        expected = (w[i] - w[i].min()) / (w[i].max() - w[i].min())
        torch.testing.assert_close(f[i], expected)
    assert (f[2] == 0.5).all()  # constant: grey, not a division by zero
    snap.assert_unchanged()


def test_filters_shared_equal_the_weights():
    m, w = known_conv_model()
    f = filters(m, normalize="shared")
    torch.testing.assert_close(f, (w - w.min()) / (w.max() - w.min()))
    # one range: the first filter (the smallest weights) is darker than the second
    assert f[0].mean() < f[1].mean()


def test_filter_grid_layout_pixel_for_pixel():
    conv = nn.Conv2d(3, 5, (3, 2))
    m = fv.Model(nn.Sequential(conv))
    f = filters(m)
    g = filter_grid(m, scale=2, nrow=3, padding=2, pad_value=1.0)
    h, w = 3 * 2, 2 * 2
    assert g.shape == (3, 2 * (h + 2) + 2, 3 * (w + 2) + 2)
    covered = torch.zeros(g.shape[1:], dtype=torch.bool)
    for i in range(5):
        r, c = divmod(i, 3)
        top, left = 2 + r * (h + 2), 2 + c * (w + 2)
        expected = f[i].repeat_interleave(2, 1).repeat_interleave(2, 2)
        assert torch.equal(g[:, top:top + h, left:left + w], expected)
        covered[top:top + h, left:left + w] = True
    assert (g[:, ~covered] == 1.0).all()  # borders and the empty sixth place


def test_filter_grid_default_scale_makes_a_3x3_filter_visible(lite0, snapshot):
    snap = snapshot(lite0.module)
    f = filters(lite0)
    assert f.shape == (32, 3, 3, 3)
    assert f.amin((1, 2, 3)).max() == 0 and f.amax((1, 2, 3)).min() == 1  # each filter spans [0, 1]
    g = filter_grid(lite0, nrow=8)
    assert g.shape == (3, 4 * (24 + 2) + 2, 8 * (24 + 2) + 2)
    snap.assert_unchanged()


@pytest.mark.parametrize("name, shape", [("alexnet", (64, 3, 11, 11)), ("resnet18", (64, 3, 7, 7)),
                                         ("resnet101", (64, 3, 7, 7)), ("densenet121", (64, 3, 7, 7)),
                                         ("vgg16", (64, 3, 3, 3))])
def test_filters_of_torchvision_networks(name, shape, snapshot):
    m = fv.load_model(name, weights=None)
    snap = snapshot(m.module)
    f = filters(m)
    assert f.shape == shape and f.min() >= 0 and f.max() <= 1
    assert filter_grid(m).shape[0] == 3
    snap.assert_unchanged()


def test_first_conv_without_rgb_is_an_error_that_suggests_a_layer(snapshot):
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3))
    m = fv.Model(net, name="gray")
    snap = snapshot(net)
    with pytest.raises(FastvizError, match=r"takes 1 input channels.*layer=.*do take 3: 1"):
        filters(m)
    with pytest.raises(FastvizError, match="takes 1 input channels"):
        filter_grid(m)
    assert filters(m, layer="1").shape == (4, 3, 3, 3)
    with pytest.raises(FastvizError, match="not an nn.Conv2d"):
        filters(fv.Model(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())), layer="1")
    with pytest.raises(FastvizError, match="no module named"):
        filters(m, layer="conv9")
    with pytest.raises(FastvizError, match="normalize"):
        filters(m, layer="1", normalize="global")
    snap.assert_unchanged()


# -- features: stopping early, predictions ------------------------------------------------
def test_default_features_are_the_classifier_input_and_the_classifier_never_runs(snapshot):
    m = tiny_net()
    x = tiny_images(5)
    with torch.no_grad():
        full = m(x)
    features(m, x[:1])  # the one-time check that the layer runs once takes a whole forward
    ran = []
    handle = m.module[6].register_forward_hook(lambda *a: ran.append(1))
    snap = snapshot(m.module)
    try:
        f = features(m, x, batch_size=2)
    finally:
        snap.assert_unchanged()
        handle.remove()
    assert ran == []  # the Linear classifier did not run ...
    assert f.features.shape == (5, 6)
    assert torch.equal(f.predictions, full.argmax(1))  # ... yet the predictions are the forward's
    with torch.no_grad():
        torch.testing.assert_close(m.module[6](f.features), full)


def test_named_layer_stops_the_forward_there(lite0, photos, snapshot):
    x = fv.load_images([photos["chelsea"], photos["coffee"]])
    features(lite0, x[:1], layer="_blocks.10")  # the one-time single-use check: a whole forward
    ran = []
    handle = lite0.module._conv_head.register_forward_hook(lambda *a: ran.append(1))
    snap = snapshot(lite0.module)
    try:
        f = features(lite0, x, layer="_blocks.10")
    finally:
        snap.assert_unchanged()
        handle.remove()
    assert ran == []
    assert f.predictions is None
    assert f.features.shape == (2, 112)  # _blocks.10: 112 channels, averaged over 14x14


def test_default_features_on_the_pretrained_default_predict_its_classes(lite0, cat_coffee, snapshot):
    snap = snapshot(lite0.module)
    f = features(lite0, cat_coffee)
    snap.assert_unchanged()
    assert f.features.shape == (2, 1280)
    assert f.predictions.tolist() == [285, 967]
    assert f.images.shape == (2, 3, 64, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_features_on_cuda_match_the_cpu_and_the_model_comes_back():
    m = tiny_net()
    x = tiny_images(4)
    cpu = features(m, x)
    gpu = features(m, x, device="cuda")
    assert m.device.type == "cpu"
    torch.testing.assert_close(gpu.features, cpu.features, atol=1e-4, rtol=1e-4)


# -- bad input ----------------------------------------------------------------------------
def test_empty_folder_is_an_error(tmp_path, snapshot):
    m = tiny_net()
    snap = snapshot(m.module)
    with pytest.raises(FastvizError, match="holds no image files"):
        embed(m, tmp_path)
    snap.assert_unchanged()


def test_non_image_files_are_skipped_with_a_warning_corrupt_images_are_errors(tmp_path, snapshot):
    m = tiny_net()
    for i in range(4):
        fv.save_image(tiny_images(1, seed=i)[0], tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    snap = snapshot(m.module)
    with pytest.warns(UserWarning, match=r"skipped 1 file.*notes.txt"), \
            pytest.warns(UserWarning, match="perplexity"):
        e = embed(m, tmp_path, method="tsne")
    assert e.names == [f"im{i}.png" for i in range(4)] and len(e.paths) == 4
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FastvizError, match="broken.png.*not a readable image"), \
            pytest.warns(UserWarning):
        embed(m, tmp_path, method="pca")
    snap.assert_unchanged()


def test_too_few_images_for_tsne(snapshot):
    m = tiny_net()
    snap = snapshot(m.module)
    with pytest.raises(FastvizError, match=r"tsne needs at least 4 images, got 3.*pca"):
        embed(m, tiny_images(3))
    with pytest.raises(FastvizError, match="pca needs at least 2 images, got 1"):
        embed(m, tiny_images(1), method="pca")
    assert embed(m, tiny_images(2), method="pca").coords.shape == (2, 2)
    with pytest.warns(UserWarning, match=r"perplexity: 30.0 is too large for 10 images; using 3"):
        embed(m, tiny_images(10))
    snap.assert_unchanged()


def test_other_bad_arguments_leave_the_model_unchanged(snapshot):
    m = tiny_net()
    snap = snapshot(m.module)
    for kwargs, match in [(dict(method="umap"), "method"), (dict(layer="nope"), "no module named"),
                          (dict(batch_size=0), "batch_size"), (dict(pool="max"), "pool")]:
        with pytest.raises(FastvizError, match=match):
            embed(m, tiny_images(5), **kwargs)
        snap.assert_unchanged()
    with pytest.raises(FastvizError, match="expected 3 channels"):
        embed(m, torch.rand(5, 1, 32, 32))
    with pytest.raises(FastvizError, match="no nn.Linear"):
        embed(fv.Model(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())), tiny_images(5))
    snap.assert_unchanged()


def test_a_forward_that_raises_leaves_the_model_unchanged(snapshot):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    m = tiny_net()
    m.module.insert(3, Boom())
    m.module.train()
    snap = snapshot(m.module)
    with pytest.raises(RuntimeError, match="boom"):
        embed(m, tiny_images(5))
    snap.assert_unchanged()
    assert m.module.training


# -- the command line ---------------------------------------------------------------------
def test_cli_filters_and_embed(tmp_path, photos, capsys):
    from fastviz.cli import main

    assert main(["filters", "--model", "resnet18", "--weights", "none", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "filters_resnet18.png").is_file()
    assert "64 filters of 3x7x7" in capsys.readouterr().out
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        fv.save_image(fv.load_images(photos[name], size=64)[0], folder / f"{name}.png")
    assert main(["embed", str(folder), "--method", "pca", "--out", str(tmp_path), "--batch-size", "2",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for suffix in ("_map.png", "_scatter.png", ".csv"):
        assert (tmp_path / f"pca_efficientnet_lite0{suffix}").is_file()
    assert "4 images, 1280-d features" in out
    assert main(["embed", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2


# -- progress -------------------------------------------------------------------------------
def test_features_reports_progress_by_the_shared_protocol():
    calls = []
    features(tiny_net(), tiny_images(5), batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (5, 5) and all(t == 5 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_tqdm_class_is_the_old_form_of_a_bar():
    from tqdm import tqdm

    with pytest.warns(DeprecationWarning, match="progress=True"):
        f = features(tiny_net(), tiny_images(2), progress=tqdm)
    assert f.features.shape[0] == 2
