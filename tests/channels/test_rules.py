"""Op rules on the toy nets: element-wise ops, cat, flatten, reshape/view, slicing, padding, chunking,
reductions, softmax, interpolate; what passes channels through and what blocks them."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_models import (
    Between,
    CatInput,
    Concat,
    Conv1dHead,
    FlattenHead,
    Lambda,
    PerChannel,
    Residual,
    SENet,
    Shuffle,
    SpatialAttention,
    analyse,
    identity,
    names,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    only,
    randomise,
    summary,
)

from dais_search.channels import ChannelPlan, find_channel_groups, random_plan, trace_channels
from dais_search.cost import count_flops

# ----------------------------------------------------------------------------------------------
# Element-wise ops: add and mul tie their operands; per-channel tensors are sliced with them


def test_residual_add_ties_both_producers_into_one_group():
    groups, warned = analyse(Residual())
    assert warned == []
    assert summary(groups) == [("conv_a", 8, True), ("head", 5, False)]
    g = groups[0]
    assert g.id == 0 and groups[1].id == 1
    assert names(g.producers) == ["conv_a", "conv_b"]
    assert all(p.role == "out" for p in g.producers)
    identity(only(g.producers, "conv_a"), 8)
    assert only(g.producers, "conv_a").classes == only(g.producers, "conv_b").classes
    assert only(g.producers, "conv_a").positions == only(g.producers, "conv_b").positions
    assert names(g.consumers) == ["head"] and only(g.consumers, "head").role == "in"
    identity(only(g.consumers, "head"), 8)
    bn = only(g.members, "bn")
    assert bn.role == "ch"
    identity(bn, 8)
    assert g.blocks is None and g.min_keep == 1 and g.round_to == 1


def test_squeeze_excitation_ties_the_gate_to_its_input():
    groups, warned = analyse(SENet())
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("se.fc1", 2, True), ("head", 5, False)]
    x, hidden = groups[0], groups[1]
    assert names(x.producers) == ["conv", "se.fc2"]
    identity(only(x.producers, "se.fc2"), 8)
    assert names(x.consumers) == ["se.fc1", "head"]
    assert names(x.members) == ["bn"]
    assert names(hidden.producers) == ["se.fc1"] and names(hidden.consumers) == ["se.fc2"]
    identity(only(hidden.consumers, "se.fc2"), 2)


def test_single_channel_map_broadcast_over_channels():
    groups, warned = analyse(SpatialAttention())
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("att", 1, False), ("head", 5, False)]
    assert groups[1].reason.startswith("one channel broadcast over 8")
    assert names(groups[0].consumers) == ["att", "head"]


@pytest.mark.parametrize(("kind", "path", "role"), [("param", "mid.gamma", "dim0"), ("buffer", "mid.shift", "dim1")])
def test_per_channel_tensor_is_a_sliced_member(kind, path, role):
    groups, warned = analyse(Between(PerChannel(kind), 8))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    member = only(groups[0].members, path)
    assert member.role == role
    identity(member, 8)


def test_per_channel_constant_made_in_forward_blocks():
    model = Between(PerChannel("arange"), 8)
    groups, _ = analyse(model)
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]

# ----------------------------------------------------------------------------------------------
# Concatenation


def test_concat_keeps_groups_separate_with_offsets():
    groups, warned = analyse(Concat())
    assert warned == []
    assert summary(groups) == [("conv_a", 4, True), ("conv_b", 6, True), ("conv_c", 5, False)]
    a, b = groups[0], groups[1]
    identity(only(a.consumers, "conv_c"), 4, offset=0)
    identity(only(b.consumers, "conv_c"), 6, offset=4)
    assert names(a.members) == ["bn_a"] and b.members == []


def test_concat_along_spatial_dim_ties_the_operands():
    groups, warned = analyse(Concat(dim=2))
    assert warned == []
    assert summary(groups) == [("conv_a", 4, True), ("conv_c", 5, False)]
    assert names(groups[0].producers) == ["conv_a", "conv_b"]
    identity(only(groups[0].consumers, "conv_c"), 4)


def test_concat_with_the_input_and_with_itself():
    groups, warned = analyse(CatInput())
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("head", 5, False)]
    identity(only(groups[0].consumers, "head"), 4, offset=3)
    groups, warned = analyse(CatInput(twice=True))
    assert warned == []
    head = only(groups[0].consumers, "head")
    assert head.positions == tuple(range(8)) and head.classes == (0, 1, 2, 3, 0, 1, 2, 3)

# ----------------------------------------------------------------------------------------------
# Flatten, view and reshape


@pytest.mark.parametrize("mode", ["torch", "method", "module"])
def test_flatten_repeats_each_channel_over_its_features(mode):
    groups, warned = analyse(FlattenHead(mode), shape=(2, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("fc", 5, False)]
    fc = only(groups[0].consumers, "fc")
    assert fc.positions == tuple(range(36))
    assert fc.classes == tuple(c for c in range(4) for _ in range(9))
    assert names(groups[0].members) == ["bn"]


@pytest.mark.parametrize("mode", ["view", "reshape"])
def test_view_batch_minus_one_works_like_flatten(mode):
    groups, warned = analyse(FlattenHead(mode), shape=(2, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("fc", 5, False)]
    assert only(groups[0].consumers, "fc").classes == tuple(c for c in range(4) for _ in range(9))


@pytest.mark.parametrize("mode", ["view", "reshape"])
def test_view_batch_minus_one_with_batch_size_one(mode):
    groups, warned = analyse(FlattenHead(mode), shape=(1, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("fc", 5, False)]


def test_channel_shuffle_view_blocks():
    with pytest.warns(UserWarning, match=r"Tensor\.view \(at mid\)"):
        groups = find_channel_groups(Between(Shuffle(), 8), torch.randn(2, 3, 6, 6))
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert groups[0].reason == "Tensor.view at mid"


@pytest.mark.parametrize("batch", [1, 2])
def test_view_with_a_literal_channel_count_blocks(batch):
    with pytest.warns(UserWarning, match=r"Tensor\.view"):
        groups = find_channel_groups(Conv1dHead(literal=True), torch.randn(batch, 3, 3, 3))
    assert summary(groups) == [("conv", 16, False), ("head", 5, False)]


def test_view_with_computed_channel_count_batch_size_one():
    groups, warned = analyse(Conv1dHead(literal=False), shape=(1, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 16, True), ("head", 5, False)]


def test_view_with_computed_channel_count_passes():
    groups, warned = analyse(Conv1dHead(literal=False), shape=(2, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 16, True), ("head", 5, False)]
    identity(only(groups[0].consumers, "head"), 16)

# ----------------------------------------------------------------------------------------------
# Channel padding, slicing, narrowing and chunking are followed; other channel selections block;
# spatial ones pass channels on


def _chunk_add(x):
    a, b = x.chunk(2, dim=1)
    return a + b


def _torch_chunk_mul(x):
    a, b = torch.chunk(x, 2, 1)
    return a * b


def _split_cat(x):
    a, b = torch.split(x, [3, 5], dim=1)
    return torch.cat([b, a.relu()], 1)


@pytest.mark.parametrize(
    ("fn", "head_in", "expected"),
    [
        # The padded channels are constants no layer produces: the head keeps reading them.
        (lambda x: F.pad(x, (0, 0, 0, 0, 2, 2)), 12, [("conv", 8, True), ("head", 5, False)]),
        # The channels a slice drops are read by nobody: a group of their own (the conv alone).
        (lambda x: x[:, :4], 4, [("conv", 4, True), ("conv", 4, True), ("head", 5, False)]),
        (lambda x: x[:, 4:], 4, [("conv", 4, True), ("conv", 4, True), ("head", 5, False)]),
        (lambda x: x.narrow(1, 2, 3), 3, [("conv", 5, True), ("conv", 3, True), ("head", 5, False)]),
        # Adding (multiplying) the two halves makes channel c and c + 4 one channel: 4 of them.
        (_chunk_add, 4, [("conv", 4, True), ("head", 5, False)]),
        (_torch_chunk_mul, 4, [("conv", 4, True), ("head", 5, False)]),
        # Every channel reaches the head once, in another order: one group.
        (_split_cat, 8, [("conv", 8, True), ("head", 5, False)]),
    ],
    ids=["pad", "slice-head", "slice-tail", "narrow", "chunk-method", "chunk-function", "split-cat"],
)
def test_channel_pad_slice_narrow_and_chunk_are_followed(fn, head_in, expected):
    model = Between(Lambda(fn), head_in)
    groups, warned = analyse(model)
    assert warned == []
    assert summary(groups) == expected
    graph = trace_channels(model, torch.randn(2, 3, 6, 6))
    assert [op.owner for op in graph.index_ops] == ["mid"]
    # Pruned (the op rewritten with the pruned constants) equals masked, for plans keeping 1, 2, ... channels.
    model = randomise(model)
    x = torch.randn(3, 3, 6, 6)
    for seed in range(4):
        plan = random_plan(model, (1, 3, 6, 6), keep=0.3 + 0.15 * seed, seed=seed)
        pruned = plan.apply(model)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)
        assert count_flops(pruned, (1, 3, 6, 6)) == plan.flops


class PadResidual(nn.Module):
    """The option-A shortcut in small: a's 4 channels padded by 2 + 2 zeros, added to b's 8."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 5, 1)
        self.shortcut = Lambda(lambda x: F.pad(x, (0, 0, 0, 0, 2, 2)))

    def forward(self, x):
        return self.head(torch.relu(self.shortcut(self.a(x)) + self.b(x)))


def test_a_padded_shortcut_makes_two_groups_and_prunes_both():
    groups, warned = analyse(PadResidual())
    assert warned == []
    # a's channels (b's positions 2-5 too) and the padded ones (b's 0, 1, 6, 7): two groups.
    assert summary(groups) == [("a", 4, True), ("b", 4, True), ("head", 5, False)]
    assert only(groups[0].producers, "b").positions == (2, 3, 4, 5)
    assert only(groups[1].producers, "b").positions == (0, 1, 6, 7)
    model, x = randomise(PadResidual()), torch.randn(3, 3, 6, 6)
    plan = ChannelPlan.create(model, {0: [1, 2], 1: [0, 3]}, (1, 3, 6, 6))  # pads kept: 1 before, 1 after
    pruned = plan.apply(model)
    assert isinstance(pruned.shortcut, torch.fx.GraphModule)
    assert "(0, 0, 0, 0, 1, 1)" in pruned.shortcut.code
    assert pruned.b.out_channels == 4 and pruned.a.out_channels == 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.jit.script(pruned)(x), pruned(x))  # the rewritten module scripts
        # The negative controls: the dense pad amounts do not fit; pads kept on the wrong side differ.
        pruned.shortcut = model.shortcut
        with pytest.raises(RuntimeError):
            pruned(x)
        pruned.shortcut = Lambda(lambda t: F.pad(t, (0, 0, 0, 0, 2, 0)))
        assert not torch.allclose(pruned(x), plan.mask(model)(x), atol=1e-3)
    assert count_flops(plan.apply(model), (1, 3, 6, 6)) == plan.flops


class _RootPad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.head(F.pad(self.conv(x), (0, 0, 0, 0, 2, 2)))


@pytest.mark.parametrize(
    ("model", "op", "where"),
    [
        (Between(Lambda(lambda x: x[:, [0, 2, 4]]), 3), "getitem", "mid"),
        (Between(Lambda(lambda x: x[:, ::2]), 4), "getitem", "mid"),
        (_RootPad(), "pad", "(model)"),
    ],
    ids=["index-list", "slice-step", "pad-in-root-forward"],
)
def test_other_channel_selections_block(model, op, where):
    with pytest.warns(UserWarning, match=rf"cannot follow channels through {op} \(at {re.escape(where)}\)"):
        groups = find_channel_groups(model, torch.randn(2, 3, 6, 6))
    assert not groups[0].prunable and groups[0].reason == f"{op} at {where}"


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x[:, :, ::2],
        lambda x: x[..., 1:],
        lambda x: x[:, :, 1:-1, ::2],
        lambda x: F.pad(x, (1, 1, 1, 1)),
        lambda x: F.pad(x, (0, 0, 2, 0), mode="replicate"),
        lambda x: torch.cat(x.chunk(2, dim=2), 3),
    ],
    ids=["slice-h", "ellipsis", "slice-hw", "pad-hw", "pad-h-replicate", "chunk-h"],
)
def test_spatial_pad_slice_and_chunk_do_not_block(fn):
    groups, warned = analyse(Between(Lambda(fn), 8))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    identity(only(groups[0].consumers, "head"), 8)

# ----------------------------------------------------------------------------------------------
# Reductions, softmax and resizing


@pytest.mark.parametrize(
    ("fn", "op"),
    [(lambda x: x - x.mean(1, keepdim=True), "Tensor.mean"), (lambda x: x.softmax(1), "Tensor.softmax"),
     (lambda x: x - x.sum(), "Tensor.sum")],
    ids=["mean-channels", "softmax-channels", "sum-all"],
)  # fmt: skip
def test_ops_mixing_channels_block(fn, op):
    mid = Lambda(fn)
    with pytest.warns(UserWarning, match=rf"through {op} \(at mid\)"):
        groups = find_channel_groups(Between(mid, 8), torch.randn(2, 3, 6, 6))
    assert groups[0].name == "conv" and groups[0].reason == f"{op} at mid"


def test_functional_interpolate_passes_channels_like_upsample():
    groups, warned = analyse(Between(Lambda(lambda x: F.interpolate(x, scale_factor=2)), 8))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
