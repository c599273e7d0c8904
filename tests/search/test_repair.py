"""Repair: a hard plan moved onto the FLOPs budget by whole units."""

from __future__ import annotations

import warnings

import pytest
import torch

from dais_search import create_model
from dais_search.channels import FlopsModel, random_plan, trace_channels
from dais_search.search import repair


def _graph(name, size=32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, num_classes=10).eval()
        return model, trace_channels(model, torch.zeros(1, 3, size, size))


@pytest.mark.parametrize(
    "name,size", [("resnet20_b", 32), ("vgg16", 32), ("mobilenetv2", 32), ("tv:regnet_x_400mf", 64)]
)
@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_repair_lands_within_one_percent_of_the_target(name, size, keep):
    model, graph = _graph(name, size)
    fm = FlopsModel(graph, model, torch.zeros(1, 3, size, size))
    target = keep * fm.dense_flops
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(grp.size, generator=g) for grp in fm.groups]
    for start in (0.1, 0.95):  # far under and far over budget
        plan = random_plan(model, (1, 3, size, size), keep=start, seed=2, graph=graph)
        kept = repair(fm, plan.kept, masks, target)
        flops = float(fm.flops(fm.widths_of(kept)))
        assert 0.99 * target <= flops <= target, (start, flops / target)
        for grp in fm.groups:
            if grp.blocks and grp.id in kept:
                assert all(set(b) <= set(kept[grp.id]) or not set(b) & set(kept[grp.id]) for b in grp.blocks)


def test_repair_reports_an_impossible_budget():
    model, graph = _graph("resnet20")
    fm = FlopsModel(graph, model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="cannot meet the budget"):
        repair(fm, {}, [torch.ones(g.size) for g in fm.groups], 0.001 * fm.dense_flops)
