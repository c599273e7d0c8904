"""Exact resume: a search killed in the middle of an epoch (SIGKILL, or stopped by SIGTERM) and
resumed gives the same plan and the same weights, bitwise on CPU, as one that ran through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def _budget(tmp_path) -> Path:
    path = tmp_path / "b.toml"
    path.write_text('version = 1\n[model]\nname = "resnet20"\n[data]\ndataset = "shapes:1300"\nheld_out = 260\n'
                    'batch_size = 32\n[budget]\nflops = "50%"\n[search]\nepochs = 2\ngate_every = 3\n'
                    "checkpoint_every = 1\nrecalibrate_batches = 2\n")  # fmt: skip
    return path


def _search(budget, out, *extra) -> subprocess.Popen:
    argv = [sys.executable, "-m", "dais_search.cli", "search", str(budget), "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_mid_epoch(proc, state: Path, least_step: int = 3, timeout: float = 300) -> dict:
    """Polls the saved state until it is inside an epoch at or after ``least_step``."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "the search finished before it could be interrupted: " + proc.stderr.read()
        if state.is_file():
            try:
                saved = torch.load(state, weights_only=False)
            except Exception:  # noqa: BLE001 - replaced while reading; try again
                continue
            if saved.get("position") and saved["position"]["step"] >= least_step:
                return saved
        time.sleep(0.02)
    raise AssertionError("no mid-epoch state appeared")


def _result(out: Path) -> tuple[dict, dict]:
    plan = json.loads((out / "plan.json").read_text())
    pruned = torch.load(out / "pruned.pt", weights_only=False)["state_dict"]
    return plan, pruned


def _same(a: Path, b: Path) -> None:
    (plan_a, w_a), (plan_b, w_b) = _result(a), _result(b)
    assert plan_a["groups"] == plan_b["groups"]
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert torch.equal(w_a[k], w_b[k]), k
    hist = lambda out: [{k: v for k, v in h.items() if "seconds" not in k and "dense" not in k}  # noqa: E731
                        for h in json.loads((out / "metrics.json").read_text())["history"]]
    assert hist(a) == hist(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    proc = _search(_budget(tmp), tmp / "run")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return tmp / "run"


def test_a_search_killed_mid_epoch_resumes_to_the_same_plan_and_weights(tmp_path, reference):
    budget, out = _budget(tmp_path), tmp_path / "run"
    proc = _search(budget, out)
    _wait_mid_epoch(proc, out / "state.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "plan.json").exists()
    resumed = _search(budget, out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _same(out, reference)


def test_sigterm_saves_the_state_and_says_how_to_resume(tmp_path, reference):
    budget, out = _budget(tmp_path), tmp_path / "run"
    proc = _search(budget, out)
    _wait_mid_epoch(proc, out / "state.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "search interrupted (epoch" in err and "--resume" in err
    assert "Traceback" not in err
    saved = torch.load(out / "state.pt", weights_only=False)
    assert saved["position"]["step"] >= 3 or saved["position"] is None
    resumed = _search(budget, out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _same(out, reference)


@pytest.mark.parametrize("stop_after", [4, 5, 9])  # between gate steps (cached masks), right after one, epoch 2
def test_a_search_stopped_at_any_step_resumes_exactly(tmp_path, monkeypatch, stop_after):
    """In one process, stopped deterministically after ``stop_after`` steps (gate_every = 3, 6 steps an epoch)."""
    import contextlib
    import importlib
    import warnings

    import dais_search as ds

    run_module = importlib.import_module("dais_search.search.run")

    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(6)]
    budget = ds.Budget(budget=ds.BudgetSpec(flops="50%"), search=ds.SearchSpec(epochs=2, gate_every=3,
                       checkpoint_every=1, recalibrate_batches=1))  # fmt: skip

    def go(state, resume=False):
        torch.manual_seed(0)
        model = ds.create_model("resnet8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.search(model, budget, batches, batches[:2], torch.zeros(1, 3, 16, 16), state_path=state,
                             resume=resume, progress=False)  # fmt: skip

    reference = go(tmp_path / "ref.pt")
    calls = []

    @contextlib.contextmanager
    def stop_after_steps():
        yield lambda: calls.append(1) or len(calls) >= stop_after

    monkeypatch.setattr(run_module, "stop_requests", stop_after_steps)
    with pytest.raises(ds.UserError, match="search interrupted"):
        go(tmp_path / "state.pt")
    monkeypatch.undo()
    resumed = go(tmp_path / "state.pt", resume=True)
    assert resumed.plan.kept == reference.plan.kept
    for (k, a), (_, b) in zip(resumed.pruned.state_dict().items(), reference.pruned.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
