"""Channel-group assembly: model inputs and outputs, ignore, partial producers, the warnings naming
what blocks pruning, and the groups of the built-in models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toy_models import (
    Between,
    CatPlusConv,
    DataDependent,
    InputResidual,
    Lambda,
    TwoBranches,
    TwoConvs,
    TwoOutputs,
    WithAttention,
    analyse,
    group_of,
    identity,
    names,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    only,
    summary,
)

from dais_search.channels import ChannelPlan, find_channel_groups, trace_channels
from dais_search.errors import UserError
from dais_search.models import create_model

# ----------------------------------------------------------------------------------------------
# Model inputs and outputs, ignore


def test_model_output_is_never_prunable():
    groups, warned = analyse(TwoConvs())
    assert warned == []
    assert summary(groups) == [("conv1", 8, True), ("conv2", 6, True), ("fc", 5, False)]
    assert "model output" in groups[-1].reason
    # Two outputs: both are fixed, the rest stays prunable.
    groups, _ = analyse(TwoOutputs())
    assert summary(groups) == [("conv_a", 8, False), ("conv_b", 8, True), ("head", 5, False)]
    assert "model output" in groups[0].reason and "model output" in groups[2].reason


def test_adding_the_model_input_fixes_the_group():
    groups, _ = analyse(InputResidual())
    assert summary(groups) == [("conv", 3, False), ("conv2", 4, True), ("head", 5, False)]
    assert groups[0].reason == "model input"


def test_ignore_fixes_that_layer_only():
    model = TwoConvs()
    for ignore in (["conv1"], [model.conv1]):
        groups, _ = analyse(model, ignore=ignore)
        assert summary(groups) == [("conv1", 8, False), ("conv2", 6, True), ("fc", 5, False)]
        assert groups[0].reason == "ignored: conv1"


def test_ignore_of_a_missing_layer_raises():
    with pytest.raises(ValueError, match="conv9"):
        find_channel_groups(TwoConvs(), torch.randn(1, 3, 6, 6), ignore=["conv9"])

# ----------------------------------------------------------------------------------------------
# A producer seeing part of a group


def test_producers_seeing_parts_of_a_sum_make_one_group_per_part():
    # b's channels are a's followed by c's: a's four (seen by a and b) and c's four (by c and b) are two
    # groups, numbered where they are first produced.
    groups, warned = analyse(CatPlusConv())
    assert warned == []
    assert summary(groups) == [("a", 4, True), ("c", 4, True), ("head", 5, False)]
    first, second = groups[0], groups[1]
    assert names(first.producers) == ["a", "b"] and names(second.producers) == ["c", "b"]
    assert only(first.producers, "b").positions == (0, 1, 2, 3)
    assert only(second.producers, "b").positions == (4, 5, 6, 7)
    assert only(second.producers, "c").classes == (0, 1, 2, 3)

# ----------------------------------------------------------------------------------------------
# Unknown functions and modules: blocked, warned once


@pytest.mark.parametrize(
    ("op1", "op2", "op", "where"),
    [
        (Lambda(lambda x: torch.cumsum(x, 1)), Lambda(lambda x: torch.cumsum(x, 1)), "cumsum", ["op1", "op2"]),
        (DataDependent(), DataDependent(), "DataDependent", ["op1", "op2"]),
        (Lambda(lambda x: torch.fft.fft2(x).real), nn.Identity(), "fft_fft2", ["op1"]),
    ],
    ids=["cumsum", "untraceable-module", "fft2"],
)
def test_unknown_ops_block_what_they_touch_and_warn_once(op1, op2, op, where):
    groups, warned = analyse(TwoBranches(op1, op2))
    b_blocked = "op2" in where
    expected = [("conv_a", 4, False), ("conv_b", 4, not b_blocked), ("conv_c", 6, True), ("head", 5, False)]
    assert summary(groups) == expected
    assert groups[0].reason == f"{op} at op1"
    if b_blocked:
        assert groups[1].reason == f"{op} at op2"
    assert len(warned) == 1, warned
    assert f"cannot follow channels through {op} (at {', '.join(where)})" in warned[0]
    identity(only(groups[2].consumers, "head"), 6, offset=4)


def test_unknown_leaf_module_multihead_attention_blocks_its_input():
    groups, warned = analyse(WithAttention())
    assert summary(groups) == [("conv_a", 8, False), ("conv_b", 6, True), ("fc", 5, False)]
    assert groups[0].reason == "MultiheadAttention at attn"
    assert len(warned) == 1 and "MultiheadAttention (at attn)" in warned[0]
    fc = only(groups[1].consumers, "fc")
    identity(fc, 6, offset=8)


def test_warning_lists_at_most_three_places():
    mid = nn.Sequential(*[Lambda(lambda x: torch.cumsum(x, 1)) for _ in range(5)])
    groups, warned = analyse(Between(mid, 8))
    assert groups[0].reason == "cumsum at mid.0"
    assert len(warned) == 1
    assert "cumsum (at mid.0, mid.1, mid.2 and 2 more)" in warned[0]

# ----------------------------------------------------------------------------------------------
# The built-in models


@pytest.fixture(scope="module")
def resnet20_groups():
    return analyse(create_model("resnet20"), shape=(1, 3, 32, 32))


def test_resnet20_option_a_prunes_inner_groups_and_the_streams_through_the_pads(resnet20_groups):
    groups, warned = resnet20_groups
    assert warned == []  # the shortcut's channel pad is followed
    inner = [g for g in groups if g.prunable and g.name.endswith("conv1") and g.name != "conv1"]
    assert [g.size for g in inner] == [16] * 3 + [32] * 3 + [64] * 3
    assert [g.name for g in inner] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    for g in inner:
        assert names(g.producers) == [g.name]
        assert names(g.consumers) == [g.name.replace("conv1", "conv2")]
        assert names(g.members) == [g.name.replace("conv1", "bn1")]
    # The residual stream: stage 1's 16 channels run through stages 2 and 3 (in the middle of the padded
    # ones), the 16 that stage 2's pad adds through stage 3, and stage 3's own 32: three groups.
    streams = [g for g in groups if g.prunable and g not in inner]
    assert [(g.name, g.size) for g in streams] == [("conv1", 16), ("layer2.0.conv2", 16), ("layer3.0.conv2", 32)]
    one, two, three = streams
    assert only(one.producers, "layer2.2.conv2").positions == tuple(range(8, 24))
    assert only(one.producers, "layer3.0.conv2").positions == tuple(range(24, 40))
    assert only(two.producers, "layer3.1.conv2").positions == (*range(16, 24), *range(40, 48))
    assert only(three.producers, "layer3.2.conv2").positions == (*range(16), *range(48, 64))
    assert "linear" in names(three.consumers) and "layer1.0.conv1" not in names(two.consumers)
    assert [g.name for g in groups if not g.prunable] == ["linear"]


def test_resnet20_option_b_prunes_everything_but_the_logits():
    groups, warned = analyse(create_model("resnet20_b"), shape=(1, 3, 32, 32))
    assert warned == []
    assert [g.name for g in groups if not g.prunable] == ["linear"]
    streams = [g for g in groups if len(g.producers) > 1]
    assert [g.size for g in streams] == [16, 32, 64]
    assert "layer2.0.shortcut.0" in names(streams[1].producers)
    assert len(groups) == 9 + 3 + 1


def test_mobilenetv2_depthwise_convs_are_consumer_and_producer():
    model = create_model("mobilenetv2")
    groups, warned = analyse(model, shape=(1, 3, 32, 32))
    assert warned == []
    depthwise = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    for path in depthwise:
        g = group_of(groups, path)
        assert path in names(g.consumers)
        identity(only(g.producers, path), g.size)
        identity(only(g.consumers, path), g.size)


def test_group_ids_are_stable(resnet20_groups):
    first, _ = resnet20_groups
    second, _ = analyse(create_model("resnet20"), shape=(1, 3, 32, 32))
    assert [g.id for g in first] == list(range(len(first)))
    assert [(g.id, g.size, g.name, g.prunable) for g in first] == [(g.id, g.size, g.name, g.prunable) for g in second]
    assert first == second


def test_streams_false_keeps_every_residual_stream_whole():
    model = create_model("resnet20")
    graph = trace_channels(model, torch.zeros(1, 3, 32, 32), streams=False)
    kept_whole = [g for g in graph.groups if not g.prunable and g.name != "linear"]
    assert [g.name for g in kept_whole] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert all(g.reason == "a residual stream (budget.prune_streams = false)" for g in kept_whole)
    assert sum(g.prunable for g in graph.groups) == 9  # the inner groups
    # A plan made with the streams whole replays on the default analysis, and one that cuts a stream is refused.
    inner = {g.id: [0] for g in graph.groups if g.prunable}
    assert ChannelPlan.create(model, inner, (1, 3, 32, 32), graph=graph).apply(model) is not None
    with pytest.raises(UserError, match="a residual stream"):
        ChannelPlan.create(model, {kept_whole[0].id: [0]}, (1, 3, 32, 32), graph=graph)
