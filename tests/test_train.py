"""The one training loop: train_step / train_one_epoch with a loss function and a step hook."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dais_search as ds
from dais_search.data import ArrayDataset, BatchLoader
from dais_search.train import cross_entropy, make_sgd, recalibrate_bn, time_train_steps, train_one_epoch, train_step


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))  # fmt: skip


def _batches(n: int = 5, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_train_step_is_one_plain_sgd_step():
    model, x_y = _net(), _batches(1)[0]
    by_hand = copy.deepcopy(model)
    train_step(model, *x_y, make_sgd(model, 0.1))
    opt = make_sgd(by_hand, 0.1)
    F.cross_entropy(by_hand(x_y[0]), x_y[1]).backward()
    opt.step()
    for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Negative control: a step with another learning rate lands elsewhere.
    other = copy.deepcopy(by_hand)
    train_step(other, *x_y, make_sgd(other, 0.5))
    assert not torch.equal(next(other.parameters()), next(model.parameters()))


def test_epoch_averages_every_scalar_the_loss_function_returns_and_calls_the_hook():
    model, batches = _net(), _batches(5)
    steps: list[int] = []

    def with_extra(m, x, y):
        out = cross_entropy(m, x, y)
        return out | {"aux": torch.tensor(float(len(steps) + 1))}  # 1, 2, 3 at the three steps

    stats = train_one_epoch(model, batches, make_sgd(model, 0.01), loss_fn=with_extra, max_steps=3,
                            progress=False, on_step=lambda i, out: steps.append(i))  # fmt: skip
    assert steps == [0, 1, 2]
    assert stats["images"] == 18 and stats["aux"] == pytest.approx(2.0)  # equal batches: the mean of 1, 2, 3
    assert 0.0 <= stats["top1"] <= 100.0 and stats["loss"] > 0


def test_distill_task_trains_through_the_same_loop():
    teacher = _net().eval()
    student = copy.deepcopy(teacher)
    task = ds.DistillTask(student, teacher, layers=["2"], sp_weight=10.0)
    before = [p.detach().clone() for p in teacher.parameters()]
    stats = train_one_epoch(task, _batches(2), make_sgd(student, 0.1), loss_fn=lambda t, x, y: t(x, y),
                            progress=False)  # fmt: skip
    task.remove_hooks()
    assert {"loss", "task_loss", "kd_loss", "top1"} <= set(stats)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True)), "teacher is frozen"
    assert not torch.equal(next(student.parameters()), before[0]), "student trained"


def test_recalibrate_bn_sets_the_statistics_of_the_batches():
    model = _net()
    batches = _batches(3)
    recalibrate_bn(model, batches, batches=2)
    features = torch.cat([model[0](x) for x, _ in batches[:2]])
    torch.testing.assert_close(model[1].running_mean, features.detach().mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_timing_is_positive_and_search_leaves_our_loaders_where_the_search_left_them():
    assert time_train_steps(_net(), _batches(4), steps=2, warmup=1) > 0
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    data = ArrayDataset(images, torch.arange(96) % 10, [str(c) for c in range(10)])
    train, held = BatchLoader(data, 16, train=True, seed=0), BatchLoader(data, 16, train=True, seed=1)
    budget = ds.Budget(search=ds.SearchSpec(epochs=2, max_steps=2, gate_every=1, recalibrate_batches=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.search(ds.create_model("resnet8"), budget, train, held, torch.zeros(1, 3, 32, 32), progress=False)
    assert train.epoch == 3  # two search epochs and the BN recalibration; the dense timing put it back


def test_recalibration_sees_the_inference_network_not_dropout():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4))
    batches = _batches(2)
    recalibrate_bn(model, batches, batches=2)
    features = torch.cat([model[0](x) for x, _ in batches])  # what inference feeds the BN: no dropout
    torch.testing.assert_close(model[2].running_mean, features.detach().mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model.training and model[1].training, "the modes are restored"


def test_timing_a_loader_shorter_than_the_warm_up_still_measures():
    """Two batches and a warm-up of two used to give 0 s a step (and a search 'infinitely' slower
    than a dense epoch)."""
    assert time_train_steps(_net(), _batches(2), steps=20, warmup=2) > 0
    assert time_train_steps(_net(), _batches(5), steps=3, warmup=2) > 0
