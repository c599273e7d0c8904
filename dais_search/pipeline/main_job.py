"""The main job: search -> prune -> LOP + distillation fine-tune -> fold -> export -> report, resumable per stage."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch

from .. import distributed
from ..budget import Budget
from ..channels import ChannelPlan
from ..checkpoint import load_checkpoint
from ..cost import interleaved_latency
from ..data import load_dataset
from ..errors import UserError
from ..files import write_json
from ..finetune import FinetuneConfig, distill_layers
from ..models import create_model
from ..report import format_table
from ..search import parse_method
from .baseline_stage import run_baseline
from .common import check_budget_inputs, load_dense, prepare_out
from .finetune_stage import finetune_plan, student_of
from .search_stage import run_search

__all__ = ["run_pipeline"]

log = logging.getLogger("dais_search")


def run_pipeline(budget: Budget, budget_path: str, out: str, resume: bool = False, device: str = "cpu",
                 progress: bool = True, overrides: dict[str, Any] | None = None, method: str = "dais",
                 random_teacher: bool = False, fold_bn: bool = False) -> dict[str, Any]:  # fmt: skip
    """The main job: search -> prune -> LOP + distillation fine-tune -> fold -> export.

    Without ``model.checkpoint`` the dense "teacher" is the random initialisation, which makes the
    search, the distillation and the comparison meaningless: refused unless ``random_teacher``
    (smoke tests of the pipeline).

    ``method`` ``"dais"`` searches; a baseline method (``l1-uniform``, ``eagleeye``, ...: see
    :func:`dais_search.search.list_methods`) makes the plan instead, through the same fine-tune,
    fold and export. ``fold_bn`` folds the BatchNorms that follow convs into them in the bundle's
    deployable formats (model.ts, model.pt2, model.onnx).

    Resumable per stage with ``resume``: a finished search (``plan.json``) or fine-tune
    (``bundle/metrics.json``) is not run again, an interrupted search continues from its state.
    Writes ``OUT/summary.json`` and prints dense vs pruned accuracy, FLOPs, params and latency.
    """
    if method != "dais":
        parse_method(method)  # an unknown method fails now, not after loading data
    check_budget_inputs(budget)
    if not budget.model.checkpoint and not random_teacher:
        raise UserError(f"{budget_path}: model.checkpoint is empty, so the dense model to prune and distil from "
                        "would be a random initialisation; give its trained weights (model.checkpoint or "
                        "--checkpoint), or pass --random-teacher to run the pipeline on it anyway "
                        "(smoke tests)")  # fmt: skip
    config = FinetuneConfig(**dataclasses.asdict(budget.finetune), seed=budget.search.seed)
    try:  # before the search, not after it
        distill_layers(create_model(budget.model.name), config)
    except ValueError as exc:
        raise UserError(f"{budget_path}: [finetune] {exc}") from exc
    out_dir = prepare_out(out, [budget_path, budget.model.checkpoint], resume)
    if resume and (out_dir / "plan.json").is_file() and (out_dir / "metrics.json").is_file():
        log.info("%s: done already (%s)", "search" if method == "dais" else method, out_dir / "plan.json")
        search_metrics = json.loads((out_dir / "metrics.json").read_text())
    elif method == "dais":
        search_metrics = run_search(budget, budget_path, out, resume and (out_dir / "state.pt").is_file(), device,
                                    progress, overrides)  # fmt: skip
    else:
        search_metrics = run_baseline(budget, budget_path, out, False, device, progress, overrides, method=method)

    plan = ChannelPlan.load(out_dir / "plan.json")
    dspec = budget.data
    splits = load_dataset(dspec.dataset, dspec.data_dir, dspec.download)
    num_classes = plan.meta.get("num_classes") or splits.num_classes
    teacher = load_dense(budget.model.name, budget.model.checkpoint, num_classes).to(device).eval()
    bundle = out_dir / "bundle"
    if resume and (bundle / "metrics.json").is_file():
        log.info("fine-tune: done already (%s)", bundle)
        ft_metrics = json.loads((bundle / "metrics.json").read_text())
    else:
        student = student_of(plan, teacher, out_dir / "pruned.pt")
        ft_metrics = finetune_plan(plan, teacher, student, splits, config, bundle, budget.model.name, num_classes,
                                   dspec.normalize, dspec.batch_size, dspec.workers, budget_path, progress,
                                   resume and (bundle / "state.pt").is_file(), fold_bn)  # fmt: skip
    if not distributed.is_main():  # torchrun: rank 0 measures, writes the summary and prints
        return {}
    deployed = plan.apply(teacher)
    deployed.load_state_dict(load_checkpoint(bundle / "model.pt")["state_dict"])
    deployed.eval()

    latency = {}
    for batch in (1, dspec.batch_size):
        times = interleaved_latency({"dense": teacher, "pruned": deployed},
                                    torch.randn(batch, *plan.input_shape[1:], device=device), 20, 5)  # fmt: skip
        latency[batch] = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}
    summary = {
        "budget": str(budget_path),
        "method": method,
        "dense": {"test_top1": search_metrics["dense_test_top1"], "flops": plan.dense_flops,
                  "params": plan.dense_params, "latency_ms": {b: v["dense"] for b, v in latency.items()}},
        "pruned": {"test_top1": ft_metrics["test_top1"], "flops": plan.flops, "params": plan.params,
                   "latency_ms": {b: v["pruned"] for b, v in latency.items()},
                   "test_top1_before_finetune": search_metrics["pruned_test_top1"]},
        "flops_over_target": search_metrics["flops_over_target"],
        **({"latency_budget": search_metrics["latency"]} if "latency" in search_metrics else {}),
    }  # fmt: skip
    write_json(out_dir / "summary.json", summary)
    b1, bn = 1, dspec.batch_size
    rows = [
        [name, f"{s['test_top1']:.2f}", f"{s['flops']:,}", f"{s['params']:,}", f"{s['latency_ms'][b1]:.2f}",
         f"{s['latency_ms'][bn]:.1f}"]
        for name, s in (("dense", summary["dense"]), ("pruned (fine-tuned, folded)", summary["pruned"]))
    ]  # fmt: skip
    print(format_table(rows, ["model", "test top-1 %", "FLOPs", "params", "CPU ms (batch 1)", f"CPU ms (batch {bn})"]))
    exported = json.loads((bundle / "metrics.json").read_text()).get("export", {})
    formats = exported.get("formats", ["model.ts", "model.pt", "plan.json"])
    print(f"exported: {', '.join(formats)} in {bundle}"
          + "".join(f"; {name} skipped ({why})" for name, why in exported.get("skipped", {}).items()))  # fmt: skip
    return summary
