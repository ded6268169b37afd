"""The layout room (fastviz/layout.py) on plain tensors and tiny modules: every form a layer's
output can take, read as (B, C, h, w) and laid back out, the refusals, and gradients through both
directions. Expected maps are written index by index, not with the reshape under test."""

from __future__ import annotations

import enum

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.layout import Layout, layout_of


class Net(nn.Module):
    """A stand-in network carrying only what `layout_of` reads (timm's attribute names)."""

    def __init__(self, **attrs):
        super().__init__()
        for k, v in attrs.items():
            setattr(self, k, v)


class PatchEmbed(nn.Module):
    """timm's PatchEmbed as `layout_of` sees it: a patch size and the grid at the built size."""

    def __init__(self, patch=(8, 8), grid=(4, 4), strict=True):
        super().__init__()
        self.patch_size, self.grid_size, self.strict_img_size = patch, grid, strict


class Fmt(str, enum.Enum):  # timm's `Format` is a str enum: `output_fmt` may be one
    NCHW = "NCHW"
    NHWC = "NHWC"


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tokens_by_hand(t: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, h, w): patch token k (after the prefix) is at row k // w, column k % w."""
    B, _, C = t.shape
    h, w = grid
    out = torch.empty(B, C, h, w, dtype=t.dtype)
    for k in range(h * w):
        out[:, :, k // w, k % w] = t[:, prefix + k, :]
    return out


# -- (B, C, h, w) -------------------------------------------------------------------------------
def test_nchw_is_read_as_it_is():
    out = rand(2, 8, 4, 4)
    lay = layout_of(Net(), nn.Identity(), "conv", out, (32, 32), 2)
    assert lay == Layout("nchw", 8, (4, 4)) and lay.spatial
    assert lay.to_map(out) is out  # no copy: the layer's own tensor
    assert lay.from_map(out, out) is out
    assert lay.describe() == "nchw map of 8 channels on 4x4"


# -- (B, N, C) tokens -----------------------------------------------------------------------------
def test_tokens_after_one_prefix_token_lay_out_on_the_patch_grid_and_back():
    net = Net(num_prefix_tokens=1, patch_embed=PatchEmbed(patch=(8, 8), grid=(4, 4)))
    out = rand(2, 1 + 16, 6)
    lay = layout_of(net, nn.Identity(), "blocks.3", out, (32, 32), 2)
    assert lay == Layout("tokens", 6, (4, 4), prefix=1)
    a = lay.to_map(out)
    assert a.shape == (2, 6, 4, 4)
    torch.testing.assert_close(a, tokens_by_hand(out, 1, (4, 4)), rtol=0, atol=0)
    back = lay.from_map(a, out)
    assert back.shape == out.shape and torch.equal(back, out)  # class token and patches identical


def test_from_map_keeps_the_prefix_tokens_of_the_original_output():
    """A CAM swaps a new map in: the patches are the map's, the class token the layer's own."""
    net = Net(num_prefix_tokens=1)
    out = rand(2, 17, 6)
    lay = layout_of(net, nn.Identity(), "blocks.3", out, (32, 32), 2)
    new = rand(2, 6, 4, 4, seed=1)
    back = lay.from_map(new, out)
    assert torch.equal(back[:, :1], out[:, :1])
    torch.testing.assert_close(back[:, 1:], new.flatten(2).transpose(1, 2), rtol=0, atol=0)
    assert not torch.equal(back, out)


def test_declared_prefix_tokens_are_set_aside_and_none_is_tried_after_them():
    """The patch embedding's own output has no class token yet: 16 tokens on a 4x4 grid, prefix 0."""
    net = Net(num_prefix_tokens=1, patch_embed=PatchEmbed(patch=(8, 8), grid=(4, 4)))
    assert layout_of(net, nn.Identity(), "patch_embed", rand(2, 16, 6), (32, 32), 2).prefix == 0
    net5 = Net(num_prefix_tokens=5, patch_embed=PatchEmbed(patch=(8, 8), grid=(4, 4)))  # class + 4 registers
    assert layout_of(net5, nn.Identity(), "blocks.0", rand(2, 21, 6), (32, 32), 2) == Layout("tokens", 6, (4, 4), 5)


@pytest.mark.parametrize("net", [
    Net(num_prefix_tokens=1, patch_embed=PatchEmbed(patch=(8, 8), grid=(4, 4), strict=False)),  # any size
    Net(num_prefix_tokens=1),  # no patch embedding: the grid of the image's aspect
], ids=["patch_grid", "aspect"])
def test_a_non_square_image_gives_a_non_square_grid(net):
    """Image 32 x 64, patch 8: 4 rows of 8 patches (not 8 x 4), row by row."""
    out = rand(2, 1 + 32, 3)
    lay = layout_of(net, nn.Identity(), "blocks.0", out, (32, 64), 2)
    assert lay.grid == (4, 8) and lay.prefix == 1
    torch.testing.assert_close(lay.to_map(out), tokens_by_hand(out, 1, (4, 8)), rtol=0, atol=0)
    assert torch.equal(lay.from_map(lay.to_map(out), out), out)


def test_tokens_on_no_grid_of_the_image_are_refused_naming_what_was_tried():
    net = Net(num_prefix_tokens=1)
    with pytest.raises(fv.FastvizError) as err:
        layout_of(net, nn.Identity(), "blocks.2", rand(2, 14, 3), (32, 64), 2)  # 13 or 14: no 1:2 grid
    msg = str(err.value)
    assert "'blocks.2'" in msg and "(2, 14, 3)" in msg and "13 after 1 prefix tokens" in msg
    assert "14 after 0 prefix tokens" in msg and "no patch embedding" in msg


# -- (B, H, W, C) channels last -------------------------------------------------------------------
@pytest.mark.parametrize("module_fmt,net_fmt,form", [
    ("NHWC", None, "nhwc"),
    (Fmt.NHWC, None, "nhwc"),  # timm's str enum
    ("NCHW", "NHWC", "nchw"),  # the module's own declaration before the network's
    (None, "NHWC", "nhwc"),  # both readings fit the image: the network's format decides
    (None, None, "nchw"),  # ... and NCHW without one
])
def test_an_ambiguous_4d_output_is_read_by_the_declared_format(module_fmt, net_fmt, form):
    out = rand(2, 8, 8, 8)  # 8x8 of 8 channels, either way round, for a 32 x 32 image
    module = Net(output_fmt=module_fmt) if module_fmt is not None else nn.Identity()
    net = Net(output_fmt=net_fmt) if net_fmt is not None else Net()
    lay = layout_of(net, module, "stage", out, (32, 32), 2)
    assert lay.form == form


def test_channels_last_by_the_image_aspect_and_its_values():
    """(2, 7, 7, 12) of a 28 x 28 image: 7x7 of 12 channels (a 7x12 grid has not the image's aspect)."""
    out = rand(2, 7, 7, 12)
    lay = layout_of(Net(), nn.Identity(), "layers.1", out, (28, 28), 2)
    assert lay == Layout("nhwc", 12, (7, 7))
    a = lay.to_map(out)
    assert a.shape == (2, 12, 7, 7)
    assert all(a[b, c, i, j] == out[b, i, j, c] for b in range(2) for c in (0, 11) for i in range(7) for j in (0, 6))
    assert torch.equal(lay.from_map(a, out), out)
    # the same numbers as (B, C, H, W): 12 channels cannot be H, so NCHW is read
    assert layout_of(Net(), nn.Identity(), "conv", rand(2, 12, 7, 7), (28, 28), 2) == Layout("nchw", 12, (7, 7))


def test_the_module_format_wins_over_the_image_aspect():
    out = rand(1, 7, 7, 12)
    lay = layout_of(Net(), Net(output_fmt="NCHW"), "odd", out, (28, 28), 1)
    assert lay == Layout("nchw", 7, (7, 12))


# -- (B, C) vectors -----------------------------------------------------------------------------
def test_a_vector_is_a_1x1_map_with_no_positions():
    out = rand(3, 10)
    lay = layout_of(Net(), nn.Linear(4, 10), "head.fc", out, (32, 32), 3)
    assert lay == Layout("vector", 10, (1, 1)) and not lay.spatial
    a = lay.to_map(out)
    assert a.shape == (3, 10, 1, 1) and torch.equal(a[:, :, 0, 0], out)
    assert torch.equal(lay.from_map(a, out), out)


# -- refusals -----------------------------------------------------------------------------------
def test_a_first_dimension_that_is_not_the_batch_is_refused_naming_the_layer_and_shape():
    """MobileViT's transformer and Swin's window attention fold patches or windows into dim 0."""
    with pytest.raises(fv.FastvizError) as err:
        layout_of(Net(num_prefix_tokens=0), nn.Identity(), "stages.3.1.transformer.0", rand(8, 16, 4),
                  (32, 32), 2)
    msg = str(err.value)
    assert msg.startswith("layer: 'stages.3.1.transformer.0' gives shape (8, 16, 4) for a batch of 2")
    assert "first dimension is not the batch" in msg


@pytest.mark.parametrize("out,shape", [(rand(2, 3, 4, 4, 4), "(2, 3, 4, 4, 4)"), (rand(2), "(2,)")])
def test_other_ranks_are_refused_naming_the_layer_and_shape(out, shape):
    with pytest.raises(fv.FastvizError) as err:
        layout_of(Net(), nn.Identity(), "conv3d", out, (32, 32), 2)
    assert str(err.value).startswith(f"layer: 'conv3d' gives shape {shape}")


def test_an_output_that_is_not_a_tensor_is_refused():
    with pytest.raises(fv.FastvizError, match=r"layer: 'attn' returns a tuple, not a tensor"):
        layout_of(Net(), nn.Identity(), "attn", (rand(2, 4), rand(2, 4)), (32, 32), 2)


# -- gradients through both directions ------------------------------------------------------------
LAYOUTS = [
    (Layout("tokens", 3, (2, 3), prefix=1), (2, 1 + 6, 3)),
    (Layout("tokens", 2, (2, 2), prefix=0), (2, 4, 2)),
    (Layout("nhwc", 3, (2, 3)), (2, 2, 3, 3)),
    (Layout("nchw", 3, (2, 3)), (2, 3, 2, 3)),
    (Layout("vector", 4, (1, 1)), (2, 4)),
]


@pytest.mark.parametrize("lay,shape", LAYOUTS, ids=[lay.form + str(lay.prefix) for lay, _ in LAYOUTS])
def test_to_map_and_from_map_pass_gradients(lay, shape):
    t = rand(*shape, dtype=torch.float64).requires_grad_(True)
    a = rand(2, lay.channels, *lay.grid, seed=1, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: lay.to_map(t) * 1.5, (t,))
    # from_map: d/d map everywhere; d/d like on the prefix tokens it copies
    assert torch.autograd.gradcheck(lambda a, like: lay.from_map(a, like) * 1.5, (a, t))


def test_the_gradient_through_to_map_is_the_permutation_by_hand():
    """d sum(w * to_map(t)) / d t[b, 1 + i*W + j, c] = w[b, c, i, j]; the class token gets none."""
    lay = Layout("tokens", 3, (2, 4), prefix=1)
    t = rand(2, 9, 3).requires_grad_(True)
    w = rand(2, 3, 2, 4, seed=1)
    (g,) = torch.autograd.grad((lay.to_map(t) * w).sum(), t)
    expected = torch.zeros_like(t)
    for i in range(2):
        for j in range(4):
            expected[:, 1 + i * 4 + j, :] = w[:, :, i, j]
    torch.testing.assert_close(g, expected, rtol=0, atol=0)
    # and back: d sum(v * from_map(a, t)) / d a[b, c, i, j] = v[b, 1 + i*W + j, c]
    a = lay.to_map(t).detach().requires_grad_(True)
    v = rand(2, 9, 3, seed=2)
    (ga,) = torch.autograd.grad((lay.from_map(a, t.detach()) * v).sum(), a)
    torch.testing.assert_close(ga, tokens_by_hand(v, 1, (2, 4)), rtol=0, atol=0)
