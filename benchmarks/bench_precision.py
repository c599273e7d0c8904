"""bf16 autocast and channels-last on this machine: step time of the real fine-tune (LOP r=4 + SP-KD,
batch 128) and of the search (weight + gate steps), fp32 vs bf16, each with and without channels-last;
then the accuracy cost: one fine-tune epoch of a uniform-L1 ResNet-20 at 50% FLOPs, fp32 vs bf16.

Speed: the set-ups alternate ``--rounds`` times (interleaved), each time ``--steps`` timed steps after 2
untimed ones; medians per set-up and their ratio to fp32. Accuracy: the same fine-tune (data order, seed,
schedule) in both precisions, test top-1 of the folded model.

    python benchmarks/bench_precision.py --json benchmarks/results/precision_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from dais_search.budget import Budget, BudgetSpec, SearchSpec
from dais_search.channels import ChannelPlan
from dais_search.checkpoint import load_checkpoint, model_from_checkpoint
from dais_search.cost import count_flops
from dais_search.data import load_dataset, make_loader
from dais_search.files import write_json
from dais_search.finetune import FinetuneConfig, distill_layers, finetune
from dais_search.finetune.distill import DistillTask
from dais_search.finetune.overparam import expand
from dais_search.report import format_table, library_versions
from dais_search.search import uniform_plan
from dais_search.search.searcher import Searcher
from dais_search.train import make_sgd, set_channels_last, train_one_epoch

SHARED = Path(__file__).resolve().parents[2] / "shared"
SETUPS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32 + channels-last": ("fp32", True),
          "bf16 + channels-last": ("bf16", True)}  # fmt: skip


def _finetune_steps(teacher, plan, loader, precision, channels_last, steps) -> float:
    student = expand(plan.apply(teacher), 4, seed=0)
    student.requires_grad_(True)
    if channels_last:
        set_channels_last(student)
    task = DistillTask(student, teacher, distill_layers(teacher, FinetuneConfig()), 3000.0, 0.0, 4.0)
    optimizer = make_sgd(student, 0.01)
    ends = []
    train_one_epoch(task, loader, optimizer, loss_fn=lambda t, x, y: t(x, y), max_steps=steps + 2, progress=False,
                    precision=precision, on_step=lambda i, out: ends.append(time.perf_counter()))  # fmt: skip
    task.remove_hooks()
    return (ends[-1] - ends[1]) / (len(ends) - 2)


def _search_steps(teacher, train, held, precision, channels_last, steps) -> float:
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    budget = Budget(budget=BudgetSpec(flops="50%"),
                    search=SearchSpec(epochs=1, gate_every=2, precision=precision, channels_last=channels_last))
    searcher = Searcher(model, budget, torch.zeros(1, 3, 32, 32), steps + 2)
    searcher.run_epoch(0, train, held, 2, max_steps=2, progress=False)  # untimed: allocator, kernel choice
    started = time.perf_counter()
    searcher.run_epoch(0, train, held, 2, max_steps=steps, progress=False)
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--accuracy-epochs", type=int, default=1, help="fine-tune epochs of the accuracy check (0: skip)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not (SHARED / "data" / "cifar10.npz").is_file():
        sys.exit(f"needs {SHARED}/data/cifar10.npz and the pretrained teachers")
    splits = load_dataset(f"npz:{SHARED}/data/cifar10.npz")
    r56, _ = model_from_checkpoint(load_checkpoint(SHARED / "pretrained" / "resnet56-4bfd9763.th"), "resnet56")
    r56.eval().requires_grad_(False)
    plan = ChannelPlan.load(Path(__file__).parent / "results" / "search_resnet56_cifar10_keep50_plan.json")
    loader = make_loader(splits.train, 128, True, seed=0)
    held = make_loader(splits.test, 128, True, seed=1)  # the search's gate batches: any labelled images do here
    times: dict[str, dict[str, list[float]]] = {"finetune": {k: [] for k in SETUPS}, "search": {k: [] for k in SETUPS}}
    for r in range(args.rounds):
        for name, (precision, cl) in SETUPS.items():
            times["finetune"][name].append(_finetune_steps(r56, plan, loader, precision, cl, args.steps))
            times["search"][name].append(_search_steps(r56, loader, held, precision, cl, args.steps))
            print(f"round {r + 1}: {name}: fine-tune step {times['finetune'][name][-1]:.3f} s, "
                  f"search step {times['search'][name][-1]:.3f} s", flush=True)  # fmt: skip
    medians = {stage: {k: statistics.median(v) for k, v in by.items()} for stage, by in times.items()}
    rows = [[name, f"{medians['finetune'][name]:.3f}", f"{medians['finetune'][name] / medians['finetune']['fp32']:.2f}",
             f"{medians['search'][name]:.3f}", f"{medians['search'][name] / medians['search']['fp32']:.2f}"]
            for name in SETUPS]  # fmt: skip
    print(format_table(rows, ["set-up", "fine-tune s/step", "x fp32", "search s/step", "x fp32"]))
    report = {"rounds": args.rounds, "steps": args.steps, "batch": 128, "threads": torch.get_num_threads(),
              "model": "resnet56, searched keep-50% plan, LOP r=4 + SP-KD (fine-tune) / dais+dsa (search)",
              "seconds_per_step": times, "median_seconds_per_step": medians, "versions": library_versions(),
              "command": "python benchmarks/bench_precision.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip

    if args.accuracy_epochs:
        r20, _ = model_from_checkpoint(load_checkpoint(SHARED / "pretrained" / "resnet20-12fca82f.th"), "resnet20")
        r20.eval().requires_grad_(False)
        shape = (1, 3, 32, 32)
        small = uniform_plan(r20, shape, 0.5 * count_flops(r20, shape))
        test = make_loader(splits.test, 256)
        accuracy = {}
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            result = finetune(small.apply(r20), r20, make_loader(splits.train, 128, True, seed=0, drop_last=True),
                              FinetuneConfig(epochs=args.accuracy_epochs, precision=precision), plan=small,
                              test_loader=test, progress=False)  # fmt: skip
            accuracy[precision] = {"test_top1": result.metrics["test_top1"], "seconds": time.perf_counter() - started,
                                   "fold_max_rel_error": result.metrics["fold_max_rel_error"]}  # fmt: skip
            print(f"{precision}: ResNet-20 uniform-L1 50%, {args.accuracy_epochs} fine-tune epoch(s): test top-1 "
                  f"{accuracy[precision]['test_top1']:.2f}% in {accuracy[precision]['seconds']:.0f} s", flush=True)
        report["accuracy"] = {"model": "resnet20, l1-uniform 50% FLOPs, LOP r=4 + SP-KD, seed 0",
                              "epochs": args.accuracy_epochs, **accuracy}  # fmt: skip
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
