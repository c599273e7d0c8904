"""CPU forward latency of a dense model vs the same model physically pruned to a FLOPs target.

The plan keeps the same fraction of every prunable group (BENCH.md's common setting for option-A
CIFAR ResNets: the inner channels of each block), choosing channels by the L1 norm of their
producing filters, with the largest fraction whose FLOPs stay within ``--keep`` x dense. Dense
and pruned forwards are interleaved (eval mode, no grad) after a warm-up; the medians of each and
the median of the per-round ratios are reported.

    python benchmarks/bench_latency.py --model resnet56 --keep 0.5 --batch 128 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from dais_search import create_model, load_checkpoint, model_from_checkpoint
from dais_search.channels import ChannelPlan, random_plan
from dais_search.cost import count_flops, interleaved_latency, median_ratio
from dais_search.report import format_table
from dais_search.search import uniform_plan


def uniform_l1_plan(model, shape, keep: float) -> ChannelPlan:
    """Same kept fraction in every prunable group, largest that meets ``keep`` x dense FLOPs."""
    return uniform_plan(model, shape, keep * count_flops(model, shape))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56", help="registry name (default: resnet56)")
    p.add_argument("--checkpoint", help="dense weights (default: random init; latency does not depend on them)")
    p.add_argument("--keep", type=float, default=0.5, help="FLOPs to keep, fraction of dense (default: 0.5)")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1], help="batch sizes (default: 128 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed forwards per model (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards first (default: 5)")
    p.add_argument("--size", type=int, default=32, help="input height and width (default: 32)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time the smallest plan (one channel per prunable group): what pruning these groups can reach",
    )
    p.add_argument(
        "--deploy",
        action="store_true",
        help="measure both models as deployed: BN folded into the convs, channels-last memory format",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    if args.checkpoint:
        model, _ = model_from_checkpoint(load_checkpoint(args.checkpoint), args.model)
    else:
        model = create_model(args.model)
    model.eval()
    shape = (1, 3, args.size, args.size)
    plan = uniform_l1_plan(model, shape, args.keep)
    pruned = plan.apply(model).eval()
    timed = {"dense": model, "pruned": pruned}
    if args.floor:
        floor = random_plan(model, shape, keep=0.0)
        timed["floor"] = floor.apply(model).eval()
    if args.deploy:
        from torch.fx.experimental.optimization import fuse

        timed = {k: fuse(m).to(memory_format=torch.channels_last) for k, m in timed.items()}
    result = {
        "benchmark": "latency",
        "model": args.model,
        "keep": args.keep,
        "flops_ratio": round(plan.flops_ratio, 4),
        "dense_flops": plan.dense_flops,
        "pruned_flops": plan.flops,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "deploy": args.deploy,
        "command": " ".join(["python", *sys.argv]),
        "batches": {},
    }
    rows = []
    for b in args.batch:
        x = torch.randn(b, *shape[1:])
        x = x.contiguous(memory_format=torch.channels_last) if args.deploy else x
        times = interleaved_latency(timed, x, args.repeats, args.warmup)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        # Median of per-round ratios: each round times both models back to back, so a slow spell
        # of this shared machine cancels out instead of landing on one side.
        ratio = median_ratio(times, "pruned", "dense")
        result["batches"][b] = {"dense_ms": round(med["dense"], 3), "pruned_ms": round(med["pruned"], 3),
                                "ratio": round(ratio, 4)}  # fmt: skip
        rows.append([b, f"{med['dense']:.2f}", f"{med['pruned']:.2f}", f"{ratio:.3f}"])
        if args.floor:
            floor_ratio = median_ratio(times, "floor", "dense")
            result["batches"][b]["floor_ratio"] = round(floor_ratio, 4)
            rows[-1].append(f"{floor_ratio:.3f} at {floor.flops_ratio:.3f} FLOPs")
    print(f"{args.model}: pruned to {plan.flops:,} / {plan.dense_flops:,} FLOPs ({plan.flops_ratio:.4f})")
    headers = ["batch", "dense ms", "pruned ms", "pruned / dense"] + (["floor / dense"] if args.floor else [])
    print(format_table(rows, headers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
