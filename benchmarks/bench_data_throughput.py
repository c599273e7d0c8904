"""Training throughput of ResNet-20 on the real CIFAR-10 array file vs random tensors in memory.

The data path (uint8 tensors, whole-batch crop + flip, normalisation) must not slow training
down: the issue asks for >= 90% of the images/s reached on random float tensors that are already
in memory. Both sides run the same training step (forward, backward, SGD) on the same model; the
two are interleaved in rounds so that machine noise hits both alike, and the median over rounds
is reported.

    python benchmarks/bench_data_throughput.py --data npz:../shared/data/cifar10.npz

Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dais_search import create_model, load_dataset, make_sgd
from dais_search.data import BatchLoader
from dais_search.report import format_table


def timed_steps(model, optimizer, batches, steps: int) -> tuple[float, float]:
    """Runs ``steps`` training steps; returns (seconds in total, seconds spent fetching batches)."""
    model.train()
    fetch = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        fetch += time.perf_counter() - t0
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, fetch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="npz:../shared/data/cifar10.npz", help="data spec (default: the shared CIFAR-10)")
    p.add_argument("--model", default="resnet20", help="model to train (default: resnet20)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--steps", type=int, default=20, help="training steps per round and side (default: 20)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported (default: 5)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    splits = load_dataset(args.data)
    model = create_model(args.model, num_classes=splits.num_classes)
    optimizer = make_sgd(model, lr=0.01)
    b, size = args.batch_size, splits.input_size

    loader = BatchLoader(splits.train, b, train=True, normalize="imagenet", seed=0, drop_last=True)
    real = itertools.chain.from_iterable(itertools.repeat(loader))  # a new seeded pass when one ends
    pool = [(torch.randn(b, *size), torch.randint(0, splits.num_classes, (b,))) for _ in range(8)]
    synthetic = itertools.cycle(pool)

    timed_steps(model, optimizer, synthetic, 3)  # warm-up: allocator, oneDNN kernels
    timed_steps(model, optimizer, real, 3)
    rates: dict[str, list[float]] = {"random tensors in memory": [], args.data: []}
    fetch_share = []
    for _ in range(args.rounds):
        seconds, _ = timed_steps(model, optimizer, synthetic, args.steps)
        rates["random tensors in memory"].append(args.steps * b / seconds)
        seconds, fetch = timed_steps(model, optimizer, real, args.steps)
        rates[args.data].append(args.steps * b / seconds)
        fetch_share.append(fetch / seconds)

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med[args.data] / med["random tensors in memory"]
    result = {
        "benchmark": "data_throughput",
        "model": args.model,
        "batch_size": b,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_s": {k: round(v, 1) for k, v in med.items()},
        "images_per_s_all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_real_over_random": round(ratio, 4),
        "loader_share_of_step_time": round(statistics.median(fetch_share), 4),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
    }
    rows = [[k, f"{v:.1f}"] for k, v in med.items()]
    print(format_table(rows, ["source", f"{args.model} train images/s (median of {args.rounds})"]))
    print(f"ratio real / random: {ratio:.3f}  (loader share of step time: {result['loader_share_of_step_time']:.1%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
