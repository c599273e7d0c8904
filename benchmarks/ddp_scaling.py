"""Wall time of one search epoch: 1 process vs N processes under ``torchrun`` (gloo on CPU, nccl on GPU),
at the same global batch (1 process: ``data.batch_size``; N processes: ``data.batch_size / N`` each).

On CPU the cores are shared: the single process gets all of them as threads, each of the N
processes its share. The two set-ups alternate ``--repeats`` times (interleaved, so that a machine
that slows down slows both); the epoch time is the search's own (``metrics.json`` history, rank 0),
without data loading or the evaluations after it. Medians, their ratio and every time go to ``--json``.

    python benchmarks/ddp_scaling.py --budget budgets/resnet20_cifar10_keep50.toml --repeats 3 \\
        --json benchmarks/results/ddp_scaling_resnet20_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dais_search.budget import load_budget
from dais_search.files import write_json
from dais_search.report import format_table, library_versions


def one_epoch(budget: str, out: Path, nproc: int, batch: int, threads: int, device: str, max_steps: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cli = [budget, "--out", str(out), "--no-progress", "--device", device, "--set", "search.epochs=1",
           "--set", f"data.batch_size={batch}", "--set", f"search.max_steps={max_steps}"]  # fmt: skip
    argv = [sys.executable, "-m", "dais_search.cli", "search", *cli]
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "dais_search.cli", "search", *cli]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"epoch_seconds": metrics["history"][0]["seconds"], "command_seconds": time.perf_counter() - started,
            "flops_over_target": metrics["flops_over_target"], "pruned_test_top1": metrics["pruned_test_top1"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", required=True)
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default: 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    p.add_argument("--max-steps", type=int, default=0, help="weight steps of the epoch (default 0: all)")
    p.add_argument("--out", default="runs/ddp_scaling")
    p.add_argument("--json")
    args = p.parse_args(argv)
    batch = load_budget(args.budget).data.batch_size
    if batch % args.nproc:
        sys.exit(f"data.batch_size {batch} is not divisible by --nproc {args.nproc}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    setups = {"1 process": (1, batch, cores), f"{args.nproc} processes": (args.nproc, batch // args.nproc,
                                                                         max(1, cores // args.nproc))}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for r in range(args.repeats):
        for name, (nproc, per_process, threads) in setups.items():
            result = one_epoch(args.budget, Path(args.out) / f"{nproc}p_{r}", nproc, per_process, threads, args.device,
                               args.max_steps)  # fmt: skip
            runs[name].append(result)
            print(f"repeat {r + 1}: {name}: epoch {result['epoch_seconds']:.1f} s", flush=True)
    medians = {name: statistics.median(x["epoch_seconds"] for x in rs) for name, rs in runs.items()}
    one, many = medians["1 process"], medians[f"{args.nproc} processes"]
    rows = [[name, f"{nproc}", f"{per} x {nproc}", f"{threads}", f"{medians[name]:.1f}",
             ", ".join(f"{x['epoch_seconds']:.1f}" for x in runs[name])]
            for name, (nproc, per, threads) in setups.items()]  # fmt: skip
    print(format_table(rows, ["set-up", "processes", "batch", "threads each", "median epoch s", "all"]))
    print(f"{args.nproc} processes / 1 process: {many / one:.3f} of the epoch time")
    report = {"budget": args.budget, "device": args.device, "cores": cores, "repeats": args.repeats,
              "max_steps": args.max_steps, "global_batch": batch, "median_epoch_seconds": medians,
              "ratio_many_over_one": many / one, "runs": runs, "versions": library_versions(),
              "torch_threads_default": torch.get_num_threads(),
              "command": "python benchmarks/ddp_scaling.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
