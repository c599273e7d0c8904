"""Channel gates: hard masks, gated model == pruned model, gradients per search mode."""

from __future__ import annotations

import warnings

import pytest
import torch

from dais_search import create_model
from dais_search.channels import random_plan, trace_channels
from dais_search.search.gates import ChannelGates, attach_gates


def _graph(name, size=32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, num_classes=10).eval()
        return model, trace_channels(model, torch.zeros(1, 3, size, size))


def test_hard_mask_agrees_with_soft_masks_at_low_temperature():
    _, graph = _graph("resnet8")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, "dais+dsa", [torch.randn(g.size) for g in groups], keep=0.4, temperature=1e-3)
    for soft, hard, group in zip(gates(), gates.hard_mask(), groups, strict=True):
        assert torch.equal(soft > 0.5, hard)
        assert int(hard.sum()) == round(0.4 * group.size)
    assert torch.allclose(gates.expected_width(), torch.tensor([0.4 * g.size for g in groups]), atol=1e-3)


def test_hard_gates_equal_the_pruned_model():
    model, graph = _graph("resnet20_b")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, "dais", temperature=1e-3)
    gated = attach_gates(graph, gates).eval()
    plan = random_plan(model, (1, 3, 32, 32), seed=0, graph=graph)
    with torch.no_grad():
        for i, gid in enumerate(gates.group_ids):
            alpha = gates.alpha[i]
            alpha.fill_(10.0)
            if gid in plan.kept:
                removed = torch.ones(alpha.numel(), dtype=torch.bool)
                removed[plan.kept[gid]] = False
                alpha[removed] = -10.0
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(gated(x), plan.apply(model)(x), rtol=1e-4, atol=1e-4)
        gates.alpha[0][plan.kept.get(gates.group_ids[0], [0])[0]] = -10.0  # negative control
        assert not torch.allclose(gated(x), plan.apply(model)(x), rtol=1e-4, atol=1e-4)
    assert gates.binarization_gap() < 1e-3


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
def test_gradients_reach_indicators_and_ratios(mode):
    model, graph = _graph("resnet8")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, mode, [torch.randn(g.size) for g in groups], keep=0.6, temperature=0.5)
    gated = attach_gates(graph, gates).train()
    loss = torch.nn.functional.cross_entropy(gated(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    alpha_grads = [a.grad for a in gates.alpha]
    if mode == "dsa":
        assert all(g is None or not g.any() for g in alpha_grads), "dsa scores are fixed"
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in alpha_grads)
    if mode == "dais":
        assert gates.theta.grad is None or not gates.theta.grad.any()
    else:
        assert gates.theta.grad is not None and (gates.theta.grad != 0).all()
