"""The Searcher's bi-level steps: weights move only on weight steps, gates only on gate steps."""

from __future__ import annotations

import warnings

import pytest
import torch

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
