"""fastviz.layout on plain tensors and tiny stand-in modules: every form laid out as (B, C, h, w)
and back, the choices it makes (prefix tokens, patch grid, aspect, channels last) and its refusals."""

import pytest
import torch
from torch import nn

from fastviz import FastvizError
from fastviz.layout import Layout, layout_of

G = torch.Generator().manual_seed(0)


class PatchEmbed(nn.Module):
    """What layout reads of timm's PatchEmbed."""

    def __init__(self, patch=8, grid=(4, 4), strict=True):
        super().__init__()
        self.patch_size, self.grid_size, self.strict_img_size = (patch, patch), grid, strict


class ViTLike(nn.Module):
    def __init__(self, prefix=1, **kw):
        super().__init__()
        self.num_prefix_tokens = prefix
        self.patch_embed = PatchEmbed(**kw)


class Fmt(nn.Module):
    def __init__(self, fmt):
        super().__init__()
        self.output_fmt = fmt


def test_nchw_is_the_map_itself():
    t = torch.randn(2, 5, 7, 7, generator=G)
    lay = layout_of(nn.Module(), nn.Module(), "conv", t, (28, 28), 2)
    assert lay == Layout("nchw", 5, (7, 7))
    assert lay.to_map(t) is t and lay.from_map(t, t) is t


def test_tokens_after_a_class_token_on_the_patch_grid_and_back():
    net = ViTLike(prefix=1)
    t = torch.randn(2, 17, 6, generator=G)
    lay = layout_of(net, nn.Module(), "blocks.0", t, (32, 32), 2)
    assert lay == Layout("tokens", 6, (4, 4), 1)
    a = lay.to_map(t)
    assert a.shape == (2, 6, 4, 4)
    # token 1 + 4 * row + col is the patch at (row, col), channel c is the embedding's c
    assert torch.equal(a[1, 3, 2, 1], t[1, 1 + 4 * 2 + 1, 3])
    back = lay.from_map(a, t)
    assert torch.equal(back, t)  # the class token comes from the layer's own output


def test_a_non_square_image_lays_tokens_on_its_own_grid():
    net = ViTLike(prefix=1, grid=(4, 4), strict=False)  # built at 32x32, takes other sizes
    t = torch.randn(1, 1 + 4 * 8, 3, generator=G)
    lay = layout_of(net, nn.Module(), "blocks.0", t, (32, 64), 1)
    assert lay.grid == (4, 8)
    assert torch.equal(lay.to_map(t)[0, :, 3, 7], t[0, -1])


def test_tokens_without_a_patch_embedding_take_the_image_aspect():
    t = torch.randn(2, 8, 4, generator=G)  # a stage of 8 tokens of a 64 x 128 image: 2 x 4
    lay = layout_of(nn.Module(), nn.Module(), "stages.1", t, (64, 128), 2)
    assert lay == Layout("tokens", 4, (2, 4), 0)


def test_declared_prefix_tokens_are_tried_then_none():
    """The patch embedding's own output has no class token yet: 16 tokens, not 1 + 15."""
    net = ViTLike(prefix=1)
    t = torch.randn(2, 16, 6, generator=G)
    assert layout_of(net, nn.Module(), "patch_embed", t, (32, 32), 2) == Layout("tokens", 6, (4, 4), 0)


def test_channels_last_by_the_modules_output_fmt():
    t = torch.randn(2, 6, 6, 6, generator=G)  # square on every side: only output_fmt can tell
    assert layout_of(nn.Module(), Fmt("NHWC"), "s", t, (24, 24), 2).form == "nhwc"
    assert layout_of(nn.Module(), Fmt("NCHW"), "s", t, (24, 24), 2).form == "nchw"


def test_channels_last_by_the_image_aspect():
    """(B, 56, 56, 96) of a 224 image is 56 x 56 of 96 channels: 56 x 96 has not its aspect."""
    t = torch.randn(1, 56, 56, 96)
    lay = layout_of(nn.Module(), nn.Module(), "layers.0", t, (224, 224), 1)
    assert lay == Layout("nhwc", 96, (56, 56))
    a = lay.to_map(t)
    assert a.shape == (1, 96, 56, 56) and torch.equal(a[0, 5, 3, 4], t[0, 3, 4, 5])
    assert torch.equal(lay.from_map(a, t), t)
    # and a (B, C, h, w) map of the same numbers stays NCHW
    assert layout_of(nn.Module(), nn.Module(), "x", t.permute(0, 3, 1, 2), (224, 224), 1).form == "nchw"


def test_a_vector_is_a_one_by_one_map_and_not_spatial():
    t = torch.randn(3, 10, generator=G)
    lay = layout_of(nn.Module(), nn.Module(), "fc", t, (32, 32), 3)
    assert lay == Layout("vector", 10, (1, 1)) and not lay.spatial
    assert lay.to_map(t).shape == (3, 10, 1, 1) and torch.equal(lay.from_map(lay.to_map(t), t), t)


@pytest.mark.parametrize("shape, batch, match", [
    ((8, 16, 6), 2, r"'blk' gives shape \(8, 16, 6\) for a batch of 2: its first dimension is not the batch"),
    ((2, 3, 4, 4, 4), 2, r"'blk' gives shape \(2, 3, 4, 4, 4\); fastviz lays out"),
    # 13 tokens after the class token, or 14 without: neither lays out on a square image
    ((2, 14, 6), 2, r"'blk' gives shape \(2, 14, 6\), read as \(B, N, C\) tokens, but they lay out on no grid"),
])
def test_refusals_name_the_layer_and_its_shape(shape, batch, match):
    with pytest.raises(FastvizError, match=match):
        layout_of(ViTLike(prefix=1), nn.Module(), "blk", torch.zeros(shape), (32, 32), batch)


def test_a_tuple_output_is_refused():
    with pytest.raises(FastvizError, match="returns a tuple, not a tensor"):
        layout_of(nn.Module(), nn.Module(), "blk", (torch.zeros(1, 2, 3, 3),), (32, 32), 1)


@pytest.mark.parametrize("lay, shape", [
    (Layout("tokens", 3, (2, 2), 1), (2, 5, 3)),
    (Layout("nhwc", 3, (2, 4)), (2, 2, 4, 3)),
    (Layout("vector", 3, (1, 1)), (2, 3)),
])
def test_to_map_and_from_map_carry_gradients(lay, shape):
    """Both are differentiable: objectives backpropagate through to_map, the CAMs through from_map."""
    t = torch.randn(shape, dtype=torch.float64, generator=G, requires_grad=True)
    w = torch.randn(lay.to_map(t).shape, dtype=torch.float64, generator=G)
    assert torch.autograd.gradcheck(lambda u: (lay.to_map(u) * w).sum(), (t,))
    a = lay.to_map(t).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: lay.from_map(b, t.detach()).sum(), (a,))
    # the gradient of a map position reaches exactly its token / position
    (g,) = torch.autograd.grad(lay.to_map(t)[1, 2, -1, -1], t)
    assert g.sum() == 1 and g[1].flatten()[-1] == 1
