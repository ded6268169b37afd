"""Gradient checkpointing on the user's network (timm's `set_grad_checkpointing`, torchvision
DenseNet's `memory_efficient`): every method gives what it gives without it, and the flag comes
back. Checkpointing recomputes a block's forward in the backward, so left on it ran the hooks
twice and Grad-CAM's swapped-in leaf crashed the recomputation (CheckpointError)."""

import pytest
import torch
import torchvision

import fastviz as fv

timm = pytest.importorskip("timm")

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
T = [1, 2]
METHODS = {
    "gradcam": lambda m: fv.gradcam(m, X, T),
    "layercam": lambda m: fv.layercam(m, X, T),
    "saliency": lambda m: fv.saliency(m, X, T),
    "guided_backprop": lambda m: fv.guided_backprop(m, X, T),
}


def flags(net):
    return [(n, f, getattr(m, f)) for n, m in net.named_modules() for f in ("grad_checkpointing", "memory_efficient")
            if isinstance(getattr(m, f, None), bool)]


def vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)


def swin():
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=64,
                             window_size=4, embed_dim=32)


def densenet():
    return torchvision.models.densenet121(num_classes=10, memory_efficient=True)


def checkpointed(build):
    """The network as built (no checkpointing) and a copy with it switched on."""
    torch.manual_seed(0)
    plain = build().eval()
    torch.manual_seed(0)
    net = build().eval()
    if hasattr(net, "set_grad_checkpointing"):
        net.set_grad_checkpointing(True)
    else:  # torchvision's DenseNet: memory_efficient=True checkpoints whenever the input needs grad
        plain = torchvision.models.densenet121(num_classes=10).eval()
        plain.load_state_dict(net.state_dict())
    wrap = fv.Model.from_timm if hasattr(net, "pretrained_cfg") else (
        lambda n: fv.Model(n, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=64))
    return wrap(plain), wrap(net)


@pytest.mark.parametrize("build", [vit, swin, densenet], ids=["vit", "swin", "densenet121"])
def test_checkpointed_networks_give_the_same_maps_and_keep_the_flag(build):
    plain, net = checkpointed(build)
    before = flags(net.module)
    assert before and all(v for *_, v in before)
    for name, call in METHODS.items():
        a, b = call(plain), call(net)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
        assert flags(net.module) == before, name
