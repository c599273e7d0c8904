"""CPU forward latency of a dense model and of several plans of it, all timed in one interleaved run.

Every round runs the dense model and each pruned one once (eval mode, no grad, after a warm-up),
so a slow spell of a shared machine lands on all of them; reported are each model's median and the
median of its per-round ratio to the dense model. The plans' weights do not matter for latency.

    python benchmarks/latency_plans.py --model resnet56 \\
        inner=benchmarks/results/search_vs_uniform_resnet56_keep50_frozen_plan.json \\
        streams_r8=runs/lat/streams_r8/plan.json --batch 128 1 --json benchmarks/results/latency_streams.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys

import torch

from dais_search import create_model
from dais_search.channels import ChannelPlan
from dais_search.cost import interleaved_latency, median_ratio
from dais_search.files import write_json
from dais_search.report import format_table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plans", nargs="+", metavar="LABEL=PLAN", help="plan files to time, each with a label")
    p.add_argument("--model", default="resnet56", help="registry name (default: resnet56)")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1], help="batch sizes (default: 128 1)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (default: 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards of each model first (default: 5)")
    p.add_argument("--runs", type=int, default=1,
                   help="separate interleaved runs; ratios are reported as the median (min-max) over runs (default: 1)")
    p.add_argument("--processes", type=int, default=1,
                   help="repeat the whole measurement in this many fresh processes, one after another: CPU timings "
                        "differ more between processes than within one; reports every process (default: 1)")
    p.add_argument("--checkpoint", help="dense weights (default: random init; latency does not depend on them)")
    p.add_argument("--channels-last", action="store_true",
                   help="time every model and the input in the channels-last memory format")  # fmt: skip
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.processes > 1:
        return _in_processes(args, list(argv if argv is not None else sys.argv[1:]))
    torch.manual_seed(0)
    if args.checkpoint:
        from dais_search import load_checkpoint, model_from_checkpoint

        dense = model_from_checkpoint(load_checkpoint(args.checkpoint), args.model)[0].eval()
    else:
        dense = create_model(args.model).eval()
    plans = {}
    for item in args.plans:
        label, _, path = item.partition("=")
        if not path:
            p.error(f"{item!r}: write LABEL=PLAN, e.g. inner=runs/search/plan.json")
        plans[label] = ChannelPlan.load(path)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {"dense": dense} | {k: plan.apply(dense).eval() for k, plan in plans.items()}
    models = {k: m.to(memory_format=fmt) for k, m in models.items()}
    shape = next(iter(plans.values())).input_shape[1:]
    result = {
        "benchmark": "latency_plans", "model": args.model, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "channels_last": args.channels_last,
        "command": "python benchmarks/latency_plans.py " + shlex.join(sys.argv[1:]),
        "plans": {k: {"path": item.partition("=")[2], "flops": plan.flops, "flops_ratio": round(plan.flops_ratio, 4),
                      "params": plan.params, "widths": {str(g): len(v) for g, v in sorted(plan.kept.items())}}
                  for (k, plan), item in zip(plans.items(), args.plans, strict=True)},
        "batches": {},
    }  # fmt: skip
    rows = []
    for batch in args.batch:
        runs = []
        for _ in range(args.runs):
            x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
            times = interleaved_latency(models, x, args.repeats, args.warmup)
            runs.append({k: {"ms": 1e3 * statistics.median(v), "ratio": median_ratio(times, k, "dense")}
                         for k, v in times.items()})  # fmt: skip
        entry = {}
        for k in models:
            ratios = [r[k]["ratio"] for r in runs]
            entry[k] = {"ms": round(statistics.median(r[k]["ms"] for r in runs), 3),
                        "ratio": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
                        "ratio_max": round(max(ratios), 4), "ratio_runs": [round(x, 4) for x in ratios]}  # fmt: skip
        result["batches"][str(batch)] = entry
        for k in models:
            flops = plans[k].flops_ratio if k in plans else 1.0
            e = entry[k]
            rows.append([batch, k, f"{flops:.4f}", f"{e['ms']:.2f}",
                         f"{e['ratio']:.3f} ({e['ratio_min']:.3f}-{e['ratio_max']:.3f})"])  # fmt: skip
    result["runs"] = args.runs
    print(format_table(rows, ["batch", "model", "FLOPs / dense", "CPU ms (median)",
                              f"latency / dense, median (min-max) of {args.runs} runs"]))
    if args.json:
        write_json(args.json, result)
    return result


def _in_processes(args: argparse.Namespace, argv: list[str]) -> dict:
    """Runs the measurement in ``args.processes`` fresh processes; per model and batch, the median
    ratio of each process and the median and range over them."""
    import subprocess
    import tempfile

    outs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            path = f"{tmp}/p{i}.json"
            rest = [a for j, a in enumerate(argv) if a not in ("--processes", "--json")
                    and argv[j - 1] not in ("--processes", "--json")]  # fmt: skip
            subprocess.run([sys.executable, __file__, *rest, "--json", path], check=True)
            outs.append(json.loads(open(path).read()))
    merged = {**outs[0], "command": "python benchmarks/latency_plans.py " + shlex.join(argv),
              "processes": args.processes, "batches": {}}  # fmt: skip
    rows = []
    for batch, entry in outs[0]["batches"].items():
        merged["batches"][batch] = {}
        for k in entry:
            per = [o["batches"][batch][k]["ratio"] for o in outs]
            ms = [o["batches"][batch][k]["ms"] for o in outs]
            merged["batches"][batch][k] = {"ratio": round(statistics.median(per), 4), "ratio_min": min(per),
                                           "ratio_max": max(per), "ratio_per_process": per,
                                           "ms_per_process": ms}  # fmt: skip
            rows.append([batch, k, f"{statistics.median(per):.3f} ({min(per):.3f}-{max(per):.3f})",
                         " ".join(f"{x:.3f}" for x in per)])  # fmt: skip
    print(format_table(rows, ["batch", "model", f"latency / dense, median (min-max) of {args.processes} processes",
                              "per process"]))  # fmt: skip
    if args.json:
        write_json(args.json, merged)
    return merged


if __name__ == "__main__":
    main()
