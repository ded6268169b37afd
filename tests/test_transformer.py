"""Attention rollout and Chefer et al.'s gradient-weighted rollout on timm vision transformers
(random weights): the maths on attention we control, prefix tokens, the fused flag restored."""

import pytest
import torch

import fastviz as fv

timm = pytest.importorskip("timm")


def vit(name="vit_tiny_patch16_224", **kw):
    torch.manual_seed(0)
    return fv.Model.from_timm(timm.create_model(name, pretrained=False, num_classes=10, **kw))


@pytest.fixture(scope="module")
def model():
    return vit()


X = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_maps_have_the_image_shape_and_the_fused_flag_comes_back(model):
    flags = [m.fused_attn for m in model.module.modules() if hasattr(m, "fused_attn")]
    assert flags and all(flags)  # timm fuses by default: no attention probabilities to read
    model.module.train()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    for f in (fv.attention_rollout, lambda m, x: fv.transformer_attribution(m, x, [1, 2])):
        out = f(model, X)
        assert out.shape == (2, 224, 224) and torch.isfinite(out).all()
        assert out.min() == 0 and out.max() == 1
    assert [m.fused_attn for m in model.module.modules() if hasattr(m, "fused_attn")] == flags
    assert model.module.training and all(p.requires_grad for p in model.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert not any(m._forward_hooks for m in model.module.modules())
    model.module.eval()


def test_uniform_attention_rolls_out_to_a_flat_map():
    """q = k = 0: every block attends uniformly; the identity mix keeps rows stochastic, so the
    class token takes the same share from every patch and the map is constant (min-max: 0)."""
    m = vit()
    with torch.no_grad():
        for blk in m.module.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[:2 * d] = 0
            blk.attn.qkv.bias[:2 * d] = 0
    out = fv.attention_rollout(m, X[:1])
    assert out.abs().max() == 0


def test_rollout_follows_the_attention_we_plant():
    """Every block's class token attends only to patch 37 (row 2, column 9 of the 14x14 grid):
    the rollout's maximum is that patch."""
    m = vit()
    target_patch = 37
    prefix = m.module.num_prefix_tokens

    def plant(mod, inputs, out):
        fixed = torch.zeros_like(out)
        fixed[..., :, :] = out
        fixed[:, :, 0, :] = 0
        fixed[:, :, 0, prefix + target_patch] = 1
        return fixed

    handles = [blk.attn.attn_drop.register_forward_hook(plant) for blk in m.module.blocks]
    try:
        out = fv.attention_rollout(m, X[:1])
    finally:
        for h in handles:
            h.remove()
    y, x = divmod(int(out[0].flatten().argmax()), 224)
    assert (y // 16, x // 16) == divmod(target_patch, 14)


def test_prefix_tokens_are_skipped_deit_and_registers():
    for name, kw in (("deit_tiny_distilled_patch16_224", {}), ("vit_tiny_patch16_224", {"reg_tokens": 4})):
        m = vit(name, **kw)
        assert m.module.num_prefix_tokens in (2, 5)
        out = fv.transformer_attribution(m, X[:1], 3)
        assert out.shape == (1, 224, 224) and torch.isfinite(out).all()


def test_chefer_depends_on_the_target(model):
    a = fv.transformer_attribution(model, X[:1], 1)
    b = fv.transformer_attribution(model, X[:1], 7)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("net,match", [
    (lambda: fv.Model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))),
     "no attention module"),
    (lambda: fv.Model.from_timm(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                                                  num_classes=10)), "windowed attention"),
])
def test_models_without_global_attention_are_refused(net, match):
    with pytest.raises(fv.FastvizError, match=match):
        fv.attention_rollout(net(), X[:1])


def test_a_cnn_is_told_it_has_no_attention():
    net = fv.Model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)),
                   name="tiny_cnn")
    with pytest.raises(fv.FastvizError) as err:
        fv.transformer_attribution(net, X[:1], 1)
    assert "model: tiny_cnn has no attention module fastviz can read: none of its modules is an attention " \
           "module" in str(err.value)


def test_attention_with_an_inline_softmax_is_refused_by_name():
    """LeViT's attention adds its position bias and takes the softmax inside its forward: no
    module gives the probabilities. The refusal names the network and the module it found, and
    does not call a transformer a CNN."""
    torch.manual_seed(0)
    m = fv.Model.from_timm(timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=64))
    for f in (fv.attention_rollout, lambda m, x: fv.transformer_attribution(m, x, 1)):
        with pytest.raises(fv.FastvizError) as err:
            f(m, X[:1, :, :64, :64])
        msg = str(err.value)
        assert msg.startswith(f"model: {m.name} has no attention module fastviz can read: its attention "
                              f"modules (Attention at 'stages.0.blocks.0.attn', ")
        assert "inline" in msg and "CNN" not in msg


def test_attention_over_patches_unfolded_into_the_batch_is_refused_where_it_is_captured():
    """MobileViT's transformer runs on (B * 4, N, C): each of the 4 rows per image is one pixel
    of every 2x2 patch, not the image's tokens. The refusal names the first such attention, the
    shape of its probabilities and why; the network comes back as it was."""
    torch.manual_seed(0)
    m = fv.Model.from_timm(timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10))
    flags = [mod.fused_attn for mod in m.module.modules() if hasattr(mod, "fused_attn")]
    x = X[:2, :, :64, :64]
    for f in (fv.attention_rollout, lambda m, x: fv.transformer_attribution(m, x, [1, 2])):
        with pytest.raises(fv.FastvizError) as err:
            f(m, x)
        assert (f"model: {m.name}: the attention probabilities of 'stages.2.1.transformer.0.attn' have shape "
                f"(8, 4, 16, 16) for a batch of 2, and their first dimension is not the batch") in str(err.value)
        assert [mod.fused_attn for mod in m.module.modules() if hasattr(mod, "fused_attn")] == flags
        assert not any(mod._forward_hooks for mod in m.module.modules())


def test_bad_arguments(model):
    with pytest.raises(fv.FastvizError, match="residual"):
        fv.attention_rollout(model, X[:1], residual=2.0)
    with pytest.raises(fv.FastvizError, match="target"):
        fv.transformer_attribution(model, X[:1], 10)


def test_an_error_inside_the_forward_leaves_the_model_as_it_was(model):
    """Even a failure after the fused flags were switched off puts them back."""
    def boom(mod, inputs, out):
        raise RuntimeError("boom")
    h = model.module.blocks[3].attn.attn_drop.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            fv.transformer_attribution(model, X[:1], 1)
    finally:
        h.remove()
    assert all(m.fused_attn for m in model.module.modules() if hasattr(m, "fused_attn"))
    assert not any(m._forward_hooks for m in model.module.modules())
    assert not any(p.grad is not None for p in model.module.parameters())


def test_chunks_under_a_small_budget_equal_one_batch(model):
    from fastviz import budget

    x = X[:2]
    whole = fv.transformer_attribution(model, x, [1, 2]), fv.attention_rollout(model, x)
    one_row = int(budget.profile(model, x).row(True) * 1.6) + 2 ** 22
    with fv.memory_budget(one_row):
        assert budget.rows(model, x, grad=True, total=2) == 1
        parts = fv.transformer_attribution(model, x, [1, 2]), fv.attention_rollout(model, x)
    for a, b in zip(parts, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
