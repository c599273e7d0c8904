"""Models whose training forward differs from inference: a train-only auxiliary head and stochastic
depth (torchvision's GoogLeNet / Inception v3 / ConvNeXt patterns) are analysed, gated, searched,
pruned and fine-tuned as the model defines them."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

import dais_search as ds
from dais_search.channels import ChannelPlan, randomize_norms, trace_channels
from dais_search.search.gates import ChannelGates, attach_gates


class AuxNet(nn.Module):
    """A stem, a residual block with stochastic depth, and, in training only, an auxiliary head
    that reads the block's hidden channels (the group of ``conv1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.conv2, self.bn2 = nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.drop = StochasticDepth(0.3, "row")
        self.aux = nn.Sequential(nn.Conv2d(12, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        s = self.stem(x)
        h = F.relu(self.bn1(self.conv1(s)))
        y = F.relu(s + self.drop(self.bn2(self.conv2(h))))
        out = self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))
        return (out, self.aux(h)) if self.training else out


X = (1, 3, 16, 16)


def _graph(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace_channels(model, torch.zeros(X))


def test_the_train_only_head_reads_its_group_and_is_sliced_with_it():
    model = AuxNet()
    graph = _graph(model)
    hidden = next(g for g in graph.groups if g.name == "conv1")
    assert hidden.prunable and {c.name for c in hidden.consumers} == {"conv2", "aux.0"}
    plan = ChannelPlan.create(model, {hidden.id: [0, 2, 5, 7, 9]}, X, graph=graph)
    pruned = plan.apply(model).train()
    assert pruned.aux[0].in_channels == 5
    out, aux = pruned(torch.randn(4, *X[1:]))
    loss = F.cross_entropy(out, torch.arange(4)) + F.cross_entropy(aux, torch.arange(4))
    loss.backward()  # one training step runs
    assert pruned.aux[0].weight.grad is not None
    assert ds.count_flops(pruned, X) == plan.flops  # FLOPs are the inference graph's: no aux head


def test_hard_gates_equal_the_pruned_model_in_train_mode_with_stochastic_depth():
    model = randomize_norms(AuxNet(), torch.zeros(2, *X[1:]))
    graph = _graph(model)
    groups = [g for g in graph.groups if g.prunable]
    plan = ChannelPlan.create(model, {g.id: list(range(0, g.size, 2)) for g in groups}, X, graph=graph)
    gates = ChannelGates(groups, "dais")
    gates.fixed_masks = [torch.tensor([float(i in plan.kept[g.id]) for i in range(g.size)]) for g in groups]
    gated, pruned = attach_gates(model, graph, gates).train(), plan.apply(model).train()
    x = torch.randn(6, *X[1:])
    with torch.no_grad():
        torch.manual_seed(7)
        expected = pruned(x)
        torch.manual_seed(7)  # the same rows dropped by stochastic depth on both sides
        actual = gated(x)
        for a, b in zip(actual, expected, strict=True):  # main and auxiliary logits
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.manual_seed(8)  # negative control: other rows dropped
        assert not torch.allclose(gated(x)[0], expected[0], rtol=1e-4, atol=1e-4)


def test_search_and_finetune_run_on_a_model_with_a_train_only_head():
    torch.manual_seed(0)
    model = AuxNet()
    teacher = randomize_norms(AuxNet(), torch.zeros(2, *X[1:]))
    model.load_state_dict(teacher.state_dict())
    batches = [(torch.randn(8, *X[1:]), torch.randint(0, 5, (8,))) for _ in range(4)]
    budget = ds.Budget(search=ds.SearchSpec(epochs=1, gate_every=1, recalibrate_batches=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, batches, batches, torch.zeros(X), progress=False)
    assert 0.9 <= result.metrics["flops_over_target"] <= 1.0  # a tiny net: one channel is ~3% of its FLOPs
    tuned = ds.finetune(result.pruned, teacher.eval(), batches, ds.FinetuneConfig(epochs=1, overparam=2, kd="sp+logit",
                        kd_layers="conv2"), plan=result.plan, progress=False)  # fmt: skip
    assert ds.count_flops(tuned.model, X) == result.plan.flops
    assert isinstance(tuned.model.train()(batches[0][0]), tuple)  # the folded model keeps its aux head
