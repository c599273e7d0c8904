"""Ops that timm models call and torchvision ones do not: ``F.batch_norm`` in a module's own forward
(timm's BatchNormAct2d, a BatchNorm2d subclass whose forward normalises, then activates)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_models import analyse, one_thread, only, summary  # noqa: F401 - one_thread: autouse fixture

from dais_search.channels import FlopsModel, check_plan, random_plan, randomize_norms, trace_channels
from dais_search.cost import count_params


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in short: F.batch_norm on the module's statistics, then ReLU."""

    def forward(self, x):
        training = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training, momentum, self.eps)
        return F.relu(x)


class StatsInForward(nn.Module):
    """Batch norm with statistics made in forward: per-channel tensors of the full width, not sliceable."""

    def forward(self, x):
        mean, var = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
        return F.batch_norm(x, mean, var, training=False)


class Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = BatchNormAct(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = self.bn2(self.conv2(self.norm(self.conv(x))))
        return self.head(x.mean((2, 3)))


def test_functional_batch_norm_slices_its_statistics_and_affine_parameters():
    groups, warned = analyse(Net(BatchNormAct(8)))
    assert warned == []
    assert summary(groups) == [("conv", 8, True), ("conv2", 6, True), ("head", 5, False)]
    paths = {m.name for m in groups[0].members}
    assert {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"} <= paths
    assert only(groups[0].members, "norm.weight").role == "dim0"


@pytest.mark.parametrize("training", [False, True])
def test_functional_batch_norm_prunes_like_the_masked_model(training):
    torch.manual_seed(0)
    model = Net(BatchNormAct(8)).eval()
    x = torch.randn(4, 3, 8, 8)
    graph = trace_channels(model, torch.zeros(1, 3, 8, 8))
    plan = random_plan(model, (1, 3, 8, 8), keep=0.5, seed=1, graph=graph)
    assert plan.kept.keys() == {0, 1}
    check = check_plan(model, plan, x)
    assert check.ok, check
    pruned = plan.apply(randomize_norms(Net(BatchNormAct(8)), x))
    assert pruned.norm.weight.shape == pruned.norm.running_mean.shape == (4,) and pruned.bn2.running_var.shape == (3,)
    fm = FlopsModel(graph, model, torch.zeros(1, 3, 8, 8))
    assert count_params(pruned) == round(float(fm.params(fm.widths_of(plan.kept))))  # sliced parameters counted
    pruned.train(training)
    out = pruned(x)  # train mode updates the sliced running statistics
    out.sum().backward()
    assert out.shape == (4, 5)


def test_batch_norm_with_statistics_made_in_forward_blocks():
    groups, warned = analyse(Net(StatsInForward()))
    assert summary(groups)[0] == ("conv", 8, False)
    assert any("batch_norm" in w for w in warned)
    assert "batch_norm at norm" in groups[0].reason


def test_timm_batchnormact2d_is_followed():
    norm_act = pytest.importorskip("timm.layers.norm_act")
    model = Net(norm_act.BatchNormAct2d(8, act_layer=nn.SiLU)).eval()
    graph = trace_channels(model, torch.zeros(1, 3, 8, 8))
    assert [g.prunable for g in graph.groups][:2] == [True, True]
    plan = random_plan(model, (1, 3, 8, 8), keep=0.5, seed=0, graph=graph)
    assert check_plan(model, plan, torch.randn(2, 3, 8, 8)).ok


class DataDependentAttn(nn.Module):
    """A submodule with control flow on a traced value (timm's ConViT GPSA, Twins' attention)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        if x.shape[-1] > 1:  # fx cannot decide this: the module becomes an opaque leaf
            x = x * 2
        return self.proj(x)


class BlocksInModuleList(nn.Module):
    """Blocks kept in an nn.ModuleList and looped over in forward: fx takes the list for a leaf,
    but it is never called; its blocks are searched for untraceable code."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 8, 1)),
                                     DataDependentAttn(8)])  # fmt: skip
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


def test_untraceable_module_inside_a_module_list_becomes_opaque():
    model = BlocksInModuleList().eval()
    graph = trace_channels(model, torch.zeros(1, 3, 8, 8), warn=False)
    prunable = [g for g in graph.groups if g.prunable]
    assert [g.size for g in prunable] == [12]  # the hidden width of the traceable block
    assert any(g.reason == "DataDependentAttn at blocks.1" for g in graph.groups)  # the residual stream
    plan = random_plan(model, (1, 3, 8, 8), keep=0.5, seed=0, graph=graph)
    assert check_plan(model, plan, torch.randn(2, 3, 8, 8)).ok


def test_timm_untraceable_functions_stay_whole():
    """timm's test_vit resamples its position embedding in the model's own forward, with control
    flow on traced values; timm registers that function as untraceable, and so it stays a call."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_vit", num_classes=10).eval()
    graph = trace_channels(model, torch.zeros(1, 3, 160, 160), warn=False)
    assert any(g.prunable for g in graph.groups)  # the MLP hidden widths
    plan = random_plan(model, (1, 3, 160, 160), keep=0.7, seed=0, graph=graph)
    assert check_plan(model, plan, torch.randn(2, 3, 160, 160)).ok


class OptionalMask(nn.Module):
    """An optional mask argument, as in timm's Hiera and NaFlexViT (``forward(x, mask=None)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x, mask=None, scale: float = 1.0):
        x = self.conv(x)
        if mask is not None:  # traced as a tensor, the mask would take this branch
            x = x * mask
        return self.head(x.mean((2, 3))) * scale


def test_optional_forward_arguments_are_traced_at_their_defaults():
    graph = trace_channels(OptionalMask().eval(), torch.zeros(1, 3, 8, 8), warn=False)
    assert [g.prunable for g in graph.groups] == [True, False]
    plan = random_plan(OptionalMask().eval(), (1, 3, 8, 8), keep=0.5, seed=0)
    assert check_plan(OptionalMask().eval(), plan, torch.randn(2, 3, 8, 8)).ok


class StarReLU(nn.Module):
    """timm's StarReLU (PoolFormerV2): ``s * relu(x) ** 2 + b``, scalar s and b."""

    def __init__(self) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.ones(1) * 0.8), nn.Parameter(torch.zeros(1) + 0.1)

    def forward(self, x):
        return self.scale * F.relu(x) ** 2 + self.bias + x.pow(3) * 0.01


def test_power_with_a_constant_exponent_passes_channels():
    model = Net(nn.Sequential(nn.BatchNorm2d(8), StarReLU())).eval()
    groups, warned = analyse(model)
    assert warned == [] and summary(groups)[:2] == [("conv", 8, True), ("conv2", 6, True)]
    plan = random_plan(model, (1, 3, 8, 8), keep=0.5, seed=0)
    assert check_plan(model, plan, torch.randn(2, 3, 8, 8)).ok


class PowerOfParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(8, 1, 1) * 2)

    def forward(self, x):
        return F.relu(x) ** self.p  # a per-channel exponent made at full width: not followed


def test_power_with_a_tensor_exponent_blocks():
    groups, warned = analyse(Net(PowerOfParameter()))
    assert summary(groups)[0] == ("conv", 8, False) and "pow at norm" in groups[0].reason


def halve_if_wide(x):
    """Control flow on a traced size: fx cannot trace it (timm registers such helpers as untraceable)."""
    return x * 0.5 if x.shape[-1] > 1 else x


class HelperBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(8, 12, 1), nn.Conv2d(12, 8, 1)

    def forward(self, x):
        return x + halve_if_wide(self.fc2(F.relu(self.fc1(x))))


class HelperNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), HelperBlock(), nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_library_untraceable_helpers_stay_whole_instead_of_their_module(monkeypatch):
    """Without timm's list the block is an opaque leaf and nothing is prunable; with the helper on the
    list (as timm registers deblockify, window_reverse, ...) only the helper's call is opaque."""
    fx_registry = pytest.importorskip("timm.layers._fx")
    model, x = HelperNet().eval(), torch.zeros(1, 3, 8, 8)
    monkeypatch.setattr(fx_registry, "_autowrap_functions", set())
    assert not any(g.prunable for g in trace_channels(model, x, warn=False).groups)
    monkeypatch.setattr(fx_registry, "_autowrap_functions", {halve_if_wide})
    graph = trace_channels(model, x, warn=False)
    assert [g.size for g in graph.groups if g.prunable] == [12]
    plan = random_plan(model, (1, 3, 8, 8), keep=0.5, seed=0, graph=graph)
    assert check_plan(model, plan, torch.randn(2, 3, 8, 8)).ok
