"""Op rules on the toy nets: element-wise ops, cat, flatten, reshape/view, slicing, padding, chunking,
reductions, softmax, interpolate; what passes channels through and what blocks them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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
    summary,
)

from dais_search.channels import find_channel_groups

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
# Channel padding, slicing and chunking block; spatial ones do not


def _chunk_add(x):
    a, b = x.chunk(2, dim=1)
    return a + b


def _torch_chunk_mul(x):
    a, b = torch.chunk(x, 2, 1)
    return a * b


@pytest.mark.parametrize(
    ("fn", "head_in", "op"),
    [
        (lambda x: F.pad(x, (0, 0, 0, 0, 2, 2)), 12, "pad"),
        (lambda x: x[:, :4], 4, "getitem"),
        (lambda x: x[:, 4:], 4, "getitem"),
        (lambda x: x[:, [0, 2, 4]], 3, "getitem"),
        (_chunk_add, 4, "Tensor.chunk"),
        (_torch_chunk_mul, 4, "chunk"),
    ],
    ids=["pad", "slice-head", "slice-tail", "index-list", "chunk-method", "chunk-function"],
)
def test_channel_pad_slice_and_chunk_block(fn, head_in, op):
    with pytest.warns(UserWarning, match=rf"cannot follow channels through {op} \(at mid\)"):
        groups = find_channel_groups(Between(Lambda(fn), head_in), torch.randn(2, 3, 6, 6))
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert groups[0].reason == f"{op} at mid"


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
