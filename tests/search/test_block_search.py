"""``granularity = ["block", "channel"]``: block indicators gate residual branches, the FLOPs model
counts a removed block as 0, and binarisation removes whole blocks when the budget needs it."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.channels import ChannelPlan
from dais_search.errors import UserError
from dais_search.search import Searcher

SHAPE = (1, 3, 32, 32)


def _searcher(model="resnet20", **budget) -> Searcher:
    spec = parse_budget({"version": 1, "model": {"name": model}, "budget": {"flops": "30%", **budget},
                         "search": {"epochs": 1, "granularity": ["block", "channel"]}})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Searcher(create_model(model).eval(), spec, torch.zeros(SHAPE), 4)


def test_closed_block_gates_compute_the_model_without_those_blocks():
    torch.manual_seed(0)
    searcher = _searcher()
    names = [b.name for b in searcher.blocks]
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    closed = [0, 3, 6]
    with torch.no_grad():
        searcher.gates.beta.fill_(1e4)  # sigmoid(1e4 / T) = 1: open
        searcher.gates.beta[closed] = -1e4  # sigmoid(-1e4 / T) = 0: those branches are off
    searcher.gates.fixed_masks = [torch.ones(g.size) for g in searcher.groups]  # every channel kept
    x = torch.randn(4, 3, 32, 32)
    searcher.gated.eval()
    with torch.no_grad():
        gated = searcher.gated(x)
    plan = ChannelPlan.create(searcher.model, {}, SHAPE, graph=searcher.graph,
                              removed_blocks=[names[k] for k in closed])  # fmt: skip
    with torch.no_grad():
        expected = plan.apply(searcher.model, searcher.graph).eval()(x)
    assert torch.allclose(gated, expected, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(gated, searcher.model.eval()(x), atol=1e-3)  # the gates did something
    widths = searcher.flops_model.full_widths()
    assert float(searcher.flops_model.flops(widths, searcher.gates.block_masks().detach())) == plan.flops


def test_over_budget_the_penalty_pushes_every_block_indicator_down():
    searcher = _searcher()
    searcher.lam = 5.0  # the multiplier of a search that has been over budget
    penalty, r, _, _ = searcher.budget_terms(searcher.gates())
    assert abs(float(r.detach())) < 0.01  # it starts on the budget, blocks at their start value included
    penalty.backward()
    assert (searcher.gates.beta.grad > 0).all()  # a gradient step lowers every beta


def test_binarisation_removes_blocks_when_the_narrowest_channels_cannot_meet_the_budget():
    searcher = _searcher(flops="12%", min_keep=8)  # all blocks at 8 channels each cost more than 12%
    with torch.no_grad():
        searcher.gates.beta.copy_(torch.linspace(1.0, 2.0, len(searcher.blocks)))  # all open, layer1.0 the least
    plan = searcher.binarize()
    assert plan.removed_blocks and plan.removed_blocks[0] == "layer1.0"
    assert 0.9 * searcher.flops_target <= plan.flops <= searcher.flops_target
    assert plan.removed_blocks == ChannelPlan.from_dict(plan.to_dict()).removed_blocks


def test_block_granularity_errors_name_the_problem():
    with pytest.raises(UserError, match="no residual block"):
        _searcher("vgg16")
    with pytest.raises(UserError, match="granularity"):
        parse_budget({"version": 1, "model": {"name": "resnet20"}, "search": {"granularity": ["block"]}})
    with pytest.raises(UserError, match="takes a FLOPs budget"):
        spec = parse_budget({"version": 1, "model": {"name": "resnet20"}, "budget": {"latency": "50%"},
                             "search": {"granularity": ["block", "channel"]}})  # fmt: skip
        Searcher(create_model("resnet20"), spec, torch.zeros(SHAPE), 4)


def test_a_block_left_with_one_channel_is_removed_and_its_flops_go_to_the_channels():
    searcher = _searcher()
    block = searcher.blocks[1]  # layer1.1
    inner = next(i for i, g in enumerate(searcher.groups) if g.producers
                 and all(p.name in block.modules for p in g.producers))  # fmt: skip
    with torch.no_grad():
        searcher.gates.beta.fill_(3.0)  # every block open by its indicator
        searcher.gates.theta[inner] = -8.0  # its inner group kept at ~0 channels: one, the minimum
    plan = searcher.binarize()
    assert plan.removed_blocks == ("layer1.1",)
    assert 0.99 * searcher.flops_target <= plan.flops <= searcher.flops_target
    searcher.budget = dataclasses.replace(searcher.budget,
                                          search=dataclasses.replace(searcher.budget.search, block_thin=0.0))
    assert searcher.binarize().removed_blocks == ()  # the rule off: the thin block stays
