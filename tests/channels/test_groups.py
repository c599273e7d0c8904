"""Channel-group coupling rules on tiny hand-written nets, the built-in models, and plans end to end."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dais_search.channels import ChannelGroup, ChannelPlan, Member, find_channel_groups, random_plan
from dais_search.errors import UserError
from dais_search.models import create_model

# ----------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: intra-op threads only add overhead (and contend on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def analyse(model: nn.Module, shape=(2, 3, 6, 6), ignore=()) -> tuple[list[ChannelGroup], list[str]]:
    """The groups of ``model`` and the messages of the dais_search warnings it raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        groups = find_channel_groups(model, torch.randn(*shape), ignore=ignore)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    return groups, [m for m in messages if m.startswith("dais_search:")]


def group_of(groups: list[ChannelGroup], producer: str) -> ChannelGroup:
    """The group whose producers include the module ``producer``."""
    found = [g for g in groups if any(p.name == producer for p in g.producers)]
    assert len(found) == 1, f"{producer} produces channels of {len(found)} groups"
    return found[0]


def only(members: list[Member], name: str) -> Member:
    found = [m for m in members if m.name == name]
    assert len(found) == 1, f"{name}: {len(found)} members in {members}"
    return found[0]


def names(members: list[Member]) -> list[str]:
    return [m.name for m in members]


def identity(member: Member, n: int, offset: int = 0) -> None:
    """``member`` covers positions offset..offset+n-1 holding classes 0..n-1 in order."""
    assert member.positions == tuple(range(offset, offset + n))
    assert member.classes == tuple(range(n))


def summary(groups: list[ChannelGroup]) -> list[tuple[str, int, bool]]:
    return [(g.name, g.size, g.prunable) for g in groups]


# ----------------------------------------------------------------------------------------------
# Tiny nets


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv_a(x))) + self.conv_b(x))


class Concat(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(3, 6 if dim == 1 else 4, 1)
        self.conv_c = nn.Conv2d(10 if dim == 1 else 4, 5, 1)

    def forward(self, x):
        return self.conv_c(F.relu(torch.cat([self.bn_a(self.conv_a(x)), self.conv_b(x)], self.dim)))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(F.relu6(self.bn2(self.dw(F.relu6(self.bn(self.pw(x)))))))


class Grouped(nn.Module):
    def __init__(self, out: int = 8) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.gconv = nn.Conv2d(8, out, 3, padding=1, groups=4)
        self.head = nn.Conv2d(out, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.gconv(F.relu(self.bn(self.pw(x))))))


class FlattenHead(nn.Module):
    """conv (4 channels, 3x3 spatial) -> flatten -> linear."""

    def __init__(self, mode: str = "torch") -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(36, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        if self.mode == "torch":
            y = torch.flatten(y, 1)
        elif self.mode == "method":
            y = y.flatten(1)
        elif self.mode == "module":
            y = self.flatten(y)
        elif self.mode == "view":
            y = y.view(y.size(0), -1)
        elif self.mode == "reshape":
            y = torch.reshape(y, (y.size(0), -1))
        return self.fc(y)


class SE(nn.Module):
    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.se = SE()
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(self.se(F.relu(self.bn(self.conv(x)))))


class Lambda(nn.Module):
    """A traceable submodule running ``fn``, so that warnings can name its path."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Between(nn.Module):
    """conv (8 channels) -> mid -> head."""

    def __init__(self, mid: nn.Module, head_in: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid
        self.head = nn.Conv2d(head_in, 5, 1)

    def forward(self, x):
        return self.head(self.mid(self.conv(x)))


class DataDependent(nn.Module):
    """fx cannot trace this (control flow on a tensor value): it becomes an opaque leaf."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


class TwoBranches(nn.Module):
    """Branch a: conv_a -> op1 -> conv_b -> op2; branch b: conv_c (untouched); both concatenated into head."""

    def __init__(self, op1: nn.Module, op2: nn.Module) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 1)
        self.op1 = op1
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.op2 = op2
        self.conv_c = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        a = self.op2(self.conv_b(self.op1(self.conv_a(x))))
        return self.head(torch.cat([a, F.relu(self.conv_c(x))], 1))


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv_b = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(14, 5)

    def forward(self, x):
        a = self.conv_a(x).flatten(2).transpose(1, 2)
        a = self.attn(a, a, a, need_weights=False)[0].mean(1)
        b = F.relu(self.conv_b(x)).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


class Norms(nn.Module):
    def __init__(self, norm: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.channels_last = channels_last
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.channels_last:
            y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            y = self.norm(y)
        return self.head(F.relu(y))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int = 8, norm: bool = True) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c) if norm else nn.Identity()
        self.pw1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(self.act(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.block = ConvNeXtBlock(8, norm)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class Shuffle(nn.Module):
    def forward(self, x):
        b, c, h, w = x.size()
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class Conv1dHead(nn.Module):
    """conv (16 channels, 3x3) -> view to (B, 16, 9) -> Conv1d."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv1d(16, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        y = y.view(-1, 16, 9) if self.literal else y.view(y.size(0), y.size(1), -1)
        return self.head(y)


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(y.mean((2, 3)))


class TwoOutputs(Residual):
    def forward(self, x):
        return self.conv_a(x), self.head(self.conv_b(x))


class SharedConv(nn.Module):
    """One conv called twice: its input and output channels must be the same channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(self.conv(F.relu(self.conv(self.stem(x)))))


class Tokens(nn.Module):
    """conv -> (B, HW, C) tokens -> linear over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(2).transpose(1, 2))


class InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.head(self.conv2(x + self.conv(x)))


class SpatialAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.att = nn.Conv2d(8, 1, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y * torch.sigmoid(self.att(y)))


class PerChannel(nn.Module):
    """A per-channel parameter or buffer applied element-wise, or a per-channel constant made in forward."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.register_buffer("shift", torch.rand(1, 8, 1, 1))

    def forward(self, x):
        if self.kind == "param":
            return self.gamma * x
        if self.kind == "buffer":
            return x + self.shift
        return x + torch.arange(8.0).view(1, 8, 1, 1)


class CatInput(nn.Module):
    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.twice = twice
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8 if twice else 7, 5, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.head(torch.cat([y, y] if self.twice else [x, y], 1))


class CatPlusConv(nn.Module):
    """cat([a, c]) + b: b's channels are a's followed by c's; a and c each see half the group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.c(x)], 1) + self.b(x))


class UntraceableRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


# ----------------------------------------------------------------------------------------------
# 1. Element-wise add


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


# ----------------------------------------------------------------------------------------------
# 2. Concatenation


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


# ----------------------------------------------------------------------------------------------
# 3. Depthwise and grouped convs


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


# ----------------------------------------------------------------------------------------------
# 4. Flatten into a linear head


@pytest.mark.parametrize("mode", ["torch", "method", "module"])
def test_flatten_repeats_each_channel_over_its_features(mode):
    groups, warned = analyse(FlattenHead(mode), shape=(2, 3, 3, 3))
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("fc", 5, False)]
    fc = only(groups[0].consumers, "fc")
    assert fc.positions == tuple(range(36))
    assert fc.classes == tuple(c for c in range(4) for _ in range(9))
    assert names(groups[0].members) == ["bn"]


# ----------------------------------------------------------------------------------------------
# 5. Squeeze-excitation


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


# ----------------------------------------------------------------------------------------------
# 6. Channel padding, slicing and chunking block; spatial ones do not


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
# 7. Unknown functions and modules


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


# ----------------------------------------------------------------------------------------------
# 8. Norms


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
# 9. Outputs and ignore


def test_model_output_is_never_prunable():
    groups, warned = analyse(TwoConvs())
    assert warned == []
    assert summary(groups) == [("conv1", 8, True), ("conv2", 6, True), ("fc", 5, False)]
    assert "model output" in groups[-1].reason
    # Two outputs: both are fixed, the rest stays prunable.
    groups, _ = analyse(TwoOutputs())
    assert summary(groups) == [("conv_a", 8, False), ("conv_b", 8, True), ("head", 5, False)]
    assert "model output" in groups[0].reason and "model output" in groups[2].reason


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
# 10. Channels-last MLP (ConvNeXt)


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
# 11. Reshapes


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
# More coupling rules


def test_shared_conv_ties_its_input_to_its_output():
    groups, warned = analyse(SharedConv())
    assert warned == []
    assert summary(groups) == [("stem", 8, True), ("head", 5, False)]
    assert names(groups[0].producers) == ["stem", "conv"]
    assert names(groups[0].consumers) == ["conv", "head"]


def test_linear_over_token_channels():
    groups, warned = analyse(Tokens())
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("fc", 5, False)]
    identity(only(groups[0].consumers, "fc"), 8)


def test_adding_the_model_input_fixes_the_group():
    groups, _ = analyse(InputResidual())
    assert summary(groups) == [("conv", 3, False), ("conv2", 4, True), ("head", 5, False)]
    assert groups[0].reason == "model input"


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


def test_functional_interpolate_passes_channels_like_upsample():
    groups, warned = analyse(Between(Lambda(lambda x: F.interpolate(x, scale_factor=2)), 8))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("head", 5, False)]


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


def test_concat_with_the_input_and_with_itself():
    groups, warned = analyse(CatInput())
    assert warned == []
    assert summary(groups) == [("conv", 4, True), ("head", 5, False)]
    identity(only(groups[0].consumers, "head"), 4, offset=3)
    groups, warned = analyse(CatInput(twice=True))
    assert warned == []
    head = only(groups[0].consumers, "head")
    assert head.positions == tuple(range(8)) and head.classes == (0, 1, 2, 3, 0, 1, 2, 3)


def test_producer_seeing_part_of_a_group_keeps_it_whole():
    groups, warned = analyse(CatPlusConv())
    assert warned == []
    assert summary(groups) == [("a", 8, False), ("head", 5, False)]
    g = groups[0]
    assert names(g.producers) == ["a", "c", "b"]
    assert only(g.producers, "c").classes == (4, 5, 6, 7)
    assert "sees only part of the group's channels" in g.reason


def test_warning_lists_at_most_three_places():
    mid = nn.Sequential(*[Lambda(lambda x: torch.cumsum(x, 1)) for _ in range(5)])
    groups, warned = analyse(Between(mid, 8))
    assert groups[0].reason == "cumsum at mid.0"
    assert len(warned) == 1
    assert "cumsum (at mid.0, mid.1, mid.2 and 2 more)" in warned[0]


def test_untraceable_submodule_inside_a_container_is_opaque():
    mid = nn.Sequential(nn.ReLU(), DataDependent())
    groups, warned = analyse(Between(mid, 8))
    assert summary(groups) == [("conv", 8, False), ("head", 5, False)]
    assert len(warned) == 1 and "(at mid" in warned[0]


def test_untraceable_model_raises():
    with pytest.raises(RuntimeError, match="cannot be traced by torch.fx"):
        find_channel_groups(UntraceableRoot(), torch.randn(1, 3, 6, 6))


def test_analysis_leaves_the_model_as_it_was():
    model = Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyse(model)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


# ----------------------------------------------------------------------------------------------
# 12. The built-in models


@pytest.fixture(scope="module")
def resnet20_groups():
    return analyse(create_model("resnet20"), shape=(1, 3, 32, 32))


def test_resnet20_option_a_prunes_only_inner_groups(resnet20_groups):
    groups, warned = resnet20_groups
    prunable = [g for g in groups if g.prunable]
    assert [g.size for g in prunable] == [16] * 3 + [32] * 3 + [64] * 3
    assert [g.name for g in prunable] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    for g in prunable:
        assert names(g.producers) == [g.name]
        assert names(g.consumers) == [g.name.replace("conv1", "conv2")]
        assert names(g.members) == [g.name.replace("conv1", "bn1")]
    assert len(warned) == 1 and "through pad" in warned[0] and "shortcut" in warned[0]
    assert groups[-1].name == "linear" and not groups[-1].prunable


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


# ----------------------------------------------------------------------------------------------
# 13. Plans end to end: slicing equals masking, and the negative control


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


E2E = {  # name: (builder, a layer of the pruned model to perturb for the negative control)
    "residual": (Residual, "conv_a"),
    "concat": (Concat, "conv_b"),
    "depthwise": (Depthwise, "pw"),
    "grouped": (lambda: Grouped(8), "pw"),
    "flatten": (lambda: FlattenHead("torch"), "conv"),
    "se": (SENet, "se.fc1"),
    "groupnorm": (lambda: Norms(nn.GroupNorm(4, 8)), "conv"),
    "convnext": (lambda: ConvNeXtNet(norm=False), "stem"),
    "convnext-layernorm": (lambda: ConvNeXtNet(norm=True), "block.pw1"),
    "view": (lambda: FlattenHead("view"), "conv"),
    "view-conv1d": (lambda: Conv1dHead(literal=False), "conv"),
    "two-convs": (TwoConvs, "conv1"),
    "shared-conv": (SharedConv, "stem"),
    "tokens": (Tokens, "conv"),
    "spatial-attention": (SpatialAttention, "conv"),
    "layer-scale": (lambda: Between(PerChannel("param"), 8), "conv"),
    "per-channel-buffer": (lambda: Between(PerChannel("buffer"), 8), "conv"),
    "cat-input": (CatInput, "conv"),
    "cat-twice": (lambda: CatInput(twice=True), "conv"),
    "prelu-upsample": (lambda: Between(nn.Sequential(nn.PReLU(8), nn.Upsample(scale_factor=2)), 8), "conv"),
}


@pytest.mark.parametrize(
    ("seed", "build", "perturb"), [pytest.param(i, *case, id=name) for i, (name, case) in enumerate(E2E.items())]
)
def test_apply_equals_mask(seed, build, perturb):
    model = randomise(build())
    shape = (2, 3, 3, 3) if isinstance(model, (FlattenHead, Conv1dHead)) else (1, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(model, shape, keep=0.5, seed=seed)
    assert plan.kept, "nothing pruned"
    assert plan.flops < plan.dense_flops
    pruned, masked = plan.apply(model), plan.mask(model)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, *shape[1:])
    with torch.no_grad():
        dense_out, pruned_out, masked_out = model(x), pruned(x), masked(x)
        torch.testing.assert_close(pruned_out, masked_out, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(dense_out, pruned_out, atol=1e-4)
        # Negative control: a kept output channel of a layer of the pruned model, changed, shows.
        layer = pruned.get_submodule(perturb)
        layer.weight[0] = -2 * layer.weight[0] + 0.5
        assert not torch.allclose(pruned(x), masked_out, atol=1e-3)


def test_explicit_plan_slices_the_right_channels():
    model = randomise(Concat())
    plan = ChannelPlan.create(model, {0: [1, 3], 1: [0, 2, 5]}, (1, 3, 6, 6))
    pruned = plan.apply(model)
    assert pruned.conv_a.weight.shape == (2, 3, 3, 3) and pruned.bn_a.num_features == 2
    assert pruned.conv_b.weight.shape == (3, 3, 1, 1)
    torch.testing.assert_close(pruned.conv_a.weight, model.conv_a.weight[[1, 3]])
    torch.testing.assert_close(pruned.bn_a.running_mean, model.bn_a.running_mean[[1, 3]])
    torch.testing.assert_close(pruned.conv_c.weight, model.conv_c.weight[:, [1, 3, 4, 6, 9]])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)


def test_grouped_conv_plan_keeps_whole_blocks():
    model = randomise(Grouped(8))
    plan = ChannelPlan.create(model, {0: [2, 3, 6, 7]}, (1, 3, 6, 6))
    pruned = plan.apply(model)
    assert pruned.gconv.groups == 2 and pruned.gconv.weight.shape == (4, 2, 3, 3)
    torch.testing.assert_close(pruned.gconv.weight, model.gconv.weight[[2, 3, 6, 7]])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "kept", "match"),
    [
        (lambda: Grouped(8), {0: [0, 2]}, "splits the block"),
        (lambda: Grouped(8), {0: [0, 1, 2]}, "multiple of 2"),
        (TwoConvs, {0: []}, "at least 1"),
        (TwoConvs, {2: [0, 1]}, "cannot be pruned"),
        (TwoConvs, {0: [0, 8]}, "invalid channels"),
        (TwoConvs, {0: [-1, 2]}, "invalid channels"),
        (TwoConvs, {0: [1, 1]}, "invalid channels"),
        (TwoConvs, {7: [0]}, "groups 0..2"),
        (lambda: Norms(nn.GroupNorm(4, 8)), {0: [0, 1, 3, 4]}, "splits the block"),
    ],
    ids=["split-block", "not-multiple", "keep-none", "unprunable", "too-large", "negative", "duplicate", "no-group",
         "split-groupnorm"],
)  # fmt: skip
def test_bad_plans_raise_user_error(build, kept, match):
    with pytest.raises(UserError, match=match):
        ChannelPlan.create(build(), kept, (1, 3, 6, 6))
