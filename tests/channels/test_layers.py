"""Module handlers on the toy nets: depthwise, grouped and shared convs, linear layers over channels-last
tensors, norms, and layers that pass channels through."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn
from toy_models import (
    Between,
    ConvNeXtNet,
    Depthwise,
    Grouped,
    Lambda,
    Norms,
    SharedConv,
    Tokens,
    analyse,
    identity,
    names,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    only,
    summary,
)

# ----------------------------------------------------------------------------------------------
# Depthwise, grouped and shared convs


def test_depthwise_conv_ties_its_input_and_output():
    groups, warned = analyse(Depthwise())
    assert warned == []
    assert summary(groups) == [("pw", 8, True), ("head", 5, False)]
    g = groups[0]
    assert names(g.producers) == ["pw", "dw"]
    assert names(g.consumers) == ["dw", "head"]
    assert names(g.members) == ["bn", "bn2"]
    for m in (*g.producers, *g.consumers, *g.members):
        identity(m, 8)
    assert g.blocks is None and g.min_keep == g.round_to == 1


def test_grouped_conv_with_equal_widths_gives_blocks():
    groups, warned = analyse(Grouped(out=8))
    assert warned == []
    assert summary(groups) == [("pw", 8, True), ("head", 5, False)]
    g = groups[0]
    assert names(g.producers) == ["pw", "gconv"]
    assert names(g.consumers) == ["gconv", "head"]
    assert g.blocks == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert g.round_to == g.min_keep == 2


def test_grouped_conv_with_different_widths_is_not_pruned():
    groups, _ = analyse(Grouped(out=16))
    assert summary(groups) == [("pw", 8, False), ("gconv", 16, False), ("head", 5, False)]
    for g in groups[:2]:
        assert "grouped conv gconv" in g.reason


def test_shared_conv_ties_its_input_to_its_output():
    groups, warned = analyse(SharedConv())
    assert warned == []
    assert summary(groups) == [("stem", 8, True), ("head", 5, False)]
    assert names(groups[0].producers) == ["stem", "conv"]
    assert names(groups[0].consumers) == ["conv", "head"]

# ----------------------------------------------------------------------------------------------
# Linear layers over channels-last tensors (tokens, ConvNeXt)


def test_linear_over_token_channels():
    groups, warned = analyse(Tokens())
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("fc", 5, False)]
    identity(only(groups[0].consumers, "fc"), 8)


def test_convnext_mlp_hidden_group_is_prunable():
    groups, warned = analyse(ConvNeXtNet(norm=True))
    assert summary(groups) == [("stem", 8, False), ("block.pw1", 32, True), ("head", 5, False)]
    assert groups[0].reason == "LayerNorm at block.norm"
    assert len(warned) == 1 and "LayerNorm" in warned[0]
    hidden = groups[1]
    assert names(hidden.consumers) == ["block.pw2"]
    identity(only(hidden.consumers, "block.pw2"), 32)


def test_convnext_stream_without_norm_ties_dwconv_pw2_and_layer_scale():
    groups, warned = analyse(ConvNeXtNet(norm=False))
    assert warned == []
    assert summary(groups) == [("stem", 8, True), ("block.pw1", 32, True), ("head", 5, False)]
    stream = groups[0]
    assert names(stream.producers) == ["stem", "block.dwconv", "block.pw2"]
    assert names(stream.consumers) == ["block.dwconv", "block.pw1", "head"]
    gamma = only(stream.members, "block.gamma")
    assert gamma.role == "dim0"
    identity(gamma, 8)

# ----------------------------------------------------------------------------------------------
# Norms


@pytest.mark.parametrize(
    ("norm", "channels_last"),
    [(nn.LayerNorm(8), True), (nn.LayerNorm([8, 6, 6]), False), (Lambda(lambda x: F.layer_norm(x, (8,))), True)],
    ids=["module-channels-last", "module-chw", "functional"],
)
def test_layer_norm_over_channels_blocks(norm, channels_last):
    groups, warned = analyse(Norms(norm, channels_last))
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    op = "layer_norm" if isinstance(norm, Lambda) else "LayerNorm"
    assert groups[0].reason == f"{op} at norm"
    assert len(warned) == 1 and f"{op} (at norm)" in warned[0]


def test_layer_norm_over_spatial_dims_passes_channels():
    groups, warned = analyse(Norms(nn.LayerNorm([6, 6])))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]


@pytest.mark.parametrize(
    ("num_groups", "blocks"),
    [(4, [(0, 1), (2, 3), (4, 5), (6, 7)]), (2, [(0, 1, 2, 3), (4, 5, 6, 7)]), (8, None)],
)
def test_group_norm_gives_blocks_of_its_width(num_groups, blocks):
    groups, warned = analyse(Norms(nn.GroupNorm(num_groups, 8)))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    g = groups[0]
    assert g.blocks == blocks
    assert g.round_to == g.min_keep == 8 // num_groups
    assert names(g.members) == ["norm"] and g.members[0].role == "ch"

# ----------------------------------------------------------------------------------------------
# Layers that pass channels through


@pytest.mark.parametrize(
    ("mid", "member"),
    [(nn.PReLU(8), "mid"), (nn.PReLU(), None), (nn.InstanceNorm2d(8, affine=True), "mid"),
     (nn.Upsample(scale_factor=2), None), (nn.MaxPool2d(2), None),
     (Lambda(lambda x: F.adaptive_max_pool2d(x, 2)), None), (Lambda(lambda x: x.softmax(-1)), None),
     (Lambda(lambda x: F.leaky_relu(x, 0.1).clamp(-1, 1)), None)],
    ids=["prelu", "prelu-1", "instancenorm", "upsample", "maxpool", "adaptive-pool", "softmax-w", "activations"],
)  # fmt: skip
def test_pass_through_layers(mid, member):
    groups, warned = analyse(Between(mid, 8))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]
    assert names(groups[0].members) == ([member] if member else [])
    identity(only(groups[0].consumers, "head"), 8)
