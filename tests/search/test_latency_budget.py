"""Latency budgets: the LatencyModel's calibration, a search that lands its *measured* latency on the
target, and the errors a latency budget can give.

Timing is replaced by a deterministic stand-in (seconds from each module's FLOPs, a network's
seconds from its FLOPs plus a fixed overhead), so the feedback loop is tested exactly; one test
times real layers."""

from __future__ import annotations

import warnings

import pytest
import torch

from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.channels import FlopsModel, LatencyModel, trace_channels
from dais_search.channels import latency_model as lm_module
from dais_search.cost import count_flops, lut
from dais_search.cost.lut import LatencyCache
from dais_search.errors import UserError
from dais_search.search import Searcher

SHAPE = (1, 3, 32, 32)


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """Layer tables from FLOPs; whole networks from FLOPs x 1.3 + a fixed 2 ms (what tables miss)."""
    monkeypatch.setenv("DAIS_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut, "_time", lambda module, x, repeats, warmup: 1e-11 * count_flops(module, x))

    def network(models, x, repeats=20, warmup=5):
        return {k: [1.3e-11 * count_flops(m, x) + 2e-3] * repeats for k, m in models.items()}

    monkeypatch.setattr(lm_module, "interleaved_latency", network)
    return network


def _budget(**budget):
    return parse_budget({"version": 1, "model": {"name": "resnet20"}, "data": {"batch_size": 8},
                         "budget": budget, "search": {"epochs": 1}})  # fmt: skip


def _searcher(budget) -> Searcher:
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
    with pytest.raises(UserError, match="not both"):
        _budget(latency="50%", flops="50%")
    with pytest.raises(UserError, match="budget.latency = '150%'"):
        _budget(latency="150%")
    assert _budget(latency="12.5 ms").latency_target(1.0) == pytest.approx(0.0125)
    assert _budget(latency=0.4).latency_target(0.5) == pytest.approx(0.2)


def test_baselines_refuse_a_latency_budget_before_any_work(tmp_path):
    from dais_search.pipeline import run_baseline

    with pytest.raises(UserError, match="baselines take FLOPs budgets"):
        run_baseline(_budget(latency="50%"), "b.toml", str(tmp_path / "out"), method="l1-uniform")
    assert not (tmp_path / "out").exists()
