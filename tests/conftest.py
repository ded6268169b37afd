"""Shared fixtures: the real pretrained model, the sample photos, and the model-unchanged check."""

from __future__ import annotations

import pytest
import torch

import fastviz as fv

torch.set_num_threads(max(1, torch.get_num_threads()))

# The atlas tests share a tiny atlas run once per session (tests/atlas_helpers.py).
pytest_plugins = ["atlas_helpers"]


@pytest.fixture(scope="session")
def lite0() -> fv.Model:
    """The pretrained EfficientNet-Lite0 (shared: tests must leave it as they found it)."""
    return fv.load_model()


@pytest.fixture(scope="session")
def photos() -> dict:
    return fv.sample_images()


@pytest.fixture(scope="session")
def cat_coffee(photos) -> torch.Tensor:
    """(2, 3, 224, 224): chelsea (ImageNet 285) and coffee (967)."""
    return fv.load_images([photos["chelsea"], photos["coffee"]])


class Snapshot:
    """Everything rule 1 promises to restore: hooks, module objects, inplace, training, requires_grad."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.state = self._take()

    def _take(self):
        mods = list(self.module.named_modules())
        return {
            "modules": [(n, id(m)) for n, m in mods],
            "inplace": [(n, m.inplace) for n, m in mods if isinstance(getattr(m, "inplace", None), bool)],
            "training": [(n, m.training) for n, m in mods],
            "requires_grad": [(n, p.requires_grad) for n, p in self.module.named_parameters()],
            "hooks": [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                       len(getattr(m, "_backward_pre_hooks", {})))
                      for n, m in mods],
            "grads": [(n, p.grad is None) for n, p in self.module.named_parameters()],
        }

    def assert_unchanged(self):
        now = self._take()
        for key, before in self.state.items():
            assert now[key] == before, f"model changed: {key}"


@pytest.fixture
def snapshot():
    return Snapshot
