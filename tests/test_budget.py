"""Budget files: every file in budgets/ validates; each kind of mistake is an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dais_search.budget import load_budget, parse_budget, parse_override
from dais_search.errors import UserError

BUDGETS = sorted((Path(__file__).resolve().parents[1] / "budgets").glob("*.toml"))
REQUIRED = {
    "quickstart", "resnet20_cifar10_keep50", "resnet56_cifar10_keep50", "resnet56_cifar10_keep30",
    "vgg16_cifar10_keep35", "mobilenetv2_cifar10_keep60", "resnet50_imagenet_keep50",
}  # fmt: skip


def test_the_required_budgets_exist():
    assert REQUIRED <= {p.stem for p in BUDGETS}


@pytest.mark.parametrize("path", BUDGETS, ids=lambda p: p.stem)
def test_every_budget_file_validates(path):
    budget = load_budget(path)
    text = path.read_text()
    assert text.startswith("#") and "dais-search search" in text and "Expected" in text, "header comment"
    assert budget.model.name
    if budget.latency_role == "target":  # a latency budget: its ratio is in the name
        assert budget.flops_target(1000) is None
        assert budget.latency_target(1.0) == pytest.approx(int(path.stem.rsplit("latency", 1)[-1]) / 100)
        return
    target = budget.flops_target(1000)
    assert 0 < target <= 1000
    keep = int(path.stem.rsplit("keep", 1)[-1].split("_")[0]) if "keep" in path.stem else 50
    assert target == pytest.approx(keep * 10)
    if budget.latency_role == "ceiling":  # keep50_latency55: the ceiling is in the name too
        assert budget.latency_target(1.0) == pytest.approx(int(path.stem.rsplit("latency", 1)[-1]) / 100)


BASE = {"version": 1, "model": {"name": "resnet20"}}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"version": 2}, "version = 2"),
        ({"extra": 1}, "unknown table or key 'extra'"),
        ({"search": {"epoch": 2}}, "unknown key search.epoch; allowed keys in \\[search\\]: "),
        ({"search": {"epochs": "two"}}, "search.epochs = 'two' should be a int"),
        ({"search": {"mode": "lasso"}}, "search.mode = 'lasso'"),
        ({"search": {"temperature_start": 0.01, "temperature_end": 1.0}}, "temperature_end"),
        ({"budget": {"flops": "150%"}}, "budget.flops = '150%'"),
        ({"budget": {"flops": "half"}}, "'half' is not a budget"),
        ({"budget": {"flops": 1.5}}, "1.5 is neither a fraction in \\(0, 1\\] nor an absolute count"),
        ({"budget": {"flops": 500}}, "500 is neither a fraction"),
        ({"budget": {"flops": 12345.5}}, "neither a fraction"),
        ({"budget": {"flops": "12"}}, "too small for an absolute count"),
        ({"budget": {"flops": -3}}, "budget.flops = -3"),
        ({"budget": {"input_size": [32, 32]}}, "budget.input_size"),
        ({"model": {}}, "model.name is required"),
        ({"data": {"batch_size": 0}}, "batch_size"),
        ({"search": {"warmup": 1.0}}, "search.warmup = 1.0; give a fraction"),
        ({"search": {"gate_every": -1}}, "search.max_steps and search.checkpoint_every must be >= 0"),
        ({"data": {"augment": "no"}}, "data.augment = .no. should be a bool"),
    ],
)
def test_mistakes_are_named(change, needle):
    raw = {**BASE, **{k: v for k, v in change.items() if k not in ("model",)}}
    if "model" in change:
        raw["model"] = change["model"]
    with pytest.raises(UserError, match=needle):
        parse_budget(raw, "test.toml")


def test_flops_forms_and_params():
    assert parse_budget({**BASE, "budget": {"flops": "30%"}}).flops_target(1000) == pytest.approx(300)
    assert parse_budget({**BASE, "budget": {"flops": 0.25}}).flops_target(1000) == pytest.approx(250)
    assert parse_budget({**BASE, "budget": {"flops": 1}}).flops_target(1000) == pytest.approx(1000)  # 100%
    assert parse_budget({**BASE, "budget": {"flops": 4000}}).flops_target(10**4) == pytest.approx(4000)
    assert parse_budget({**BASE, "budget": {"flops": 1.25e8}}).flops_target(10**9) == pytest.approx(1.25e8)
    assert parse_budget({**BASE, "budget": {"flops": "125M"}}).flops_target(10**9) == pytest.approx(1.25e8)
    assert parse_budget({**BASE, "budget": {"flops": "1.5 G"}}).flops_target(10**10) == pytest.approx(1.5e9)
    budget = parse_budget({**BASE, "budget": {"params": "60%"}})
    assert budget.params_target(100) == pytest.approx(60) and parse_budget(BASE).params_target(100) is None


def test_overrides_and_file_errors(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('version = 1\n[model]\nname = "resnet20"\n[search]\nepochs = 3\n')
    assert load_budget(path).search.epochs == 3
    assert load_budget(path, {"search.epochs": 1, "model.checkpoint": "x.pt"}).search.epochs == 1
    assert parse_override("search.mode=dais") == ("search.mode", "dais")
    assert parse_override("budget.flops='40%'") == ("budget.flops", "40%")
    assert parse_override("search.gate_lr=0.1") == ("search.gate_lr", 0.1)
    tuned = load_budget(
        path, dict([parse_override("finetune.sp_weight=300"), parse_override("finetune.kd_layers=blocks")])
    )
    assert (tuned.finetune.sp_weight, tuned.finetune.kd_layers) == (300, "blocks")
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        load_budget(path, {"epochs": 1})
    with pytest.raises(UserError, match="unknown key search.epoches"):
        load_budget(path, {"search.epoches": 1})
    with pytest.raises(UserError, match="does not exist"):
        load_budget(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("version = = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_budget(tmp_path / "bad.toml")
