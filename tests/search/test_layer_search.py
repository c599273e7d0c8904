"""``granularity = ["layer", "channel"]``: an indicator per removable layer of a plain chain mixes
the layer's output with its input, the FLOPs model follows, binarisation removes whole layers, and a
search meets its budget with them."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import dais_search as ds
from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.channels import ChannelPlan, randomize_norms
from dais_search.errors import UserError
from dais_search.models.cifar_vgg import CifarVGG
from dais_search.search import Searcher

SHAPE = (1, 3, 32, 32)


def _searcher(model="vgg11", granularity=("layer", "channel"), **budget) -> Searcher:
    spec = parse_budget({"version": 1, "model": {"name": model}, "budget": {"flops": "30%", **budget},
                         "search": {"epochs": 1, "granularity": list(granularity)}})  # fmt: skip
    torch.manual_seed(0)
    dense = randomize_norms(create_model(model), torch.randn(8, 3, 32, 32)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Searcher(dense, spec, torch.zeros(SHAPE), 4)


@pytest.mark.parametrize("training", [False, True])
def test_closed_layer_gates_and_binary_masks_compute_the_pruned_model(training):
    searcher = _searcher()
    assert [b.name for b in searcher.blocks] == ["features.11", "features.18", "features.22", "features.25"]
    closed = [0, 2]
    with torch.no_grad():
        searcher.gates.beta.fill_(1e4)  # sigmoid(1e4 / T) = 1: kept
        searcher.gates.beta[closed] = -1e4  # those layers: their input passes in their place
    gen = torch.Generator().manual_seed(1)
    kept = {g.id: sorted(torch.randperm(g.size, generator=gen)[: max(1, g.size // 3)].tolist())
            for g in searcher.groups}  # fmt: skip
    searcher.gates.fixed_masks = [torch.zeros(g.size).index_fill_(0, torch.tensor(kept[g.id]), 1.0)
                                  for g in searcher.groups]  # fmt: skip
    x = torch.randn(4, 3, 32, 32)
    plan = ChannelPlan.create(searcher.model, kept, SHAPE, graph=searcher.graph,
                              removed_blocks=[searcher.blocks[k].name for k in closed])  # fmt: skip
    pruned = plan.apply(searcher.model, searcher.graph).train(training)
    searcher.gated.train(training)
    with torch.no_grad():
        gated, expected = searcher.gated(x), pruned(x)
    assert torch.allclose(gated, expected, atol=1e-5 * float(expected.abs().max()))
    closed_blocks = searcher.gates.block_masks().detach()
    assert float(searcher.flops_model.flops(searcher.flops_model.widths_of(kept), closed_blocks)) == plan.flops
    # Negative control: the same masks with every layer kept are another network.
    with torch.no_grad():
        searcher.gates.beta.fill_(1e4)
        assert not torch.allclose(searcher.gated(x), expected, atol=1e-3 * float(expected.abs().max()))


def test_over_budget_the_penalty_pushes_every_layer_indicator_down():
    searcher = _searcher()
    searcher.lam = 5.0
    penalty, r, _, _ = searcher.budget_terms(searcher.gates())
    assert abs(float(r.detach())) < 0.01  # it starts on the budget, the layers at their start value included
    penalty.backward()
    assert (searcher.gates.beta.grad > 0).all()


def test_binarisation_removes_layers_when_the_narrowest_channels_cannot_meet_the_budget():
    searcher = _searcher(flops="10%", min_keep=64)  # every group at 64 channels: 11.4% with all layers, 9.3% without
    with torch.no_grad():
        searcher.gates.beta.copy_(torch.linspace(1.0, 2.0, len(searcher.blocks)))  # all open, features.11 the least
    plan = searcher.binarize()
    assert plan.removed_blocks and plan.removed_blocks[0] == "features.11"
    assert 0.9 * searcher.flops_target <= plan.flops <= searcher.flops_target
    fresh = create_model("vgg11").eval()
    fresh.load_state_dict(searcher.model.state_dict())
    replayed = ChannelPlan.from_dict(plan.to_dict()).apply(fresh)
    assert ds.count_flops(replayed, SHAPE) == plan.flops


def test_a_layer_search_on_a_small_vgg_meets_its_budget():
    model = CifarVGG([8, 8, 8, "M", 16, 16, "M"])
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(6)]
    search = ds.SearchSpec(epochs=2, recalibrate_batches=1, granularity=("layer", "channel"))
    budget = ds.Budget(budget=ds.BudgetSpec(flops=0.4), search=search)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, batches, batches[:2], torch.zeros(SHAPE), progress=False)
    assert 0.99 <= result.metrics["flops_over_target"] <= 1.0
    assert ds.count_flops(result.pruned, SHAPE) == result.plan.flops
    assert set(result.plan.removed_blocks) <= {"features.3", "features.6", "features.13"}
    out = result.pruned(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_layer_granularity_errors_name_the_problem():
    with pytest.raises(UserError, match="no layer that can be"):
        _searcher("mobilenetv2")
    with pytest.raises(UserError, match="no layer that can be"):  # resnet20's are inside its searched blocks
        _searcher("resnet20", granularity=("block", "layer", "channel"))
    with pytest.raises(UserError, match='"layer"'):
        parse_budget({"version": 1, "model": {"name": "vgg11"}, "search": {"granularity": ["layer"]}})
    with pytest.raises(UserError, match="takes a FLOPs budget"):
        spec = parse_budget({"version": 1, "model": {"name": "vgg11"}, "budget": {"latency": "50%"},
                             "search": {"granularity": ["layer", "channel"]}})  # fmt: skip
        Searcher(create_model("vgg11"), spec, torch.zeros(SHAPE), 4)


def test_a_layer_whose_channels_the_search_drives_to_the_minimum_is_removed():
    searcher = _searcher()
    layer = searcher.blocks[1]  # features.18
    own = next(i for i, g in enumerate(searcher.groups) if [p.name for p in g.producers] == [layer.name])
    with torch.no_grad():
        searcher.gates.beta.fill_(3.0)  # every layer open by its indicator
        searcher.gates.theta[own] = -8.0  # its group kept at ~0 channels: one, the minimum
    plan = searcher.binarize()
    assert plan.removed_blocks == ("features.18",)
    assert 0.99 * searcher.flops_target <= plan.flops <= searcher.flops_target
    searcher.budget = dataclasses.replace(searcher.budget,
                                          search=dataclasses.replace(searcher.budget.search, block_thin=0.0))
    assert searcher.binarize().removed_blocks == ()  # the rule off: the one-channel layer stays
