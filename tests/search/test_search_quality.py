"""The search learns which channels matter: on a task where half of a layer's channels carry the
label and half are noise with larger filter norms, it keeps the informative half; with frozen
gates (the initial, norm-based ranking) it keeps the noise."""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import dais_search as ds
from dais_search.train import recalibrate_bn


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Channels 0-3 hold the label (its channel is shifted up), channels 4-7 are louder noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 8, 4, 4, generator=g)
    x[:, 4:] *= 3.0
    x[torch.arange(n), y] += 1.5
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def _trained_probe() -> Probe:
    """Trained with the 1x1 conv fixed to the identity, so conv channel i is input channel i;
    then the noise filters are scaled up x5 (the BN after them undoes it in training), so that
    the filter-norm ranking the search starts from prefers the noise."""
    torch.manual_seed(0)
    model = Probe()
    with torch.no_grad():
        model.conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        model.conv.bias.zero_()
    model.conv.requires_grad_(False)
    optimizer = ds.make_sgd(model, 0.1)
    for _ in range(3):
        ds.train_one_epoch(model, _data(2048, 0), optimizer, progress=False)
    model.conv.requires_grad_(True)
    with torch.no_grad():
        model.conv.weight[4:] *= 5.0
    return model


@functools.cache
def _kept(gate_lr: float) -> frozenset[int]:
    model = _trained_probe()
    budget = ds.Budget(budget=ds.BudgetSpec(flops="50%"),
                       search=ds.SearchSpec(epochs=1, weight_lr=0.001, gate_lr=gate_lr, gate_every=1,
                                            temperature_end=0.05, recalibrate_batches=2))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, _data(2048, 1), _data(2048, 2), torch.zeros(1, 8, 4, 4), progress=False)
    (group,) = result.plan.kept  # the conv's output channels: the one prunable group
    return frozenset(result.plan.kept[group])


def test_the_search_keeps_the_informative_channels():
    assert _kept(gate_lr=0.1) == {0, 1, 2, 3}


def test_with_frozen_gates_the_norm_ranking_keeps_the_noise():
    assert _kept(gate_lr=1e-9) == {4, 5, 6, 7}  # the control: learning the gates is what finds them


def _finetuned_accuracy(plan: ds.ChannelPlan) -> float:
    """Test accuracy of the plan's model cut from the trained probe after one short plain fine-tune."""
    torch.manual_seed(0)
    pruned = recalibrate_bn(plan.apply(_trained_probe()), _data(512, 1), batches=8)
    optimizer = ds.make_sgd(pruned, 0.01)
    ds.train_one_epoch(pruned, _data(512, 3), optimizer, progress=False)
    return ds.evaluate(pruned, _data(1024, 4), progress=False)["top1"]


def test_the_searched_plan_beats_random_plans_of_the_same_flops_after_the_same_finetune():
    model, shape = _trained_probe(), (1, 8, 4, 4)
    (group,) = [g.id for g in ds.find_channel_groups(model, torch.zeros(shape)) if g.prunable]

    def plan(kept) -> ds.ChannelPlan:
        return ds.ChannelPlan.create(model, {group: sorted(kept)}, shape)

    searched, frozen = plan(_kept(gate_lr=0.1)), plan(_kept(gate_lr=1e-9))
    randoms = [plan(torch.randperm(8, generator=torch.Generator().manual_seed(s))[:4].tolist()) for s in range(3)]
    assert all(r.flops == searched.flops == frozen.flops for r in randoms)
    best_random = max(_finetuned_accuracy(r) for r in randoms)
    searched_accuracy, frozen_accuracy = _finetuned_accuracy(searched), _finetuned_accuracy(frozen)
    assert searched_accuracy > best_random + 5.0, (searched_accuracy, best_random)
    assert frozen_accuracy < best_random, (frozen_accuracy, best_random)  # the control: the norm ranking's plan
