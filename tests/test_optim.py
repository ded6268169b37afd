"""The loop's optimisers (fastviz/optim.py) against torch.optim on fresh random gradients."""

import torch

from fastviz.optim import SGD, Adam, Normalized


def _ascend_with_torch(opt_cls, x0, grads, lr, **kw):
    """torch.optim minimises: feed -g to ascend, as the engine's leaf += lr * direction does."""
    x = x0.clone().requires_grad_(True)
    opt = opt_cls([x], lr=lr, **kw)
    for g in grads:
        x.grad = -g
        opt.step()
    return x.detach()


def _ascend(opt, x0, grads, lr):
    x = x0.clone()
    for g in grads:
        x.add_(opt.direction(g), alpha=lr)
    return x


def test_adam_matches_torch():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    x0 = torch.randn(2, 3, 8, 9, generator=gen)
    grads = [torch.randn(x0.shape, generator=gen) for _ in range(5)]
    ours = _ascend(Adam(x0), x0, grads, 0.05)
    ref = _ascend_with_torch(torch.optim.Adam, x0, grads, 0.05)
    # Same maths, other order: ours scales eps by the bias correction in a preallocated buffer;
    # fp32 rounding of 5 steps of 0.05 leaves a few 1e-6 (a wrong update would be ~1e-2).
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_sgd_momentum_matches_torch():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    x0 = torch.randn(2, 3, 5, 5, generator=gen)
    grads = [torch.randn(x0.shape, generator=gen) for _ in range(4)]
    ours = _ascend(SGD(x0, momentum=0.9), x0, grads, 0.1)
    ref = _ascend_with_torch(torch.optim.SGD, x0, grads, 0.1, momentum=0.9)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_normalized_has_unit_mean_magnitude_per_image_and_reset_clears_state():
    g = torch.randn(3, 3, 6, 6) * torch.tensor([1.0, 10.0, 0.1])[:, None, None, None]
    d = Normalized(g).direction(g)
    torch.testing.assert_close(d.abs().mean((1, 2, 3)), torch.ones(3), rtol=1e-5, atol=1e-6)
    adam = Adam(g)
    adam.direction(g)
    adam.reset()
    assert float(adam.t) == 0 and float(adam.m.abs().sum()) == 0
