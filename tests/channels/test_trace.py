"""The fx trace under the analysis: untraceable submodules become opaque leaves, an untraceable root
raises, and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toy_models import (
    Between,
    DataDependent,
    Residual,
    UntraceableRoot,
    analyse,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    summary,
)

from dais_search.channels import find_channel_groups

# ----------------------------------------------------------------------------------------------
# Opaque leaves and an untraceable model


def test_untraceable_submodule_inside_a_container_is_opaque():
    mid = nn.Sequential(nn.ReLU(), DataDependent())
    groups, warned = analyse(Between(mid, 8))
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert len(warned) == 1 and "(at mid" in warned[0]


def test_untraceable_model_raises():
    with pytest.raises(RuntimeError, match="cannot be traced by torch.fx"):
        find_channel_groups(UntraceableRoot(), torch.randn(1, 3, 6, 6))


def test_analysis_leaves_the_model_as_it_was():
    model = Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyse(model)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
