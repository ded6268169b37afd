"""What a call explains or maximises (fastviz/targets.py): Neuron and class index parsing."""

import numpy as np
import pytest
import torch

import fastviz as fv
from fastviz.targets import as_index_list, class_targets


def test_neuron_index_defaults_to_the_centre_and_checks_shapes():
    act = torch.zeros(2, 8, 7, 9)
    assert fv.Neuron("l", 3).index(act) == (3, 3, 4)
    assert fv.Neuron("l", 3, y=np.int64(1), x=torch.tensor(2)).index(act) == (3, 1, 2)
    act[:, 3, 1, 2] = torch.tensor([5.0, 6.0])
    assert fv.Neuron("l", 3, y=1, x=2).value(act).tolist() == [5.0, 6.0]
    for bad, match in ((fv.Neuron("l", 8), "channel"), (fv.Neuron("l", 0, y=7), "y/x")):
        with pytest.raises(fv.FastvizError, match=match):
            bad.index(act)
    with pytest.raises(fv.FastvizError, match="feature map"):
        fv.Neuron("l", 0).index(torch.zeros(2, 8))
    with pytest.raises(fv.FastvizError, match="channel"):
        fv.Neuron("l", None)


def test_class_targets_in_every_form():
    assert class_targets(None, 3, 10) is None
    assert class_targets(4, 3, 10).tolist() == [4, 4, 4]
    assert class_targets(torch.tensor(4), 2, 10).tolist() == [4, 4]
    assert class_targets(np.array([1, 2]), 2, 10).tolist() == [1, 2]
    with pytest.raises(fv.FastvizError, match="one class per image"):
        class_targets([1, 2], 3, 10)
    with pytest.raises(fv.FastvizError, match="target"):
        class_targets(10, 1, 10)
    assert as_index_list(range(3), "channels") == [0, 1, 2]
