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


def test_a_binding_ceiling_steps_down_what_it_costs_and_leaves_the_target_unmet():
    # A ceiling on a cost that only group k's width drives, k the group whose channels save the
    # fewest FLOPs: while over it, the down-steps must come from k (scored by the ceiling's savings;
    # scored by FLOPs saved, k would be stepped last), and the FLOPs then stay under their target.
    model, graph = _graph("resnet20")
    fm = FlopsModel(graph, model, torch.zeros(1, 3, 32, 32))
    full = fm.full_widths()
    k = int((float(fm.flops(full)) - fm.flops(full - torch.eye(len(full), dtype=full.dtype))).argmin())
    masks = [torch.linspace(0, 1, g.size) for g in fm.groups]
    masks[k] = 0.9 + 0.1 * masks[k]  # k's channels are worth the most: by value per FLOP, k goes last
    target = 0.6 * fm.dense_flops
    free = repair(fm, {}, masks, target)
    free_w = fm.widths_of(free)
    assert 0.99 * target <= float(fm.flops(free_w)) <= target
    only_k = lambda w: w[..., k] * 1.0  # noqa: E731 - a stand-in "latency" that group k alone costs
    ceiling = 0.5 * float(free_w[k])
    bound_w = fm.widths_of(repair(fm, free, masks, target, ceilings=[(only_k, ceiling)]))
    assert float(bound_w[k]) <= ceiling
    assert 0.9 * target < float(fm.flops(bound_w)) <= target  # the others took up what k gave back
    # The down-steps alone (low = 0: no step up after them) touched group k and no other.
    down_w = fm.widths_of(repair(fm, free, masks, target, low=0.0, ceilings=[(only_k, ceiling)]))
    others = [i for i in range(len(free_w)) if i != k]
    assert float(down_w[k]) <= ceiling and all(down_w[i] == free_w[i] for i in others), (k, down_w, free_w)
    # A ceiling that does not bind changes nothing (the control).
    assert repair(fm, free, masks, target, ceilings=[(only_k, float(free_w[k]))]) == free


def test_a_params_ceiling_is_met_where_the_flops_target_does_not_bind():
    # FLOPs far under their target, params over theirs: every down-step must lower the params.
    model, graph = _graph("resnet20")
    fm = FlopsModel(graph, model, torch.zeros(1, 3, 32, 32))
    masks = [torch.rand(g.size, generator=torch.Generator().manual_seed(g.id)) for g in fm.groups]
    params_target = 0.4 * fm.dense_params
    kept = repair(fm, {}, masks, 0.99 * fm.dense_flops, params_target)
    assert float(fm.params(fm.widths_of(kept))) <= params_target
