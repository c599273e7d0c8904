"""Channel gates: at 0/1 masks the gated model *is* the pruned model (randomised BN, every mode,
train and eval mode), each mask acts once where its channels are read, and gradients reach the
indicators and ratios of each mode."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dais_search import create_model
from dais_search.channels import ChannelPlan, random_plan, randomize_norms, trace_channels
from dais_search.search.gates import ChannelGates, attach_gates


def _graph(model: nn.Module, size: int = 32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace_channels(model, torch.zeros(1, 3, size, size))


class TwoUsers(nn.Module):
    """conv1's raw output is read by conv3 *and* normalised by bn1, whose output is read by conv4
    *and* (through a ReLU) conv2: a mask placed before bn1 would be undone by its shift."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.conv3, self.conv4 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Conv2d(8, 6, 1)
        self.bn2, self.head = nn.BatchNorm2d(6), nn.Linear(6, 5)

    def forward(self, x):
        c1 = self.conv1(x)
        b1 = self.bn1(c1)
        y = self.conv2(F.relu(b1)) + self.conv3(c1) + self.conv4(b1)
        return self.head(F.adaptive_avg_pool2d(F.relu(self.bn2(y)), 1).flatten(1))


class DepthwiseResidual(nn.Module):
    """EfficientNet-B1's stage-1 repeat (expand ratio 1): x -> depthwise -> BN -> SiLU -> 1x1
    projection -> BN, plus x. The depthwise conv ties the stream to its own outputs and the add ties
    the projection's outputs to the stream, so the projection reads and writes the same group
    channel for channel; it is still a reader (it mixes channels), unlike the depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.project, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.silu(self.bn0(self.stem(x)))
        x = x + self.bn2(self.project(F.silu(self.bn1(self.dw(x)))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _set_hard(gates: ChannelGates, plan: ChannelPlan) -> list[torch.Tensor]:
    """Indicators (and ratios) of every mode set so that the masks are the plan's 0/1 masks."""
    targets = []
    with torch.no_grad():
        for i, (gid, size) in enumerate(zip(gates.group_ids, gates.sizes, strict=True)):
            keep = torch.zeros(size, dtype=torch.bool)
            keep[plan.kept.get(gid, list(range(size)))] = True
            logits = torch.where(keep, 10.0, -10.0)
            gates.alpha[i].copy_(logits)
            start = sum(gates.sizes[:i])
            gates.scores[start : start + size] = logits
            gates.theta[i] = torch.logit(keep.float().mean().clamp(1e-4, 1 - 1e-4).double()).float()
            targets.append(keep.float())
        gates.temperature.fill_(1e-3)
    return targets


MODELS = {
    "resnet20": lambda: create_model("resnet20"),
    "mobilenetv2": lambda: create_model("mobilenetv2"),
    "two-users": TwoUsers,
    "depthwise-residual": DepthwiseResidual,
}


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hard_gates_equal_the_pruned_model_with_randomised_bn(name, mode):
    torch.manual_seed(0)
    size = 16 if name in ("two-users", "depthwise-residual") else 32
    model = randomize_norms(MODELS[name](), torch.zeros(2, 3, size, size))  # mean, var, gamma, beta all non-trivial
    graph = _graph(model, size)
    groups = [g for g in graph.groups if g.prunable]
    plan = random_plan(model, (1, 3, size, size), keep=(0.3, 0.8), seed=1, graph=graph)
    gates = ChannelGates(groups, mode, [torch.randn(g.size) for g in groups], keep=0.5)
    targets = _set_hard(gates, plan)
    gated = attach_gates(model, graph, gates)
    for mask, target in zip(gates(), targets, strict=True):
        torch.testing.assert_close(mask, target, rtol=0, atol=1e-6)  # really 0/1 in this mode
    pruned = plan.apply(model)
    for m in (*model.modules(), *pruned.modules()):
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # train mode below: dropout draws masks of different sizes on the two sides
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        for train in (False, True):  # train mode: BN on batch statistics, on both sides
            gated.train(train), pruned.train(train)
            torch.testing.assert_close(gated(x), pruned(x), rtol=1e-4, atol=1e-4)
        gated.eval(), pruned.eval()
        # Negative control: one more channel off in the gates only.
        i = next(i for i, gid in enumerate(gates.group_ids) if plan.kept.get(gid, [0]))
        gates.alpha[i][plan.kept.get(gates.group_ids[i], [0])[0]] = -10.0
        start = sum(gates.sizes[:i])
        gates.scores[start + plan.kept.get(gates.group_ids[i], [0])[0]] = -10.0
        gates.theta[i] -= 0.5
        assert not torch.allclose(gated(x), pruned(x), rtol=1e-4, atol=1e-4)
    gated.remove()
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x), pruned(x), rtol=1e-4, atol=1e-4), "the hooks are gone"


def test_each_path_is_masked_once():
    """A mask of 0.5 on the group of an inverted residual's hidden channels (expand conv, BN, ReLU6,
    depthwise conv, BN, ReLU6): the projection reads them halved once, not 0.25 (twice)."""
    model = create_model("mobilenetv2").eval()
    graph = _graph(model)
    groups = [g for g in graph.groups if g.prunable]
    hidden = next(g for g in groups if any(p.name == "features.2.conv.1.0" for p in g.producers))
    gates = ChannelGates(groups, "dais", keep=0.5)
    gates.fixed_masks = [torch.full((g.size,), 0.5 if g is hidden else 1.0) for g in groups]
    gated = attach_gates(model, graph, gates)
    seen: dict[str, torch.Tensor] = {}
    for name in ("features.2.conv.1.0", "features.2.conv.2"):  # the depthwise conv and the projection
        model.get_submodule(name).register_forward_pre_hook(lambda m, inp, n=name: seen.__setitem__(n, inp[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        gated(x)
        gated_in = dict(seen)
        gates.fixed_masks = [torch.ones(g.size) for g in groups]
        gated(x)
    assert "features.2.conv.1.0" not in gated.readers  # the group goes on through the depthwise conv
    torch.testing.assert_close(gated_in["features.2.conv.2"], 0.5 * seen["features.2.conv.2"])


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
def test_gradients_reach_indicators_and_ratios(mode):
    model = create_model("resnet8").eval()
    graph = _graph(model)
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, mode, [torch.randn(g.size) for g in groups], keep=0.6, temperature=0.5)
    gated = attach_gates(model, graph, gates).train()
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


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
def test_every_mode_starts_at_the_requested_keep_ratio(mode):
    model = create_model("resnet8")
    graph = _graph(model)
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, mode, [torch.randn(g.size) for g in groups], keep=0.4, temperature=1.0)
    widths = gates.expected_width()
    torch.testing.assert_close(widths, torch.tensor([0.4 * g.size for g in groups]), rtol=1e-4, atol=1e-4)
