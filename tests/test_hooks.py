"""The restoring session and its hooks (fastviz/hooks.py): hooks live for a block, one signal
stops a forward, the network comes back as it went in."""

import pytest
import torch

import fastviz as fv
from fastviz.hooks import StopForward, session
from tiny_net import tiny


def hook_counts(module: torch.nn.Module) -> tuple[int, int, int]:
    return len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks)


@pytest.mark.parametrize("kind", ["forward", "pre", "backward"])
def test_a_block_hook_runs_and_is_removed_also_when_the_block_raises(kind, snapshot):
    m = tiny()
    shot = snapshot(m.module)
    conv = m.module.features[0]
    calls = []
    with session(m) as s:
        with s.hook(conv, lambda *a: calls.append(kind), kind):
            x = torch.rand(1, 3, 32, 32, requires_grad=True)
            m(x).sum().backward()
        assert calls == [kind] and hook_counts(conv) == (0, 0, 0)
        with pytest.raises(RuntimeError, match="boom"):
            with s.hook(conv, lambda *a: calls.append(kind), kind):
                raise RuntimeError("boom")
        assert hook_counts(conv) == (0, 0, 0)
    shot.assert_unchanged()


def test_stop_forward_ends_the_forward_and_run_says_so():
    m = tiny()
    seen = []
    with session(m) as s:
        def stop(_m, _i, out):
            seen.append(out.shape)
            raise StopForward

        with s.hook(m.module.features[0], stop):
            assert s.run(torch.rand(2, 3, 32, 32)) is None
        assert seen == [(2, 8, 32, 32)]
        logits = s.run(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)


def test_truncated_forward_captures_and_stops_or_runs_on():
    m = tiny()
    with session(m) as s:
        acts, logits = s.forward(torch.rand(2, 3, 32, 32), ["features.2"])
        assert acts["features.2"].shape == (2, 8, 32, 32) and logits is None
        acts, logits = s.forward(torch.rand(2, 3, 32, 32), ["features.2"], stop=False)
        assert logits.shape == (2, 10)


def test_session_restores_flags_after_an_error(snapshot):
    m = tiny()
    m.module.train()
    shot = snapshot(m.module)
    with pytest.raises(ValueError):
        with session(m, no_inplace=True) as s:
            assert not m.module.training and not m.module.features[2].inplace
            assert not any(p.requires_grad for p in m.module.parameters())
            s.add_forward_hook(m.module.fc, lambda *a: None)
            raise ValueError
    shot.assert_unchanged()
    assert m.module.training and m.module.features[2].inplace


def test_a_module_run_twice_is_refused_as_a_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU())
    net.append(net[1])  # the same ReLU object twice
    m = fv.Model(net)
    with session(m) as s:
        with pytest.raises(fv.FastvizError, match="runs 2 times"):
            s.forward(torch.rand(1, 3, 4, 4), ["1"])
