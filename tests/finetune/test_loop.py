"""finetune(): the library call on a pruned model and plain batches, with and without a plan."""

from __future__ import annotations

import warnings

import pytest
import torch

import dais_search as ds
from dais_search.channels import random_plan


def _pruned():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = ds.create_model("resnet8").eval()
        plan = random_plan(teacher, (1, 3, 32, 32), keep=0.5, seed=0)
    return teacher, plan, plan.apply(teacher)


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_finetune_folds_to_the_pruned_shapes_without_a_plan():
    teacher, plan, pruned = _pruned()
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    config = ds.FinetuneConfig(epochs=1, overparam=2)
    result = ds.finetune(pruned, teacher, _batches(), config, input_shape=(1, 3, 32, 32), progress=False)
    assert ds.count_flops(result.model) == plan.flops == result.metrics["flops"]
    assert result.metrics["fold_max_rel_error"] <= 1e-4
    assert [h["epoch"] for h in result.metrics["history"]] == [1] and "test_top1" not in result.metrics
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items()), "the pruned input is not modified"
    assert any(not torch.equal(v, result.model.state_dict()[k]) for k, v in before.items() if v.is_floating_point())


def test_finetune_with_a_plan_and_a_test_loader_reports_test_accuracy():
    teacher, plan, pruned = _pruned()
    result = ds.finetune(pruned, teacher, _batches(2), ds.FinetuneConfig(epochs=1, overparam=0, kd="logit"),
                         plan=plan, test_loader=_batches(1), progress=False)  # fmt: skip
    assert 0.0 <= result.metrics["test_top1"] <= 100.0
    assert "test_top1_folded" in result.metrics["history"][0]


def test_finetune_needs_a_plan_or_an_input_shape():
    teacher, _, pruned = _pruned()
    with pytest.raises(ValueError, match="input_shape"):
        ds.finetune(pruned, teacher, _batches(1), progress=False)


def test_the_folded_copy_carries_no_distillation_hooks():
    teacher, plan, pruned = _pruned()
    student = ds.expand(pruned, 2)
    task = ds.DistillTask(student, teacher, layers="stages")
    folded = ds.fold(student)
    assert not any(m._forward_hooks for m in folded.modules())
    task._features["s"].clear()
    with torch.no_grad():
        folded.eval()(torch.randn(2, 3, 32, 32))
    assert task._features["s"] == {}, "the folded copy fed the task's feature store"
    student.eval()(torch.randn(2, 3, 32, 32))
    assert task._features["s"], "the student itself still does (negative control)"
