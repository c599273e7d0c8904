"""The Searcher's bi-level steps: weights move only on weight steps, gates only on gate steps."""

from __future__ import annotations

import warnings

import pytest
import torch

import dais_search as ds
from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.search import Searcher


def _budget(**search):
    return parse_budget({"version": 1, "model": {"name": "resnet8"}, "budget": {"flops": "50%"},
                         "search": {"epochs": 1, **search}})  # fmt: skip


def test_weights_move_only_on_weight_steps_and_gates_only_on_gate_steps():
    torch.manual_seed(0)
    model = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(model, _budget(), torch.zeros(1, 3, 32, 32), steps_per_epoch=4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def snapshot():
        return (
            [p.detach().clone() for p in searcher.weight_params],
            [p.detach().clone() for p in searcher.gate_params],
        )

    w0, g0 = snapshot()
    searcher.weight_step(x, y)
    w1, g1 = snapshot()
    assert any(not torch.equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    lam = searcher.lam
    stats = searcher.gate_step(x, y)
    w2, g2 = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert searcher.lam == pytest.approx(lam + (stats["flops_ratio"] - 1))  # dual ascent, rho = 1


def test_a_gate_step_over_budget_lowers_the_soft_flops():
    model = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(model, _budget(gate_lr=0.05), torch.zeros(1, 3, 32, 32), steps_per_epoch=4)
    with torch.no_grad():
        searcher.gates.theta.fill_(2.0)  # every group keeps ~88%: far over the 50% budget
    searcher.lam = 5.0  # the multiplier of a search that has been over budget for a while

    def soft_ratio() -> float:
        with torch.no_grad():
            return float(searcher.flops_model.flops(searcher.gates.expected_width())) / searcher.flops_target

    ratios = [soft_ratio()]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        searcher.gate_step(x, y)
        ratios.append(soft_ratio())
    assert ratios[0] > 1.5 and all(b < a for a, b in zip(ratios, ratios[1:], strict=False)), ratios


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
def test_the_search_starts_on_the_budget(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(create_model("resnet8"), _budget(mode=mode), torch.zeros(1, 3, 32, 32), 4)
    with torch.no_grad():
        ratio = float(searcher.flops_model.flops(searcher.gates.expected_width())) / searcher.flops_target
    assert 0.97 <= ratio <= 1.0 + 1e-6  # the uniform keep ratio whose soft FLOPs fit the target


def test_a_float64_model_is_fed_float64_batches():
    """Batches reach the model through the one place that moves them (train.to_model): a float64
    model searched and recalibrated from float32 loaders works, and its gated forward sees float64."""
    model = create_model("resnet8").double()
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].dtype))
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(3)]
    budget = ds.Budget(search=ds.SearchSpec(epochs=1, gate_every=1, recalibrate_batches=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, batches, batches, torch.zeros(1, 3, 32, 32), progress=False)
    assert set(seen) == {torch.float64}
    assert next(result.pruned.parameters()).dtype == torch.float64


def test_binarize_keeps_the_top_indicators_and_meets_the_budget():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(create_model("resnet8"), _budget(mode="dais+dsa"), torch.zeros(1, 3, 32, 32), 4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for alpha in searcher.gates.alpha:
            alpha.copy_(torch.randn(alpha.shape, generator=g) * 3)
        searcher.gates.temperature.fill_(0.02)
    plan = searcher.binarize()
    assert 0.99 * searcher.flops_target <= plan.flops <= searcher.flops_target
    for i, group in enumerate(searcher.groups):
        kept = plan.kept.get(group.id, list(range(group.size)))
        alpha = searcher.gates.alpha[i].detach()
        dropped = sorted(set(range(group.size)) - set(kept))
        if dropped:  # every kept channel's indicator is above every dropped one's
            assert alpha[kept].min() > alpha[dropped].max(), group.name


def test_warmup_holds_the_start_temperature_then_anneals_over_the_rest():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.zeros(1, 3, 32, 32)
        searcher = Searcher(create_model("resnet8"), _budget(warmup=0.25, temperature_end=0.01), x, 4)
        plain = Searcher(create_model("resnet8"), _budget(temperature_end=0.01), x, 4)
    assert searcher.set_progress(0.0) == pytest.approx(1.0)
    assert searcher.set_progress(0.25) == pytest.approx(1.0)
    assert searcher.set_progress(1.0) == pytest.approx(0.01)
    # Three quarters of the search anneal what the plain schedule anneals over all of it.
    assert searcher.set_progress(0.625) == pytest.approx(plain.set_progress(0.5))
    assert float(searcher.gates.temperature) == pytest.approx(0.1)
    assert plain.set_progress(0.25) < 1.0


def test_gate_every_below_the_split_ratio_passes_over_the_held_out_split_again():
    model = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(model, _budget(), torch.zeros(1, 3, 32, 32), steps_per_epoch=6)
    train = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(6)]
    held_out = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    stats = searcher.run_epoch(0, train, held_out, gate_every=1, progress=False)
    assert stats["gate_steps"] == 6  # 2 held-out batches, 3 passes


def test_a_search_without_weight_training_moves_only_the_gates():
    model = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(model, _budget(train_weights=False), torch.zeros(1, 3, 32, 32), steps_per_epoch=4)
    weights = [p.detach().clone() for p in model.parameters()]
    gates = [p.detach().clone() for p in searcher.gate_params]
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(4)]
    stats = searcher.run_epoch(0, batches, batches[:2], gate_every=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(gates, searcher.gate_params, strict=True))
    assert stats["gate_steps"] == 4 and "train_loss" not in stats and searcher.step == 4
