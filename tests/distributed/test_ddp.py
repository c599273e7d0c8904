"""Data-parallel runs under torchrun (2 CPU processes, gloo): the same result as one process with
the same global batch, parameters identical on every process, and rank 0 alone writing files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dais_search.data import ArrayDataset, BatchLoader

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def _launch(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(WORKER), *args]
    if nproc > 1:  # torchrun, as users launch it: a fresh rendezvous on a free local port
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
                str(WORKER), *args]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def test_shards_of_a_global_batch_are_the_one_process_batch():
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8)
    data = ArrayDataset(images, torch.arange(70) % 3, ("a", "b", "c"))
    whole = list(BatchLoader(data, 24, train=True, seed=5, drop_last=True))
    parts = [list(BatchLoader(data, 8, train=True, seed=5, drop_last=True, rank=r, world=3)) for r in range(3)]
    assert len(whole) == len(parts[0]) == 2
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[i][0] for p in parts]), x)  # same images, same crops and flips
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
    assert not torch.equal(parts[0][0][0], parts[1][0][0])  # each process its own slice
    # An incomplete last global batch is dropped when sharded: every process takes the same steps.
    assert len(BatchLoader(data, 8, train=True, world=4, rank=3)) == 70 // 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = {}
    for name, nproc, world_batch in (("two", 2, 32), ("one", 1, 32), ("one_small", 1, 16)):
        folder = tmp_path_factory.mktemp(name)
        _launch(nproc, "search", str(folder), str(world_batch))
        out[name] = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    return out


def test_every_process_ends_with_the_same_gates_multiplier_and_weights(runs):
    a, b = runs["two"]
    assert a["world"] == b["world"] == 2
    assert a["lam"] == b["lam"]
    for part in ("gates", "model"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["groups"] == b["groups"]


TOLERANCE = 1e-4  # max |w_2proc - w_1proc| after 2 epochs: float summation order only


def _max_difference(x: dict, y: dict) -> float:
    return max(float((x["model"][k] - y["model"][k]).abs().max()) for k in x["model"])


def test_two_processes_match_one_with_the_same_global_batch(runs):
    two, one = runs["two"][0], runs["one"][0]
    assert two["groups"] == one["groups"]  # the same plan
    assert _max_difference(two, one) < TOLERANCE
    assert abs(two["lam"] - one["lam"]) < 1e-4


def test_the_comparison_can_fail_one_process_at_the_per_process_batch_differs(runs):
    # The negative control: one process at 16 (the per-process batch, without averaging) is another run.
    assert _max_difference(runs["one_small"][0], runs["one"][0]) > 100 * TOLERANCE


def test_torchrun_run_end_to_end_rank_zero_alone_writes(tmp_path):
    budget = tmp_path / "b.toml"
    budget.write_text('version = 1\n[model]\nname = "resnet8"\n[data]\ndataset = "shapes:600"\nheld_out = 120\n'
                      'batch_size = 16\n[budget]\nflops = "60%"\n[search]\nepochs = 1\nrecalibrate_batches = 2\n'
                      "[finetune]\nepochs = 1\noverparam = 2\nmax_steps = 6\n")  # fmt: skip
    out = tmp_path / "run"
    done = _launch(2, "cli", "run", str(budget), "--out", str(out), "--no-progress", "--device", "cpu",
                   "--random-teacher")  # fmt: skip
    assert done.stdout.count("exported:") == 1  # one report, from rank 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruned"]["flops"] <= 0.6 * summary["dense"]["flops"]
    assert (out / "bundle" / "model.ts").is_file() and not (out / "bundle" / "state.pt").exists()
    assert not list(out.rglob(".tmp-*"))
