"""benchmarks/latency_plans.py at a toy size: every plan timed beside the dense model, its FLOPs and
widths from the plan file, the dense ratio exactly 1, and a label-less plan refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import latency_plans  # noqa: E402

from dais_search import create_model  # noqa: E402
from dais_search.channels import random_plan  # noqa: E402


@pytest.mark.parametrize("channels_last", [False, True])
def test_plans_timed_beside_dense(tmp_path, channels_last):
    plans = {}
    for keep in (0.3, 0.6):
        plan = random_plan(create_model("resnet8"), (1, 3, 32, 32), keep=keep, seed=0)
        plans[f"k{keep}"] = (tmp_path / f"p{keep}.json", plan)
        plan.save(tmp_path / f"p{keep}.json")
    out = tmp_path / "lat.json"
    argv = ["--model", "resnet8", *(f"{k}={p}" for k, (p, _) in plans.items()), "--batch", "2", "--repeats", "2",
            "--warmup", "1", "--json", str(out), *(["--channels-last"] if channels_last else [])]  # fmt: skip
    result = latency_plans.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["channels_last"] is channels_last
    entry = result["batches"]["2"]
    assert set(entry) == {"dense", *plans} and entry["dense"]["ratio"] == 1.0
    for label, (_, plan) in plans.items():
        assert result["plans"][label]["flops"] == plan.flops and entry[label]["ratio"] > 0
        assert result["plans"][label]["widths"] == {str(g): len(v) for g, v in sorted(plan.kept.items())}


def test_plan_without_label_is_refused(tmp_path, capsys):
    plan = random_plan(create_model("resnet8"), (1, 3, 32, 32), keep=0.5, seed=0)
    plan.save(tmp_path / "p.json")
    with pytest.raises(SystemExit):
        latency_plans.main(["--model", "resnet8", str(tmp_path / "p.json"), "--batch", "1", "--repeats", "1"])
    assert "LABEL=PLAN" in capsys.readouterr().err
