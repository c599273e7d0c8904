"""bf16 autocast and channels-last memory format: the same training within a stated tolerance, on
the search and the fine-tune paths; fp32 and the default memory format are unchanged."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import dais_search as ds
from dais_search.channels import random_plan
from dais_search.finetune import FinetuneConfig, finetune
from dais_search.train import make_sgd, set_channels_last, train_one_epoch

BF16_TOL = 0.05  # relative, on the mean loss of 3 steps and on the weights after them


def _batches(n=3, size=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _train(precision="fp32", channels_last=False):
    torch.manual_seed(0)
    model = ds.create_model("resnet8")
    if channels_last:
        set_channels_last(model)
    stats = train_one_epoch(model, _batches(), make_sgd(model, 0.05), progress=False, precision=precision)
    return stats["loss"], torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bf16_training_stays_within_tolerance_of_fp32():
    loss32, w32 = _train("fp32")
    loss16, w16 = _train("bf16")
    assert abs(loss16 - loss32) <= BF16_TOL * abs(loss32)
    assert float((w16 - w32).norm() / w32.norm()) <= BF16_TOL
    assert loss16 != loss32  # autocast did run in bf16 (control: the two are not the same computation)
    assert w16.dtype == torch.float32  # the weights stay float32


def test_channels_last_trains_the_same_as_the_default_format():
    loss, w = _train("fp32")
    loss_cl, w_cl = _train("fp32", channels_last=True)
    assert abs(loss_cl - loss) <= 1e-5 * abs(loss)
    torch.testing.assert_close(w_cl, w, rtol=1e-4, atol=1e-5)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        FinetuneConfig(precision="fp16")
    with pytest.raises(ds.UserError, match='search.precision = \'fp8\'; choose "fp32" or "bf16"'):
        ds.load_budget("budgets/quickstart.toml", {"search.precision": "fp8"})


@pytest.mark.parametrize("precision,channels_last", [("bf16", False), ("fp32", True), ("bf16", True)])
def test_fine_tune_in_bf16_and_channels_last_folds_exactly(precision, channels_last):
    torch.manual_seed(0)
    dense = ds.create_model("resnet8").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    config = FinetuneConfig(epochs=1, overparam=2, kd="sp", max_steps=3, precision=precision,
                            channels_last=channels_last)  # fmt: skip
    result = finetune(plan.apply(dense), dense, _batches(), config, plan=plan, progress=False)
    assert result.metrics["fold_max_rel_error"] <= 1e-4 and result.metrics["flops"] == plan.flops
    w = next(p for p in result.model.parameters() if p.dim() == 4)
    assert w.dtype == torch.float32 and w.is_contiguous()  # exported in float32, default memory format


def test_search_in_bf16_meets_the_budget():
    torch.manual_seed(0)
    budget = ds.Budget(budget=ds.BudgetSpec(flops="50%"),
                       search=ds.SearchSpec(epochs=1, gate_every=1, recalibrate_batches=1, precision="bf16",
                                            channels_last=True))  # fmt: skip
    batches = _batches(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(copy.deepcopy(ds.create_model("resnet8")), budget, batches, batches[:2],
                           torch.zeros(1, 3, 32, 32), progress=False)  # fmt: skip
    assert 0.99 <= result.metrics["flops_over_target"] <= 1.0
