"""Cost of one fine-tune training step of a pruned model: vanilla vs LOP (expanded, r) vs SP-KD.

All variants train the same pruned model (from ``--plan``, or uniform L1 at ``--keep``) with the
fine-tune step of ``dais-search finetune`` (SGD step of the task loss + distillation from the dense
teacher), on the same batch held in memory: the data path is the same for every variant and costs
under 1% of a step (``bench_data_throughput.py``), so the ratio of step times is the ratio of
epoch times. Variants run round-robin (``--steps`` steps each per round) after a warm-up; the
figure is the median over rounds of (variant step time / vanilla step time).

    python benchmarks/bench_finetune_cost.py --plan runs/X/plan.json --checkpoint DENSE.th --ratio 4

``--chain`` adds LOP run as the literal chain of three convs (what the composed forward avoids).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time

import torch

from dais_search import create_model, load_checkpoint, model_from_checkpoint
from dais_search.channels import ChannelPlan
from dais_search.cost import count_flops
from dais_search.finetune import DistillTask, expand
from dais_search.report import format_table, library_versions
from dais_search.search import uniform_plan
from dais_search.train import make_sgd


def build_variants(student, teacher, ratio: int, sp_weight: float, layers: str, chain: bool) -> dict:
    """name -> (DistillTask, optimizer), each on its own copy of the pruned student."""
    specs = {
        "vanilla": (0, 0.0),
        f"LOP r={ratio}": (ratio, 0.0),
        "SP-KD": (0, sp_weight),
        f"LOP r={ratio} + SP-KD": (ratio, sp_weight),
    }
    variants = {}
    for name, (r, sp) in specs.items():
        model = expand(student, r) if r else copy.deepcopy(student)
        task = DistillTask(model, teacher, layers, sp_weight=sp)
        variants[name] = (task, make_sgd(model, 0.01))
    if chain:
        model = expand(student, ratio)
        for module in model.modules():
            if hasattr(module, "forward_chain"):
                module.forward = module.forward_chain
        variants[f"LOP r={ratio}, chained convs"] = (DistillTask(model, teacher, layers, 0.0), make_sgd(model, 0.01))
    return variants


def step(task: DistillTask, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    out = task(x, y)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56", help="registry name (default: resnet56, or the plan's)")
    p.add_argument("--checkpoint", help="dense weights (default: random init; step time does not depend on them)")
    p.add_argument("--plan", help="plan.json to prune with (default: uniform L1 at --keep)")
    p.add_argument("--keep", type=float, default=0.3, help="FLOPs to keep without --plan (default: 0.3)")
    p.add_argument("--ratio", type=int, default=4, help="LOP expansion ratio r (default: 4)")
    p.add_argument("--sp-weight", type=float, default=3000.0, help="SP-KD weight (default: 3000)")
    p.add_argument(
        "--kd-layers", default="stages", help="SP-KD layers: stages, blocks or module paths (default: stages)"
    )
    p.add_argument("--batch", type=int, default=128, help="batch size (default: 128, BENCH.md)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    p.add_argument("--steps", type=int, default=8, help="steps per variant per round (default: 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default: 3)")
    p.add_argument("--train-images", type=int, default=50000, help="images per epoch for the estimate (default: 50000)")
    p.add_argument("--chain", action="store_true", help="also time LOP with the three convs run one after another")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    plan = ChannelPlan.load(args.plan) if args.plan else None
    name = (plan.meta.get("model") if plan else None) or args.model
    if args.checkpoint:
        teacher, name = model_from_checkpoint(load_checkpoint(args.checkpoint), name)
    else:
        teacher = create_model(name)
    teacher.eval()
    shape = (1, 3, 32, 32) if plan is None else tuple(plan.input_shape)
    if plan is None:
        plan = uniform_plan(teacher, shape, args.keep * count_flops(teacher, shape))
    student = plan.apply(teacher)
    variants = build_variants(student, teacher, args.ratio, args.sp_weight, args.kd_layers, args.chain)

    x = torch.randn(args.batch, *shape[1:])
    y = torch.randint(0, 10, (args.batch,))
    for task, opt in variants.values():
        task.train()
        for _ in range(args.warmup):
            step(task, opt, x, y)
    per_step: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, (task, opt) in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(task, opt, x, y)
            per_step[key].append((time.perf_counter() - start) / args.steps)

    steps_per_epoch = math.ceil(args.train_images / args.batch)
    rows, results = [], {}
    for key, times in per_step.items():
        ratio = statistics.median(a / b for a, b in zip(times, per_step["vanilla"], strict=True))
        median = statistics.median(times)
        results[key] = {"step_seconds": times, "median_step_seconds": median, "ratio_to_vanilla": ratio}
        rows.append([key, f"{1000 * median:.0f}", f"{median * steps_per_epoch / 60:.1f}", f"{ratio:.2f}"])
    print(f"{name} pruned to {plan.flops / count_flops(teacher, shape):.3f} of dense FLOPs, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} steps")  # fmt: skip
    print(format_table(rows, ["variant", "ms / step", "min / epoch (est.)", "x vanilla (median of rounds)"]))
    report = {
        "model": name,
        "flops_ratio": plan.flops / count_flops(teacher, shape),
        "plan": args.plan,
        "checkpoint": args.checkpoint,
        "batch": args.batch,
        "kd_layers": args.kd_layers,
        "threads": torch.get_num_threads(),
        "results": results,
        "versions": library_versions(),
        "command": " ".join(["python", *sys.argv]),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
