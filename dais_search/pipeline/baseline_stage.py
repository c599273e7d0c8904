"""The baseline stage from a budget file: a plan without a search, written like the search's.

``dais-search baseline BUDGET --method M`` (``M`` from :func:`dais_search.search.list_methods`:
``<criterion>-uniform``, ``<criterion>-global`` or ``eagleeye``) writes what ``search`` writes, so
that ``finetune`` and ``run --method M`` treat both alike::

    OUT/budget.toml, OUT/config.json    the budget as given; resolved budget, method, versions
    OUT/plan.json                       the plan (meta: method, target_flops; EagleEye's candidates)
    OUT/pruned.pt                       the pruned model, BN recalibrated on the search's train split
    OUT/metrics.json                    accuracies before fine-tuning, FLOPs, seconds vs a dense epoch

Data criteria (taylor, apoz, entropy) score on ``[baseline] score_batches`` unshuffled batches of
the held-out split; EagleEye recalibrates each candidate's BN on ``search.recalibrate_batches``
augmented held-out batches and scores it on ``[baseline] eval_batches`` of them (0: all).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..budget import Budget
from ..checkpoint import save_checkpoint
from ..cost import count_flops
from ..errors import UserError
from ..files import write_json
from ..report import format_table
from ..search import baseline_plan, parse_method
from ..train import recalibrate_bn, time_train_steps
from .common import check_budget_inputs, load_budget_inputs, prepare_out, start_out_dir

__all__ = ["run_baseline"]


def run_baseline(budget: Budget, budget_path: str, out: str, resume: bool = False, device: str = "cpu",
                 progress: bool = True, overrides: dict[str, Any] | None = None, *,
                 method: str) -> dict[str, Any]:  # fmt: skip
    """Builds the plan of baseline ``method`` under the budget's FLOPs target; returns the metrics
    also written to ``OUT/metrics.json``. With ``resume``, a finished baseline is not run again."""
    allocation, criterion = parse_method(method)  # an unknown method fails before any data is read
    if budget.latency_role == "target":
        raise UserError(f"{budget.source or 'budget'}: baselines take FLOPs budgets, and this one is in latency "
                        f"(budget.latency = {budget.budget.latency!r}); give budget.flops instead, e.g. the FLOPs of "
                        "the latency-searched plan (dais-search flops --plan OUT/plan.json)")  # fmt: skip
    if budget.latency_role == "ceiling":
        raise UserError(f"{budget.source or 'budget'}: baselines take FLOPs budgets and do not measure latency; this "
                        f"one also has a latency ceiling (budget.latency = {budget.budget.latency!r}): drop it with "
                        "--set budget.latency='' (the baseline then meets budget.flops alone), or give budget.flops "
                        "= the FLOPs of the searched plan")  # fmt: skip
    check_budget_inputs(budget)
    out_dir = Path(out)
    if resume and (out_dir / "metrics.json").is_file() and (out_dir / "plan.json").is_file():
        return json.loads((out_dir / "metrics.json").read_text())  # finished already
    prepare_out(out_dir, [budget_path, budget.model.checkpoint], resume, ours=("budget.toml", "config.json"))
    start_out_dir(out_dir, budget, budget_path, False, device, overrides, method=method)
    if not distributed.is_main():  # under torchrun: rank 0 makes the plan (a few forward passes) and writes it
        distributed.barrier()
        return json.loads((out_dir / "metrics.json").read_text())
    torch.manual_seed(budget.search.seed)
    inputs = load_budget_inputs(budget, device, shard=False)
    dense, shape, base = inputs.dense, inputs.shape, budget.baseline
    target = budget.flops_target(count_flops(dense, shape))
    started = time.perf_counter()
    plan = baseline_plan(method, dense, shape, target, budget.budget.ignore, held_out=inputs.plain_loader(inputs.held,
                         budget.data.batch_size), recalibrate=inputs.held_loader, score_batches=base.score_batches,
                         candidates=base.candidates, recalibrate_batches=budget.search.recalibrate_batches,
                         eval_batches=base.eval_batches or None, seed=budget.search.seed,
                         min_keep=budget.budget.min_keep, prune_streams=budget.budget.prune_streams,
                         round_to=budget.budget.round_to)  # fmt: skip
    seconds = time.perf_counter() - started
    plan.meta.update(model=budget.model.name, num_classes=inputs.num_classes, budget=str(budget_path),
                     target_flops=target)  # fmt: skip
    plan.save(out_dir / "plan.json")
    pruned = recalibrate_bn(plan.apply(dense), inputs.train_loader, budget.search.recalibrate_batches)
    save_checkpoint(out_dir / "pruned.pt", pruned, budget.model.name, inputs.num_classes,
                    normalize=budget.data.normalize, plan=plan.to_dict())  # fmt: skip

    steps = len(inputs.train_loader)
    dense_epoch = time_train_steps(copy.deepcopy(dense), inputs.train_loader, min(20, steps)) * steps
    test = inputs.splits.test
    metrics = {
        "budget": str(budget_path),
        "method": method,
        "allocation": allocation,
        "criterion": criterion,
        "flops": plan.flops,
        "flops_ratio": plan.flops_ratio,
        "target_flops": target,
        "flops_over_target": plan.flops / target,
        "params": plan.params,
        "weight_epochs": 0,
        "baseline_seconds": seconds,
        "dense_epoch_seconds": dense_epoch,
        "baseline_over_dense_epoch": seconds / max(dense_epoch, 1e-9),
        "pruned_held_out_top1": inputs.accuracy(pruned, inputs.held),
        "pruned_test_top1": inputs.accuracy(pruned, test),
        "dense_test_top1": inputs.accuracy(dense, test),
    }
    if "candidates" in plan.meta:
        metrics["candidates"] = plan.meta["candidates"]
    write_json(out_dir / "metrics.json", metrics)
    distributed.barrier()
    rows = [
        ["dense", f"{plan.dense_flops:,}", "1.000", f"{plan.dense_params:,}", "", f"{metrics['dense_test_top1']:.2f}"],
        [f"{method} (pruned + BN recal.)", f"{plan.flops:,}", f"{plan.flops_ratio:.3f}", f"{plan.params:,}",
         f"{metrics['pruned_held_out_top1']:.2f}", f"{metrics['pruned_test_top1']:.2f}"],
    ]  # fmt: skip
    print(format_table(rows, ["model", "FLOPs", "ratio", "params", "held-out top-1 %", "test top-1 %"]))
    print(f"FLOPs / target {metrics['flops_over_target']:.4f}; {method} took {seconds:.1f} s "
          f"({metrics['baseline_over_dense_epoch']:.3f} x a dense epoch of {dense_epoch:.0f} s, from timed steps)")
    print(f"plan: {out_dir / 'plan.json'}   (dais-search finetune --plan {out_dir / 'plan.json'} ...)")
    return metrics
