"""The benchmark harness on a toy suite: every run's JSON carries BENCH.md's fields, the two
fairness rows get the right epochs, an interrupted suite resumes without redoing work, and the
table and the PNG are rendered from the JSONs."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import suite as harness  # noqa: E402

from dais_search import create_model, save_checkpoint  # noqa: E402

FIELDS = {"method", "teacher", "dense_test_top1", "target_flops_ratio", "flops_ratio", "flops_over_target", "params",
          "test_top1_before_finetune", "rows", "search_seconds", "dense_epoch_seconds", "search_cost_ratio",
          "latency_ms", "versions", "machine", "command"}  # fmt: skip
TIMING = {"search_seconds", "dense_epoch_seconds", "search_cost_ratio", "retimed"}


@pytest.fixture
def toy_suite(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "teacher.pt"
    save_checkpoint(ckpt, create_model("resnet8"), "resnet8", 10)
    budget = tmp_path / "b.toml"
    budget.write_text(
        f'version = 1\n[model]\nname = "resnet8"\ncheckpoint = "{ckpt}"\n[data]\ndataset = "shapes:200"\n'
        'held_out = 40\nbatch_size = 16\n[budget]\nflops = "50%"\n[search]\nepochs = 1\nmax_steps = 4\n'
        "gate_every = 2\nrecalibrate_batches = 2\n[baseline]\nscore_batches = 2\n[finetune]\noverparam = 2\n"
    )
    methods = ("ours", "ours-frozen", "ours-vanilla-ft", "uniform-ours-ft", "l1-uniform", "taylor-uniform")
    return harness.Suite("toy", {"keep50": str(budget)}, 1, methods=methods, finetune_args=("--max-steps", "2"),
                         latency_repeats=2)  # fmt: skip


def _run(tmp_path, suite, *extra):
    argv = ["--suite", "toy", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return harness.main(argv, {"toy": suite})


def test_suite_runs_resumes_and_renders(tmp_path, toy_suite, capsys):
    records = {r["method"]: r for r in _run(tmp_path, toy_suite)}
    assert set(records) == set(toy_suite.methods)
    for r in records.values():
        assert FIELDS <= set(r), FIELDS - set(r)
        assert 0.99 <= r["flops_over_target"] <= 1.0
        assert set(r["latency_ms"]) == {"1", "16"} and r["latency_ms"]["1"]["dense"] > 0
        assert r["machine"]["cpu"] and r["machine"]["torch_threads"] == torch.get_num_threads()  # what timed it
    # The search trained the weights for one epoch: a method that did not gets it as an extra fine-tune epoch.
    ours, l1 = records["ours"]["rows"], records["l1-uniform"]["rows"]
    assert ours["equal_finetune"]["finetune_epochs"] == ours["equal_total"]["finetune_epochs"] == 1
    assert ours["equal_total"]["total_weight_epochs"] == 2
    assert (l1["equal_finetune"]["finetune_epochs"], l1["equal_total"]["finetune_epochs"]) == (1, 2)
    frozen = records["ours-frozen"]["rows"]  # a search on frozen weights spent none: it gets the extra epoch too
    assert frozen["equal_total"]["finetune_epochs"] == frozen["equal_total"]["total_weight_epochs"] == 2
    assert records["ours"]["finetune"] == "LOP + SP-KD" and records["l1-uniform"]["finetune"] == "plain"
    assert records["uniform-ours-ft"]["finetune"] == "LOP + SP-KD"
    assert records["uniform-ours-ft"]["flops"] == records["l1-uniform"]["flops"]  # the same plan
    assert records["ours-vanilla-ft"]["flops"] == records["ours"]["flops"]
    table = (tmp_path / "results" / "table.md").read_text()
    assert all(f"| {m} " in table for m in toy_suite.methods) and "equal total epochs" in table
    png = tmp_path / "results" / "accuracy_vs_flops.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: nothing is redone; a lost JSON is rebuilt from the finished stages, with the same numbers.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("metrics.json")}
    lost = tmp_path / "results" / "l1-uniform_keep50_seed0.json"
    lost.unlink()
    again = {r["method"]: r for r in _run(tmp_path, toy_suite)}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("metrics.json")} == stamps
    assert again["l1-uniform"]["rows"] == records["l1-uniform"]["rows"]
    capsys.readouterr()
    assert len(_run(tmp_path, toy_suite, "--render")) == len(toy_suite.methods)


def test_a_baseline_stage_killed_between_its_files_is_made_again(tmp_path, toy_suite):
    # Killed after plan.json and pruned.pt, before metrics.json: the suite (which never passed --resume
    # to a baseline) stopped at "--out ... is not empty" and resumed nothing after it.
    suite = harness.Suite("toy", toy_suite.budgets, 1, methods=("l1-uniform",), finetune_args=("--max-steps", "2"),
                          latency_repeats=2)  # fmt: skip
    first = _run(tmp_path, suite)[0]
    plan_dir = tmp_path / "work" / "keep50" / "seed0" / "plans" / "l1-uniform"
    (plan_dir / "metrics.json").unlink()
    (tmp_path / "results" / "l1-uniform_keep50_seed0.json").unlink()
    assert {"plan.json", "pruned.pt"} <= {p.name for p in plan_dir.iterdir()}
    again = _run(tmp_path, suite)[0]
    assert (plan_dir / "metrics.json").is_file()
    assert (again["flops"], again["params"]) == (first["flops"], first["params"])


def test_suite_refuses_unknown_methods_and_budgets(tmp_path, toy_suite):
    with pytest.raises(SystemExit, match="unknown method 'l9-uniform'"):
        _run(tmp_path, toy_suite, "--methods", "ours,l9-uniform")
    with pytest.raises(SystemExit, match="unknown budget 'keep10'"):
        _run(tmp_path, toy_suite, "--budgets", "keep10")
    assert not (tmp_path / "work").exists()


def test_the_depth_methods_search_blocks_or_layers_and_list_what_they_removed(tmp_path, toy_suite):
    methods = ("ours-frozen", "ours-frozen-blocks", "ours-frozen-layers")
    suite = harness.Suite("toy", toy_suite.budgets, 1, methods=methods, finetune_args=("--max-steps", "2"),
                          latency_repeats=2, search_sets=("budget.flops=0.3",))  # fmt: skip
    records = {r["method"]: r for r in _run(tmp_path, suite)}
    for r in records.values():
        assert 0.99 <= r["flops_over_target"] <= 1.0 and isinstance(r["removed_blocks"], list)
    searched = {m: json.loads((tmp_path / "work" / "keep50" / "seed0" / "plans" / m / "metrics.json").read_text())
                for m in methods}  # fmt: skip
    assert "searched_blocks" not in searched["ours-frozen"]  # channels only
    # ResNet-8: one identity block (layer1.0; the other two have option-A shortcuts), and one layer
    # whose output is shaped like its input outside a block's searched set (layer1.0.conv1 + bn1).
    assert searched["ours-frozen-blocks"]["searched_blocks"] == searched["ours-frozen-layers"]["searched_blocks"] == 1
    table = (tmp_path / "results" / "table.md").read_text()
    assert "removed blocks / layers" in table and all(f"| {m} [budget.flops=0.3] " in table for m in methods)


def test_retime_measures_the_plan_stages_again_and_refuses_another_plan(tmp_path, toy_suite, capsys):
    methods = ("ours-frozen", "ours-vanilla-ft", "l1-uniform")
    suite = harness.Suite("toy", toy_suite.budgets, 1, methods=methods, finetune_args=("--max-steps", "2"),
                          latency_repeats=2)  # fmt: skip
    _run(tmp_path, suite, "--methods", "ours-frozen,l1-uniform")
    results = tmp_path / "results"
    before = {m: json.loads((results / f"{m}_keep50_seed0.json").read_text()) for m in ("ours-frozen", "l1-uniform")}
    # A retime folder left from before holds made-up seconds: it must not be taken for a new measurement.
    stale = tmp_path / "work" / "keep50" / "seed0" / "retime" / "l1-uniform"
    stale.mkdir(parents=True)
    made_up = {**before["l1-uniform"], "baseline_seconds": 1e6}
    made_up["pruned_test_top1"] = made_up["test_top1_before_finetune"]
    (stale / "metrics.json").write_text(json.dumps(made_up))
    after = {r["method"]: r for r in _run(tmp_path, suite, "--retime")}
    assert "ours-vanilla-ft" not in after and "nothing to retime" in capsys.readouterr().out
    for m, old in before.items():
        new = after[m]
        assert new["retimed"]["was"]["search_cost_ratio"] == old["search_cost_ratio"]
        assert new["search_seconds"] < 1e5 and new["search_seconds"] != old["search_seconds"]
        assert new["search_cost_ratio"] == pytest.approx(new["search_seconds"] / new["dense_epoch_seconds"])
        assert {k: v for k, v in new.items() if k not in TIMING} == {k: v for k, v in old.items() if k not in TIMING}
    fresh = json.loads((stale / "metrics.json").read_text())
    assert fresh["baseline_seconds"] == after["l1-uniform"]["search_seconds"]

    # A run whose plan stage now gives another plan keeps its JSON untouched; the others are timed again.
    path = results / "l1-uniform_keep50_seed0.json"
    path.write_text(json.dumps({**after["l1-uniform"], "params": after["l1-uniform"]["params"] + 1}))
    kept = path.read_text()
    with pytest.raises(SystemExit, match="l1-uniform keep50 seed 0: the plan stage run again gives another plan"):
        _run(tmp_path, suite, "--retime", "--methods", "l1-uniform,ours-frozen")
    assert path.read_text() == kept
    frozen = json.loads((results / "ours-frozen_keep50_seed0.json").read_text())
    assert frozen["retimed"]["was"]["search_seconds"] == after["ours-frozen"]["search_seconds"]


def _record(method: str, seed: int, params: int, before: float, equal_ft: float, equal_total: float,
            flops: int = 74_761_472) -> dict:
    """A run's JSON as the harness writes it, with only what the renderer reads."""
    rows = {"equal_finetune": {"test_top1": equal_ft, "total_weight_epochs": 5},
            "equal_total": {"test_top1": equal_total, "total_weight_epochs": 7}}  # fmt: skip
    return {"method": method, "budget": "keep30", "seed": seed, "teacher": "resnet56", "target_flops_ratio": 0.3,
            "dense_test_top1": 93.39, "flops": flops, "flops_ratio": 0.2985, "flops_over_target": 0.995,
            "params": params, "search_cost_ratio": 2.0, "test_top1_before_finetune": before, "rows": rows,
            "finetune": "plain",
            "latency_ms": {"1": {"dense": 8.0, "pruned": 6.0}, "128": {"dense": 100.0, "pruned": 60.0}}}  # fmt: skip


def test_the_table_gives_mean_and_std_over_seeds_and_the_range_of_params_where_plans_differ(tmp_path):
    records = [_record("ours", 0, 338_220, 79.98, 91.33, 91.33), _record("ours", 1, 330_000, 80.02, 91.13, 91.13),
               _record("l1-uniform", 0, 254_430, 52.40, 90.90, 91.40)]  # fmt: skip
    md = harness.render(records, tmp_path / "t.md", None)
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()
             if line.startswith("| ") and "method" not in line}  # fmt: skip
    assert list(lines) == ["l1-uniform", "ours"]  # sorted by the equal-total mean: 91.40 over 91.23
    ours, l1 = lines["ours"], lines["l1-uniform"]
    assert ours[3] == "334,110 (330,000-338,220)" and l1[3] == "254,430"  # one count where the plans agree
    assert ours[5] == "80.00 +- 0.03 (n=2)" and ours[7] == "91.23 +- 0.14 (n=2)" and l1[7] == "91.40"
    assert ours[9] == l1[9] == "0.60"  # latency ratio at the largest batch


def test_the_table_says_when_an_ablation_fine_tuned_another_plan_than_its_parents_run(tmp_path):
    ours = [_record("ours", 0, 338_220, 79.98, 91.33, 91.33), _record("ours", 1, 330_000, 80.02, 91.13, 91.13)]
    same = _record("ours-vanilla-ft", 0, 338_220, 79.98, 90.5, 90.5)  # a plan stage that repeated exactly
    other = _record("ours-vanilla-ft", 1, 355_384, 81.20, 90.6, 90.6, flops=75_240_704)  # one that did not
    other["machine"] = {"cpu": "CPU B"}
    md = harness.render([*ours, same, other], tmp_path / "t.md", None)
    notes = [line for line in md.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1 and "ours-vanilla-ft seed 1" in notes[0] and "ours seed 1" in notes[0]
    assert "params 355,384 vs 330,000" in notes[0] and "CPU B vs not recorded" in notes[0]
    # no parent run of that seed (a baseline alone, or the parent not run yet): nothing to compare
    md = harness.render([ours[0], _record("ours-vanilla-ft", 1, 1, 1.0, 1.0, 1.0)], tmp_path / "t.md", None)
    assert "Note:" not in md


def test_a_fresh_clone_takes_the_search_epochs_from_ours_json_and_does_not_search_again(tmp_path, toy_suite):
    first = {r["method"]: r for r in _run(tmp_path, toy_suite, "--methods", "ours,l1-uniform")}
    ours_plan = tmp_path / "work" / "keep50" / "seed0" / "plans" / "ours"
    assert ours_plan.is_dir()
    # A fresh clone: the committed JSONs, no run folders. l1-uniform's run is made again from scratch.
    shutil.rmtree(tmp_path / "work")
    (tmp_path / "results" / "l1-uniform_keep50_seed0.json").unlink()
    again = {r["method"]: r for r in _run(tmp_path, toy_suite, "--methods", "l1-uniform")}
    assert not ours_plan.exists()  # the search's weight epochs came from ours' JSON
    assert again["l1-uniform"]["rows"]["equal_total"]["finetune_epochs"] == 2
    assert again["l1-uniform"]["rows"]["equal_total"]["finetune_epochs"] == \
        first["l1-uniform"]["rows"]["equal_total"]["finetune_epochs"]
