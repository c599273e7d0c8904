"""The search stage from the command line: plan, logs, resume, and errors before any work."""

from __future__ import annotations

import json
import warnings

import pytest

from dais_search import count_flops, create_model
from dais_search.channels import ChannelPlan
from dais_search.cli import main


def _write_budget(path, **search):
    lines = ["version = 1", "[model]", 'name = "resnet8"', "[data]", 'dataset = "shapes:240"', "held_out = 40",
             "batch_size = 16", "[budget]", 'flops = "50%"', "[search]", "epochs = 1", "max_steps = 6",
             "gate_every = 2", "recalibrate_batches = 2", "gate_lr = 0.1"]  # fmt: skip
    lines += [f"{k} = {v}" for k, v in search.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


REQUIRED_TAGS = [
    "search/temperature", "search/progress", "search/flops_ratio", "search/lambda", "search/task_loss",
    "search/val_loss", "search/binarization_gap", "epoch/train_top1", "epoch/val_top1", "epoch/train_loss",
]  # fmt: skip


def test_search_command_writes_plan_logs_and_resumes(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    budget = _write_budget(tmp_path / "b.toml")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["search", str(budget), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "uniform L1" in text and "FLOPs / target" in text
    for name in ("plan.json", "pruned.pt", "metrics.json", "config.json", "budget.toml", "state.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.99 <= metrics["flops_over_target"] <= 1.0
    dense = count_flops(create_model("resnet8"))
    assert metrics["flops"] <= 0.5 * dense
    plan = ChannelPlan.load(out / "plan.json")  # carries its budget, which fine-tuning checks
    assert plan.flops <= plan.meta["target_flops"] == int(metrics["target_flops"])
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(REQUIRED_TAGS) <= scalars, set(REQUIRED_TAGS) - scalars
    assert any(t.startswith("keep/") for t in scalars)
    assert any(t.startswith("mask/") for t in events.Tags()["histograms"])
    assert "search/indicators" in events.Tags()["images"]
    assert any("plan/final" in t for t in events.Tags()["tensors"])
    # The plan replays through the CLI.
    assert main(["flops", "--plan", str(out / "plan.json")]) == 0
    assert "| pruned |" in capsys.readouterr().out

    # Same --out without --resume: refused. --resume with more epochs continues from epoch 1.
    assert main(["search", str(budget), "--out", str(out), "--no-progress"]) == 2
    assert "is not empty (metrics.json, plan.json, pruned.pt, state.pt, ...); choose a new" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["search", str(budget), "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["search", "{tmp}/none.toml"], "does not exist"),
        (["search", "{budget}", "--set", "search.modes=dais"], "unknown key search.modes"),
        (["search", "{budget}", "--resume", "--out", "{tmp}/fresh"], "holds no search state"),
        (["search", "{budget}", "--checkpoint", "{tmp}/missing.pt"], "model.checkpoint"),
        (["search", "{budget}", "--set", "data.dataset=mnist"], "unknown data set"),
        (["search", "{budget}", "--set", "budget.flops=0.1%"], 'raise it to at least "'),
        (["search", "{budget}", "--set", "budget.min_keep=100"], "budget.min_keep = 100 is more than group"),
        (["search", "{budget}", "--set", "budget.flops=1G"], "at or above the dense model's"),
        (["search", "{budget}", "--set", "data.dataset=cifar10", "--set", "data.data_dir={tmp}/nothing"],
         "data.download = true in the budget file"),
    ],
)
def test_search_errors_before_work(tmp_path, capsys, argv, needle):
    budget = _write_budget(tmp_path / "b.toml")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{budget}", str(budget)) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "run" / "state.pt").exists()  # refused before the first epoch


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, capsys):
    budget = _write_budget(tmp_path / "b.toml")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["search", str(budget), "--out", str(out), "--no-progress"]) == 0
        capsys.readouterr()
        argv = ["search", str(budget), "--out", str(out), "--resume", "--no-progress"]
        assert main([*argv, "--set", "search.gate_lr=0.2", "--set", "budget.flops=40%"]) == 2
        err = capsys.readouterr().err
        assert "budget.flops: '50%' then, '40%' now" in err and "search.gate_lr: 0.1 then, 0.2 now" in err
        # More epochs may change: applied and recorded.
        assert main([*argv, "--epochs", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["resumed_with"] == [{"search.epochs": 2}]


def test_a_flops_budget_with_a_latency_ceiling_from_the_command_line(tmp_path, capsys, fake_clock):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    budget = _write_budget(tmp_path / "b.toml")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Under the stand-in clock half the FLOPs take about 0.6 of resnet8's time: 0.5 binds.
        assert main(["search", str(budget), "--out", str(out), "--no-progress", "--set", 'budget.latency="50%"']) == 0
    text = capsys.readouterr().out
    assert "latency / dense" in text and "ceiling 0.500" in text
    metrics = json.loads((out / "metrics.json").read_text())
    lat = metrics["latency"]
    assert lat["role"] == "ceiling" and lat["measured_ratio"] <= 0.5 * 1.02
    assert metrics["flops_over_target"] < 0.99  # the ceiling bound
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    assert {"search/latency_ceiling_ratio", "search/lambda_latency"} <= set(events.Tags()["scalars"])
