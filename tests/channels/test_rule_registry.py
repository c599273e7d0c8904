"""The op-rule registry (``register_function``): targets are unique, and a rule registered for a user
function the analysis does not know makes the groups it touches prunable, and correctly so."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_models import (
    Between,
    Lambda,
    analyse,
    identity,
    names,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    only,
    randomise,
    summary,
)

from dais_search.channels import check_plan, random_plan, register_function
from dais_search.channels import rules as channel_rules

# fx traces into plain Python functions; wrapped ones stay single call_function nodes, which the
# analysis looks up in the registry (without a rule: opaque).
torch.fx.wrap("swish_gate")
torch.fx.wrap("roll_channels")


def swish_gate(x):
    """Channel-wise: every channel of the output depends on that channel of the input only."""
    return x * torch.sigmoid(x)


def roll_channels(x):
    """Moves every channel's values to the next channel: a pass-through rule for it is wrong."""
    return x.roll(1, dims=1)


class UserOp(nn.Module):
    """BN -> a user function; as ``Between``'s mid the function sits between conv and head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(x)
        return swish_gate(y) if self.kind == "swish" else roll_channels(y)


def pass_through(w, node, args, kwargs, shape):
    """Channels pass through unchanged."""
    return args[0]


@pytest.fixture
def registry():
    """Removes from the rule tables whatever the test registered."""
    tables = (channel_rules.FUNCTION_RULES, channel_rules.METHOD_RULES)
    before = [set(table) for table in tables]
    yield
    for table, keys in zip(tables, before, strict=True):
        table.unregister(*(set(table) - keys))


@pytest.mark.parametrize(
    ("target", "name"),
    [(torch.cat, "cat"), (F.relu, "relu"), (operator.add, "add"), ("view", "'view'"), ("flatten", "'flatten'")],
)
def test_registering_a_target_that_has_a_rule_is_refused(registry, target, name):
    table = channel_rules.METHOD_RULES if isinstance(target, str) else channel_rules.FUNCTION_RULES
    built_in = table.lookup(target)
    with pytest.raises(ValueError, match=rf"a channel rule for {name} is already registered"):
        register_function(target)(pass_through)
    assert table.lookup(target) is built_in


def test_a_rule_for_a_user_function_makes_its_group_prunable(registry):
    model = randomise(Between(UserOp("swish"), 8))
    groups, warned = analyse(model)
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert groups[0].reason == "swish_gate at mid"
    assert len(warned) == 1 and "cannot follow channels through swish_gate (at mid)" in warned[0]

    assert register_function(swish_gate)(pass_through) is pass_through
    groups, warned = analyse(model)
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    assert names(groups[0].members) == ["mid.bn"]
    identity(only(groups[0].consumers, "head"), 8)

    plan = random_plan(model, (1, 3, 6, 6), keep=0.5, seed=0)
    assert len(plan.kept[0]) == 4 and plan.flops < plan.dense_flops
    pruned, masked = plan.apply(model), plan.mask(model)
    assert pruned.conv.out_channels == pruned.mid.bn.num_features == pruned.head.in_channels == 4
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        masked_out = masked(x)
        torch.testing.assert_close(pruned(x), masked_out, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x), masked_out, atol=1e-4)
        # Negative control: a kept output channel of the pruned conv, changed, shows.
        pruned.conv.weight[0] = -2 * pruned.conv.weight[0] + 0.5
        assert not torch.allclose(pruned(x), masked_out, atol=1e-3)
    assert check_plan(model, plan, x).ok


def test_a_wrong_rule_is_caught_by_check_plan(registry):
    model = Between(UserOp("roll"), 8)
    _, warned = analyse(model)
    assert len(warned) == 1 and "roll_channels (at mid)" in warned[0]
    register_function(roll_channels)(pass_through)  # claims channels stay put: they do not
    plan = random_plan(model, (1, 3, 6, 6), keep=0.5, seed=0)
    assert len(plan.kept[0]) == 4
    report = check_plan(model, plan, torch.randn(3, 3, 6, 6))
    assert report.output_shape == report.expected_shape
    assert not report.ok and report.max_rel_error > 1e-2


def test_a_rule_for_a_tensor_method_by_name(registry):
    model = Between(Lambda(lambda x: x.sin()), 8)
    groups, warned = analyse(model)
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert len(warned) == 1 and "Tensor.sin (at mid)" in warned[0]
    register_function("sin")(pass_through)
    groups, warned = analyse(model)
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    plan = random_plan(model, (1, 3, 6, 6), keep=0.5, seed=1)
    assert check_plan(model, plan, torch.randn(3, 3, 6, 6)).ok


def test_registrations_of_other_tests_are_gone():
    """The fixture removed what the tests above registered (run after them, in file order)."""
    assert swish_gate not in channel_rules.FUNCTION_RULES and roll_channels not in channel_rules.FUNCTION_RULES
    assert "sin" not in channel_rules.METHOD_RULES
