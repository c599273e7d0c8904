"""Tiny hand-written nets for the channel analysis, and helpers to look at what it found.

Each model isolates one channel situation (a residual add, a concatenation, a grouped conv, a
reshape, an op the analysis cannot follow ...); its docstring says which. The channel tests
(tests/channels/) and the search tests import them from here (``pythonpath = tests``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dais_search.channels import ChannelGroup, Member, find_channel_groups

# ----------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: intra-op threads only add overhead (and contend on a busy machine).
    Autouse in every test module that imports it."""
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


# ----------------------------------------------------------------------------------------------
# Tiny nets


class Residual(nn.Module):
    """Element-wise add of two producers: conv_a -> BN -> ReLU plus conv_b, read by head. The add
    ties both convs' output channels into one group, with the BN as a per-channel member."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv_a(x))) + self.conv_b(x))


class Concat(nn.Module):
    """Two producers (conv_a -> BN: 4 channels, conv_b) concatenated into conv_c. Along the channels
    (``dim=1``) the groups stay separate and conv_c reads them at offsets 0 and 4; along a spatial
    dim (``dim=2``) the operands are tied channel for channel."""

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
    """pw -> BN -> depthwise conv -> BN -> head: a depthwise conv reads and produces the same
    channels, so its input and output are one group (it is both consumer and producer)."""

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
    """pw (8 channels) -> BN -> conv with ``groups=4`` -> head. With ``out == 8`` the conv's groups
    become blocks of 2 channels, kept or removed whole; with another width (16) the blocks of its
    input and output differ and neither side can be pruned."""

    def __init__(self, out: int = 8) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.gconv = nn.Conv2d(8, out, 3, padding=1, groups=4)
        self.head = nn.Conv2d(out, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.gconv(F.relu(self.bn(self.pw(x))))))


class FlattenHead(nn.Module):
    """conv (4 channels, 3x3 spatial) -> BN -> flatten -> linear: each channel becomes 9 features of
    the linear's input. ``mode`` picks the flatten: ``torch.flatten``, ``Tensor.flatten``,
    ``nn.Flatten``, ``view(B, -1)`` or ``reshape(B, -1)``."""

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
    """Squeeze-excitation: pooled input -> fc1 -> fc2 -> sigmoid, multiplied onto the input. fc2's
    outputs are tied to the input's channels; fc1's hidden channels are a group of their own."""

    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SENet(nn.Module):
    """conv -> BN -> :class:`SE` -> head: a gate whose channels must match the conv's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.se = SE()
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(self.se(F.relu(self.bn(self.conv(x)))))


class Lambda(nn.Module):
    """A traceable submodule running ``fn`` (an op under test), so that warnings can name its path."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Between(nn.Module):
    """conv (8 channels) -> mid -> head: the op under test between one producer and one consumer;
    ``head_in`` is the width ``mid`` hands on."""

    def __init__(self, mid: nn.Module, head_in: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid
        self.head = nn.Conv2d(head_in, 5, 1)

    def forward(self, x):
        return self.head(self.mid(self.conv(x)))


class DataDependent(nn.Module):
    """fx cannot trace this (control flow on a tensor value): it becomes an opaque leaf, fixing
    every channel it touches."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


class TwoBranches(nn.Module):
    """Branch a: conv_a -> op1 -> conv_b -> op2; branch b: conv_c (untouched); both concatenated into
    head. An unknown op1/op2 must block branch a's groups only."""

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
    """conv_a's output as tokens through ``nn.MultiheadAttention`` (no handler: an opaque leaf),
    concatenated with a second branch conv_b into a linear: only conv_a's group is blocked."""

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
    """conv -> norm -> head, the norm applied to NCHW or (``channels_last``) to NHWC. A LayerNorm over
    the channels mixes them (blocks), one over spatial dims passes them; GroupNorm makes blocks."""

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
    """ConvNeXt block: depthwise conv -> channels-last LayerNorm (optional) -> Linear MLP (4c hidden)
    -> per-channel layer scale ``gamma`` -> residual add. The MLP's hidden channels are a group;
    the stream ties dwconv, pw2 and ``gamma`` (a parameter sliced along dim 0)."""

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
    """stem -> :class:`ConvNeXtBlock` -> spatial mean -> linear: the stream is prunable without the
    block's LayerNorm, which mixes channels and blocks it."""

    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.block = ConvNeXtBlock(8, norm)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``view`` splits the channel axis into (2, C/2) and reorders it, so
    the channels cannot be followed (blocks)."""

    def forward(self, x):
        b, c, h, w = x.size()
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class Conv1dHead(nn.Module):
    """conv (16 channels, 3x3) -> view to (B, 16, 9) -> Conv1d. With a literal 16 in the view the
    channel count is a constant that pruning would break (blocks); computed from ``y.size(1)`` it
    passes."""

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
    """conv1 -> BN -> conv2 -> spatial mean -> linear: a plain chain, two prunable groups and the logits."""

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
    """:class:`Residual`'s layers returning conv_a's output and head's: every model output is fixed."""

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
    """conv -> (B, HW, C) tokens -> linear over the channels, now on the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(2).transpose(1, 2))


class InputResidual(nn.Module):
    """The model input added to a conv's output: the input's channels are never pruned, so that conv's
    group is fixed with reason "model input"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.head(self.conv2(x + self.conv(x)))


class SpatialAttention(nn.Module):
    """A one-channel map ``sigmoid(att(y))`` broadcast over the 8 channels it multiplies: the 8 stay
    prunable, the single channel is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.att = nn.Conv2d(8, 1, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y * torch.sigmoid(self.att(y)))


class PerChannel(nn.Module):
    """A per-channel tensor applied element-wise: a (8, 1, 1) parameter (``kind="param"``, sliced along
    dim 0), a (1, 8, 1, 1) buffer (``"buffer"``, dim 1), or a per-channel constant made in forward
    (``"arange"``), which cannot be sliced and blocks."""

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
    """The model input (3 channels) concatenated with a conv's output (4 channels, at offset 3), or
    (``twice``) the conv's output with itself: the head reads each channel twice."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.twice = twice
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8 if twice else 7, 5, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.head(torch.cat([y, y] if self.twice else [x, y], 1))


class CatPlusConv(nn.Module):
    """cat([a, c]) + b: b's channels are a's followed by c's; a and c each see half of b's, so the sum's
    channels are two groups: a's (with b's first half) and c's (with b's second half)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.c(x)], 1) + self.b(x))


class UntraceableRoot(nn.Module):
    """Control flow on a tensor value in the root's own forward: no submodule can become an opaque
    leaf, so the analysis raises."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)

