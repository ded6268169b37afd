"""timm models offline: Model.from_timm, load_model("timm:NAME", weights=FILE | None), the CLI."""

import pytest
import torch

import fastviz as fv

timm = pytest.importorskip("timm")


def test_from_timm_reads_the_pretrained_cfg():
    net = timm.create_model("resnet18", pretrained=False)
    m = fv.Model.from_timm(net)
    assert m.module is net and net.training  # as it came: calls run it in eval mode and restore it
    assert m.mean == (0.485, 0.456, 0.406) and m.std == (0.229, 0.224, 0.225)
    assert m.input_size == (224, 224) and m.labels[285] == "Egyptian cat" and m.name == "resnet18"
    vit = fv.Model.from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10))
    assert vit.mean == (0.5, 0.5, 0.5) and vit.labels is None and vit.num_classes is None


def test_load_model_timm_random_and_from_files(tmp_path):
    torch.manual_seed(0)
    m = fv.load_model("timm:resnet18", weights=None)
    x = torch.rand(2, 3, 64, 64)
    want = fv.predict(m, x, k=3)
    from safetensors.torch import save_file
    save_file(m.module.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(m.module.state_dict(), tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        again = fv.load_model("timm:resnet18", weights=tmp_path / f)
        assert fv.predict(again, x, k=3) == want  # same weights, same answers


@pytest.mark.parametrize("name,weights,match", [
    ("timm:resnet18", "default", "nothing is downloaded"),
    ("timm:resnet19", None, r"timm has no model 'resnet19' \(did you mean"),
    ("timm:resnet18", 3, "weights: expected"),
    ("timm:resnet18", "/no/such.pth", "no such file"),
])
def test_load_model_timm_refusals(name, weights, match):
    with pytest.raises(fv.FastvizError, match=match):
        fv.load_model(name, weights=weights)


def test_weights_of_another_network_are_named(tmp_path):
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(fv.FastvizError, match=r"different network than ResNet: 0 missing keys, \d+ unexpected \(e.g. "):
        fv.load_model("timm:resnet18", weights=tmp_path / "r34.pth")


def test_cli_takes_a_timm_model(photos, tmp_path):
    from fastviz.cli import main

    assert main(["lrp", str(photos["chelsea"]), "--model", "timm:resnet18", "--weights", "none",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "chelsea_lrp.png").is_file()
