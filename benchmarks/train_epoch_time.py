"""Seconds per training epoch of registry models on this machine: what a dense training costs here.

    python benchmarks/train_epoch_time.py --models resnet56,vgg19 --epochs-planned 160 \
        --json benchmarks/results/train_epoch_time_cpu.json

Each model is trained (plain SGD + cross-entropy, BENCH.md's batch 128 and augmentation) for
``--steps`` timed steps after two untimed warm-up steps, by ``dais_search.train.time_train_steps``,
``--repeats`` times in turn (model A, B, A, B, ...); the median step time times the steps of one
epoch over ``--images`` training images is the epoch estimate. Models timed in one run can be
compared as a ratio; absolute seconds move with the load of the machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import statistics
import sys

import torch

from dais_search import create_model, list_models
from dais_search.cost import count_flops
from dais_search.data import load_dataset, make_loader
from dais_search.errors import UserError
from dais_search.files import write_json
from dais_search.report import format_table
from dais_search.train import time_train_steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet56,vgg19", help="comma-separated registry names")
    p.add_argument("--data", default="npz:../shared/data/cifar10.npz", help="data set spec (dais-search train --data)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=50_000, help="training images in one epoch (BENCH.md: 50,000)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs-planned", type=int, default=0, help="also report this many epochs in hours")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    models = args.models.split(",")
    try:  # a wrong model name, data spec or missing file: an error line, before any timing
        unknown = [m for m in models if ":" not in m and m not in list_models()]  # tv:, timm: go to create_model
        if unknown:
            raise UserError(f"unknown model {unknown[0]!r}; `dais-search flops --list` lists the registry")
        data = load_dataset(args.data)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    loader = make_loader(data.train, args.batch_size, train=True, seed=0)
    steps_per_epoch = math.ceil(args.images / args.batch_size)
    times: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(args.repeats):
        for m in models:
            torch.manual_seed(0)
            times[m].append(time_train_steps(create_model(m, num_classes=data.num_classes), loader, args.steps))
    rows, out = [], {}
    for m in models:
        step = statistics.median(times[m])
        flops = count_flops(create_model(m, num_classes=data.num_classes), (1, *data.input_size))
        out[m] = {"seconds_per_step": times[m], "median_seconds_per_step": step,
                  "epoch_seconds": step * steps_per_epoch, "flops": flops}  # fmt: skip
        row = [m, f"{flops / 1e6:.0f}", f"{step:.3f}", f"{step * steps_per_epoch:.0f}",
               f"{step / statistics.median(times[models[0]]):.2f}"]  # fmt: skip
        if args.epochs_planned:
            row.append(f"{step * steps_per_epoch * args.epochs_planned / 3600:.1f}")
        rows.append(row)
    headers = ["model", "MFLOPs", "s / step", "s / epoch", f"x {models[0]}"]
    if args.epochs_planned:
        headers.append(f"h for {args.epochs_planned} epochs")
    print(format_table(rows, headers))
    result = {"models": out, "batch_size": args.batch_size, "images": args.images, "steps": args.steps,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__, "command": shlex.join(["python", *sys.argv])}  # fmt: skip
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
