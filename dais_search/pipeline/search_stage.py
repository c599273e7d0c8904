"""The search stage from a budget file: data and model loaded, :func:`dais_search.search` run, files written.

Everything needed to reproduce a run is written next to its outputs::

    OUT/budget.toml      the budget file as given          OUT/config.json  resolved budget, overrides, versions
    OUT/state.pt         the search state after each epoch (``--resume`` continues from it)
    OUT/plan.json        the binarised plan                 OUT/pruned.pt    the pruned, BN-recalibrated model
    OUT/metrics.json     accuracies, FLOPs, timings         OUT/tb/          TensorBoard events
    OUT/uniform_l1/plan.json   uniform L1 widths at the searched plan's FLOPs (the comparison row)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..budget import Budget
from ..checkpoint import save_checkpoint
from ..errors import UserError
from ..files import write_json
from ..report import format_table
from ..search import search, uniform_plan
from ..train import recalibrate_bn
from .common import check_budget_inputs, check_resume_settings, load_budget_inputs, prepare_out, start_out_dir

__all__ = ["SAFE_TO_CHANGE", "run_search"]

# Settings a resumed search may change: more epochs (the schedule is stretched from where it is), how
# often it saves and logs, and the loader processes. Anything else would make it a different search.
SAFE_TO_CHANGE = ("search.epochs", "search.checkpoint_every", "data.workers", "monitor.every", "monitor.snapshots")


def run_search(budget: Budget, budget_path: str, out: str, resume: bool = False, device: str = "cpu",
               progress: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Runs the search a budget describes; returns the metrics also written to ``OUT/metrics.json``."""
    check_budget_inputs(budget)
    out_dir = Path(out)
    state_path = out_dir / "state.pt"
    if resume and not state_path.is_file():
        raise UserError(f"--resume: {out_dir} holds no search state (state.pt); start without --resume")
    prepare_out(out_dir, [budget_path, budget.model.checkpoint], resume, ours=("budget.toml", "config.json"))
    if resume:
        check_resume_settings(out_dir / "config.json", budget, SAFE_TO_CHANGE)
    start_out_dir(out_dir, budget, budget_path, resume, device, overrides)
    torch.manual_seed(budget.search.seed)
    inputs = load_budget_inputs(budget, device)
    dense, shape, num_classes, accuracy = inputs.dense, inputs.shape, inputs.num_classes, inputs.accuracy
    result = search(inputs.model, budget, inputs.train_loader, inputs.held_loader, torch.zeros(shape, device=device),
                    log_dir=out_dir / "tb", state_path=state_path, resume=resume,
                    progress=progress and distributed.is_main())  # fmt: skip
    plan, pruned = result.plan, result.pruned
    if not distributed.is_main():  # under torchrun: rank 0 evaluates and writes; the others wait for its files
        distributed.barrier()
        return json.loads((out_dir / "metrics.json").read_text())
    plan.meta.update(model=budget.model.name, num_classes=num_classes, budget=str(budget_path))
    plan.save(out_dir / "plan.json")
    save_checkpoint(out_dir / "pruned.pt", pruned, budget.model.name, num_classes, normalize=budget.data.normalize,
                    plan=plan.to_dict())  # fmt: skip

    # Reported beside the result: uniform L1 pruning of the dense model at the same FLOPs.
    baseline_plan = uniform_plan(dense, shape, plan.flops, budget.budget.ignore, min_keep=budget.budget.min_keep,
                                 prune_streams=budget.budget.prune_streams, round_to=budget.budget.round_to)
    baseline_plan.meta.update(model=budget.model.name, num_classes=num_classes, target_flops=plan.flops)
    baseline_plan.save(out_dir / "uniform_l1" / "plan.json")  # for comparisons: fine-tune it like ours
    baseline = recalibrate_bn(baseline_plan.apply(dense), inputs.train_loader, budget.search.recalibrate_batches)

    held, test = inputs.held, inputs.splits.test
    found = dict(result.metrics)
    history = found.pop("history")
    metrics = {
        "budget": str(budget_path),
        **found,
        "pruned_held_out_top1": accuracy(pruned, held),
        "pruned_test_top1": accuracy(pruned, test),
        "uniform_l1": {
            "flops": baseline_plan.flops,
            "held_out_top1": accuracy(baseline, held),
            "test_top1": accuracy(baseline, test),
        },
        "dense_test_top1": accuracy(dense, test),
        "history": history,
    }
    write_json(out_dir / "metrics.json", metrics)
    distributed.barrier()
    _print_report(metrics, plan, baseline_plan, out_dir)
    return metrics


def _print_report(metrics: dict[str, Any], plan, baseline_plan, out_dir: Path) -> None:
    rows = [
        ["dense", f"{plan.dense_flops:,}", "1.000", f"{plan.dense_params:,}", "", f"{metrics['dense_test_top1']:.2f}"],
        ["searched (pruned + BN recal.)", f"{plan.flops:,}", f"{plan.flops_ratio:.3f}", f"{plan.params:,}",
         f"{metrics['pruned_held_out_top1']:.2f}", f"{metrics['pruned_test_top1']:.2f}"],
        ["uniform L1 (+ BN recal.)", f"{baseline_plan.flops:,}", f"{baseline_plan.flops_ratio:.3f}",
         f"{baseline_plan.params:,}", f"{metrics['uniform_l1']['held_out_top1']:.2f}",
         f"{metrics['uniform_l1']['test_top1']:.2f}"],
    ]  # fmt: skip
    print(format_table(rows, ["model", "FLOPs", "ratio", "params", "held-out top-1 %", "test top-1 %"]))
    ratios = ", ".join(f"{r:.2f}" for r in metrics["search_epoch_over_dense_epoch"])
    lat = metrics.get("latency")
    parts = [f"FLOPs / target {metrics['flops_over_target']:.4f}"] if metrics["flops_over_target"] else []
    if lat is not None:
        role = lat.get("role", "target")
        parts.append(f"latency / dense at batch {lat['batch_size']}: measured {lat['measured_ratio']:.3f}, predicted "
                     f"{lat['predicted_ratio']:.3f}, {role} {lat['target_ratio']:.3f} (measured / {role} "
                     f"{lat['measured_ratio'] / lat['target_ratio']:.3f})")  # fmt: skip
    fidelity = "; ".join(parts)
    print(f"{fidelity}; binarization gap {metrics['binarization_gap']:.4f}; "
          f"search {metrics['search_seconds']:.0f} s, per epoch {ratios} x a dense epoch "
          f"({metrics['dense_epoch_seconds']:.0f} s, from timed steps)")  # fmt: skip
    print(f"plan: {out_dir / 'plan.json'}   (dais-search flops --plan {out_dir / 'plan.json'})")
