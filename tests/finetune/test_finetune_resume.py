"""Exact resume of the fine-tune: stopped at any step (or killed) and resumed, it ends with the
weights of an uninterrupted run, bitwise on CPU."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import dais_search as ds
from dais_search.channels import random_plan
from dais_search.data import ArrayDataset, BatchLoader
from dais_search.finetune import FinetuneConfig, finetune

ROOT = Path(__file__).resolve().parents[2]


def _setup():
    torch.manual_seed(0)
    dense = ds.create_model("resnet8").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 16, 16), keep=0.5, seed=0)
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 255, (48, 3, 16, 16), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (48,), generator=g), tuple(str(c) for c in range(10)))  # fmt: skip
    return dense, plan, data


@pytest.mark.parametrize("stop_after", [2, 4, 6])  # after steps 2 and 3 of epoch 1, after step 2 of epoch 2
def test_a_fine_tune_stopped_at_any_step_resumes_exactly(tmp_path, monkeypatch, stop_after):
    dense, plan, data = _setup()
    config = FinetuneConfig(epochs=2, overparam=2, kd="sp", checkpoint_every=1)

    def go(state=None, resume=False):
        loader = BatchLoader(data, 12, train=True, seed=0)  # 4 steps an epoch
        return finetune(plan.apply(dense), dense, loader, config, plan=plan, progress=False, state_path=state,
                        resume=resume)  # fmt: skip

    reference = go()
    loop = importlib.import_module("dais_search.finetune.loop")
    calls = []

    @contextlib.contextmanager
    def stop_after_calls():  # stop() is asked once a step (not on an epoch's last) and once after each epoch
        yield lambda: calls.append(1) or len(calls) >= stop_after

    monkeypatch.setattr(loop, "stop_requests", stop_after_calls)
    with pytest.raises(ds.UserError, match="fine-tune interrupted"):
        go(tmp_path / "state.pt")
    monkeypatch.undo()
    resumed = go(tmp_path / "state.pt", resume=True)
    for (k, a), (_, b) in zip(resumed.model.state_dict().items(), reference.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]


def test_a_fine_tune_killed_mid_epoch_resumes_to_the_same_bundle(tmp_path):
    dense = ds.create_model("resnet20")
    ds.save_checkpoint(tmp_path / "dense.pt", dense, "resnet20", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet20", num_classes=10)
    plan.save(tmp_path / "plan.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}

    def run(out, *extra):
        argv = [sys.executable, "-m", "dais_search.cli", "finetune", "--plan", str(tmp_path / "plan.json"),
                "--checkpoint", str(tmp_path / "dense.pt"), "--data", "shapes:600", "--batch-size", "32",
                "--epochs", "2", "--overparam", "2", "--checkpoint-every", "1", "--out", str(out), "--no-progress",
                "--device", "cpu", *extra]  # fmt: skip
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref = run(tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    proc = run(tmp_path / "ft")
    state, end = tmp_path / "ft" / "state.pt", time.time() + 300
    while time.time() < end:
        assert proc.poll() is None, "finished before it could be killed"
        try:
            if state.is_file() and torch.load(state, weights_only=False)["step"] >= 3:
                break
        except Exception:  # noqa: BLE001 - replaced while reading
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "ft" / "model.pt").exists()
    again = run(tmp_path / "ft", "--resume")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    a = torch.load(tmp_path / "ft" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "ft" / "state.pt").exists()  # removed once the bundle is out
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_two_fine_tunes_from_one_teacher_train_the_same():
    """DistillTask freezes its teacher; a student sliced from it afterwards must still train every weight
    (its BN used to stay frozen, so a second fine-tune from the same dense model differed)."""
    dense, plan, data = _setup()
    config = FinetuneConfig(epochs=1, overparam=0, kd="sp", max_steps=2)
    runs = [finetune(plan.apply(dense), dense, BatchLoader(data, 12, train=True, seed=0), config, plan=plan,
                     progress=False) for _ in range(2)]  # fmt: skip
    for (k, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
