"""Latency budgets: the LatencyModel's calibration, a search that lands its *measured* latency on the
target, and the errors a latency budget can give.

Timing is replaced by a deterministic stand-in (the ``fake_clock`` fixture of conftest.py: seconds
from each module's FLOPs, a network's seconds from its FLOPs plus a fixed overhead), so the
feedback loop is tested exactly; one test times real layers."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.channels import FlopsModel, LatencyModel, trace_channels
from dais_search.channels import latency_model as lm_module
from dais_search.cost.lut import LatencyCache
from dais_search.errors import UserError
from dais_search.search import Searcher

SHAPE = (1, 3, 32, 32)


def _budget(**budget):
    return parse_budget({"version": 1, "model": {"name": "resnet20"}, "data": {"batch_size": 8},
                         "budget": budget, "search": {"epochs": 1}})  # fmt: skip


def _searcher(budget) -> Searcher:
    torch.manual_seed(0)  # the same dense weights for every searcher of a test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Searcher(create_model("resnet20"), budget, torch.zeros(SHAPE), 4)


def test_the_latency_model_is_exact_at_its_two_calibration_networks(fake_clock):
    model = create_model("resnet8").eval()
    graph = trace_channels(model, torch.zeros(SHAPE))
    lm = LatencyModel(graph, model, torch.zeros(SHAPE), 8, LatencyCache(device="cpu"))
    fm = FlopsModel(graph, model, torch.zeros(SHAPE))
    assert float(lm.latency(fm.full_widths())) == pytest.approx(lm.dense_seconds, rel=1e-9)
    halves = {g.id: lm_module._first_half(g) for g in lm.groups}
    assert float(lm.latency({k: len(v) for k, v in halves.items()})) == pytest.approx(lm.half_seconds, rel=1e-9)
    # Under the stand-in, network time is affine in the conv FLOPs, and so is the model's prediction.
    x8 = torch.zeros(8, 3, 32, 32)
    quarter = {g.id: list(range(max(1, g.size // 4))) for g in lm.groups}
    measured = fake_clock({"m": lm.pruned(quarter)}, x8, 1)["m"][0]
    assert float(lm.latency({k: len(v) for k, v in quarter.items()})) == pytest.approx(measured, rel=0.02)
    widths = fm.full_widths().mul(0.6).requires_grad_()
    lm.latency(widths).backward()
    assert (widths.grad > 0).all()  # every group's width costs time


def test_a_latency_search_lands_the_measured_ratio_on_the_target_by_measuring(fake_clock, monkeypatch):
    searcher = _searcher(_budget(latency="50%", round_to=4))
    assert searcher.cost_name == "latency" and searcher.flops_target is None
    # The stand-in network clock disagrees with the prediction by a factor: only measuring finds it.
    monkeypatch.setattr(LatencyModel, "measure_ratio", lambda self, kept, repeats=None:
                        0.8 * float(self.latency(searcher.flops_model.widths_of(kept))) / self.dense_seconds)
    with torch.no_grad():
        for alpha in searcher.gates.alpha:
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(alpha.numel())))
    plan = searcher.binarize()
    lat = plan.meta["latency"]
    assert lat["target_ratio"] == pytest.approx(0.5)
    assert abs(lat["measured_ratio"] / 0.5 - 1) <= 0.02, lat["rounds"]
    assert len(lat["rounds"]) > 1 and abs(lat["rounds"][0]["measured_ratio"] / 0.5 - 1) > 0.05  # the first was off
    assert all(len(k) % 4 == 0 or len(k) == g.size for g in searcher.groups for k in [plan.kept.get(g.id, [])] if k)


def test_latency_budget_errors_name_the_key_and_the_fix(fake_clock):
    with pytest.raises(UserError, match=r'budget.latency = "1%".*raise it to at least'):
        _searcher(_budget(latency="1%"))
    with pytest.raises(UserError, match="neither budget.flops nor budget.latency"):
        _budget(flops="")
    with pytest.raises(UserError, match="budget.latency = '150%'"):
        _budget(latency="150%")
    assert _budget(latency="12.5 ms").latency_target(1.0) == pytest.approx(0.0125)
    assert _budget(latency=0.4).latency_target(0.5) == pytest.approx(0.2)


def test_baselines_refuse_a_latency_budget_before_any_work(tmp_path):
    from dais_search.pipeline import run_baseline

    with pytest.raises(UserError, match="baselines take FLOPs budgets"):
        run_baseline(_budget(latency="50%"), "b.toml", str(tmp_path / "out"), method="l1-uniform")
    assert not (tmp_path / "out").exists()


def _random_indicators(searcher: Searcher) -> None:
    with torch.no_grad():
        for alpha in searcher.gates.alpha:
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(alpha.numel())))


def test_latency_alone_is_the_target_and_beside_flops_a_ceiling():
    assert _budget(latency="50%").latency_role == "target"
    assert _budget(latency="50%").flops_target(1000) is None
    both = _budget(flops="40%", latency="50%")
    assert both.latency_role == "ceiling" and both.flops_target(1000) == pytest.approx(400)
    assert _budget(flops="40%").latency_role == ""


def test_a_loose_latency_ceiling_leaves_the_flops_plan_as_it_was(fake_clock):
    plans = []
    for budget in (_budget(flops="50%"), _budget(flops="50%", latency="95%")):
        searcher = _searcher(budget)
        _random_indicators(searcher)
        plans.append(searcher.binarize())
    assert searcher.cost_name == "flops" and searcher.latency_ceiling is not None
    flops_only, ceiling = plans
    assert ceiling.kept == flops_only.kept
    assert 0.99 <= ceiling.flops / searcher.flops_target <= 1.0
    assert ceiling.meta["latency"]["role"] == "ceiling" and ceiling.meta["latency"]["measured_ratio"] < 0.95


def test_a_binding_latency_ceiling_holds_the_measured_latency_under_it(fake_clock, monkeypatch, caplog):
    # Under the stand-in clock 50% of the FLOPs takes about 0.66 of the dense time: a 0.55 ceiling binds.
    searcher = _searcher(_budget(flops="50%", latency="55%"))
    # The network runs 10% slower than predicted: only measuring finds it, and the repair must then
    # lower the ceiling it repairs the prediction under.
    monkeypatch.setattr(LatencyModel, "measure_ratio", lambda self, kept, repeats=None:
                        1.1 * float(self.latency(searcher.flops_model.widths_of(kept))) / self.dense_seconds)
    _random_indicators(searcher)
    with caplog.at_level(logging.WARNING, logger="dais_search"):
        plan = searcher.binarize()
    lat = plan.meta["latency"]
    assert lat["role"] == "ceiling" and lat["target_ratio"] == pytest.approx(0.55)
    assert lat["rounds"][0]["measured_ratio"] > 0.55 * 1.02  # the first plan, on the prediction, was over
    assert lat["measured_ratio"] <= 0.55 * 1.02
    assert plan.flops < 0.99 * searcher.flops_target  # the ceiling bound, not the FLOPs target
    assert plan.meta["target_flops"] == int(searcher.flops_target)
    assert "the latency ceiling binds" in caplog.text


def test_the_ceiling_multiplier_rises_only_while_the_soft_latency_is_over(fake_clock):
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    tight = _searcher(_budget(flops="50%", latency="55%"))
    _, r, _, rl = tight.budget_terms(tight.gates())
    assert abs(float(r.detach())) < 0.05 and float(rl.detach()) > 0  # it starts on the FLOPs target, over the ceiling
    stats = tight.gate_step(x, y)
    assert tight.lam_latency > 0 and stats["latency_ceiling_ratio"] > 1
    state = tight.state_dict()
    fresh = _searcher(_budget(flops="50%", latency="55%"))
    fresh.load_state_dict(state)
    assert fresh.lam_latency == tight.lam_latency
    loose = _searcher(_budget(flops="50%", latency="95%"))
    loose.gate_step(x, y)
    assert loose.lam_latency == 0.0


def test_baselines_refuse_a_latency_ceiling_and_say_how_to_drop_it(tmp_path):
    from dais_search.pipeline import run_baseline

    with pytest.raises(UserError, match="--set budget.latency=''"):
        run_baseline(_budget(flops="50%", latency="60%"), "b.toml", str(tmp_path / "out"), method="l1-uniform")
    assert not (tmp_path / "out").exists()


def test_a_binding_ceiling_uses_the_room_the_prediction_did_not_see(fake_clock, monkeypatch):
    # The network runs 10% faster than predicted: the first plan measures well under the ceiling
    # with FLOPs left under their target, so the ceiling is raised until the plan measures on it.
    searcher = _searcher(_budget(flops="50%", latency="55%"))
    monkeypatch.setattr(LatencyModel, "measure_ratio", lambda self, kept, repeats=None:
                        0.9 * float(self.latency(searcher.flops_model.widths_of(kept))) / self.dense_seconds)
    _random_indicators(searcher)
    plan = searcher.binarize()
    lat = plan.meta["latency"]
    first = lat["rounds"][0]["measured_ratio"]
    assert first < 0.55 * 0.98 and len(lat["rounds"]) > 1
    assert abs(lat["measured_ratio"] / 0.55 - 1) <= 0.02 or plan.flops >= 0.99 * searcher.flops_target
    assert lat["measured_ratio"] > first  # it kept more: more FLOPs, more time, still under the ceiling
