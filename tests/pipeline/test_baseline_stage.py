"""The baseline stage from the command line: the search's outputs without a search, errors before
any work, and the main job taking a baseline through fine-tune and export."""

from __future__ import annotations

import json
import warnings

import pytest

from dais_search.channels import ChannelPlan
from dais_search.checkpoint import load_checkpoint
from dais_search.cli import main

BUDGET = ('version = 1\n[model]\nname = "resnet8"\n[data]\ndataset = "shapes:200"\nheld_out = 40\nbatch_size = 16\n'
          '[budget]\nflops = "50%"\n[search]\nrecalibrate_batches = 2\n[baseline]\ncandidates = 3\nscore_batches = 2\n'
          '[finetune]\nepochs = 1\nmax_steps = 2\noverparam = 2\n')  # fmt: skip


def _quiet(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


@pytest.mark.parametrize("method", ["taylor-uniform", "l1-global", "eagleeye"])
def test_baseline_writes_what_search_writes(tmp_path, capsys, method):
    budget = tmp_path / "b.toml"
    budget.write_text(BUDGET)
    out = tmp_path / method
    assert _quiet(["baseline", str(budget), "--method", method, "--out", str(out), "--no-progress"]) == 0
    assert f"{method} (pruned + BN recal.)" in capsys.readouterr().out
    for name in ("plan.json", "pruned.pt", "metrics.json", "config.json", "budget.toml"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["weight_epochs"] == 0
    assert 0.99 <= metrics["flops_over_target"] <= 1.0
    assert metrics["baseline_seconds"] > 0 and metrics["dense_epoch_seconds"] > 0
    plan = ChannelPlan.load(out / "plan.json")
    assert plan.meta["method"] == method and plan.flops <= plan.meta["target_flops"]
    assert load_checkpoint(out / "pruned.pt")["plan"]["groups"] == json.loads((out / "plan.json").read_text())["groups"]
    if method == "eagleeye":
        assert len(metrics["candidates"]) == 3
    assert json.loads((out / "config.json").read_text())["method"] == method
    # The same --out again is refused; the plan stays.
    assert _quiet(["baseline", str(budget), "--method", method, "--out", str(out), "--no-progress"]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["baseline", "{budget}", "--method", "l9-uniform"], "unknown baseline method 'l9-uniform'"),
        (["baseline", "{budget}", "--method", "l1-uniform", "--set", "baseline.candidates=0"], "baseline.candidates"),
        (["baseline", "{budget}", "--method", "l1-uniform", "--set", "data.dataset=mnist"], "unknown data set"),
        (["run", "{budget}", "--method", "fpgm-random"], "unknown baseline method 'fpgm-random'"),
        (["baseline", "{budget}", "--method", "l1-global", "--set", "budget.flops=0.1%"], 'raise it to at least "'),
        (["baseline", "{budget}", "--method", "eagleeye", "--set", "budget.min_keep=100"], "budget.min_keep = 100"),
    ],
)
def test_baseline_errors_before_work(tmp_path, capsys, argv, needle):
    budget = tmp_path / "b.toml"
    budget.write_text(BUDGET)
    argv = [a.replace("{budget}", str(budget)) for a in argv]
    assert _quiet([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out" / "plan.json").exists()


def test_run_takes_a_baseline_through_fine_tune_fold_and_export(tmp_path, capsys):
    budget = tmp_path / "b.toml"
    budget.write_text(BUDGET)
    out = tmp_path / "run"
    assert _quiet(["run", str(budget), "--method", "fpgm-uniform", "--out", str(out), "--no-progress",
                   "--random-teacher"]) == 0
    assert "pruned (fine-tuned, folded)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fpgm-uniform"
    assert summary["pruned"]["flops"] <= 0.5 * summary["dense"]["flops"]
    assert json.loads((out / "metrics.json").read_text())["method"] == "fpgm-uniform"
    assert (out / "bundle" / "model.ts").is_file() and not (out / "state.pt").exists()  # no search ran
