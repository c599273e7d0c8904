"""The stages end to end: :func:`run_search` (budget file in, ``OUT/plan.json`` and the pruned model
out) and :func:`run_pipeline`, the main job (search, fine-tune, fold, export, report).

Everything needed to reproduce a run is written next to its outputs::

    OUT/budget.toml      the budget file as given          OUT/config.json  resolved budget, overrides, versions
    OUT/state.pt         the search state after each epoch (``--resume`` continues from it)
    OUT/plan.json        the binarised plan                 OUT/pruned.pt    the pruned, BN-recalibrated model
    OUT/metrics.json     accuracies, FLOPs, timings         OUT/tb/          TensorBoard events
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .baselines import uniform_plan
from .budget import Budget
from .checkpoint import atomic_torch_save, load_checkpoint, load_state_dict_strict, save_checkpoint
from .data import BatchLoader, check_data_spec, load_dataset, make_loader, train_val_split
from .errors import UserError
from .loops import evaluate, make_sgd
from .models import create_model, input_size
from .monitor import MetricWriter, indicator_heatmap
from .report import format_table, library_versions
from .search import Searcher, recalibrate_bn

__all__ = ["run_pipeline", "run_search"]

log = logging.getLogger("dais_search")


def _check_inputs(budget: Budget) -> None:
    """Everything that can be wrong with the inputs, before any data is decoded."""
    check_data_spec(budget.data.dataset)
    input_size(budget.model.name)  # unknown model -> UserError listing the known ones
    if budget.model.checkpoint and not os.path.isfile(budget.model.checkpoint):
        raise UserError(
            f"model.checkpoint {budget.model.checkpoint!r} does not exist (paths are relative to the current directory)"
        )


def _time_dense_steps(model: torch.nn.Module, loader: BatchLoader, steps: int) -> float:
    """Seconds per weight step of plain dense training, on a copy (the model is not changed)."""
    dense = copy.deepcopy(model).train()
    opt = make_sgd(dense, 0.01)
    times = []
    for i, (x, y) in enumerate(loader):
        if i >= steps + 2:
            break
        start = time.perf_counter()
        loss = F.cross_entropy(dense(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # the first steps warm up the allocator and kernels
            times.append(time.perf_counter() - start)
    return sum(times) / max(len(times), 1)


def run_search(budget: Budget, budget_path: str, out: str, resume: bool = False, device: str = "cpu",
               progress: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Runs the search a budget describes; returns the metrics also written to ``OUT/metrics.json``."""
    _check_inputs(budget)
    out_dir = Path(out)
    state_path = out_dir / "state.pt"
    if resume and not state_path.is_file():
        raise UserError(f"--resume: {out_dir} holds no search state (state.pt); start without --resume")
    if not resume and (state_path.is_file() or (out_dir / "plan.json").is_file()):
        raise UserError(f"{out_dir} already holds a search; pass --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.copyfile(budget_path, out_dir / "budget.toml")
        config = {"budget": budget.to_dict(), "overrides": overrides or {}, "versions": library_versions(),
                  "command": " ".join(sys.argv), "device": device}  # fmt: skip
        (out_dir / "config.json").write_text(json.dumps(config, indent=1))

    spec, dspec = budget.search, budget.data
    torch.manual_seed(spec.seed)
    splits = load_dataset(dspec.dataset, dspec.data_dir)
    train, held = train_val_split(splits.train, dspec.held_out, dspec.split_seed)
    num_classes = budget.model.num_classes or splits.num_classes
    model = create_model(budget.model.name, num_classes=num_classes)
    if budget.model.checkpoint:
        load_state_dict_strict(model, load_checkpoint(budget.model.checkpoint)["state_dict"],
                               f"checkpoint {budget.model.checkpoint!r}")  # fmt: skip
    model.to(device)
    dense = copy.deepcopy(model).eval()  # the teacher / the baseline's starting point
    shape = (1, *(budget.budget.input_size or splits.input_size))
    image = (budget.budget.input_size or splits.input_size)[-1]
    train_loader = make_loader(train, dspec.batch_size, True, dspec.normalize, spec.seed, dspec.workers, image, True)
    val_loader = make_loader(held, dspec.batch_size, True, dspec.normalize, spec.seed + 1, dspec.workers, image, True)
    steps = len(train_loader) if not spec.max_steps else min(spec.max_steps, len(train_loader))
    gate_every = spec.gate_every or max(1, len(train_loader) // max(1, len(val_loader)))

    searcher = Searcher(model, budget, torch.zeros(shape, device=device), steps)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        state = torch.load(state_path, map_location=device, weights_only=False)
        load_state_dict_strict(model, state["model"], f"search state {state_path}")
        searcher.load_state_dict(state["searcher"])
        start_epoch, history = state["epoch"], state["history"]
        for loader in (train_loader, val_loader):
            if isinstance(loader, BatchLoader):
                loader.epoch = start_epoch  # the same shuffles as an uninterrupted run
    dense_step = _time_dense_steps(model, train_loader, min(20, steps))
    if isinstance(train_loader, BatchLoader):
        train_loader.epoch = start_epoch  # the timing pass must not shift the search's shuffles
    writer = MetricWriter(str(out_dir / "tb"))

    def on_gate_step(s: Searcher, stats: dict[str, float], temperature: float) -> None:
        masks = s.gates()
        scalars = {
            "search/temperature": temperature,
            "search/flops_ratio": stats["flops_ratio"],
            "search/lambda": s.lam,
            "search/val_loss": stats["val_loss"],
            "search/binarization_gap": s.gates.binarization_gap(masks),
        }
        if s.params_target is not None:
            scalars["search/lambda_params"] = s.lam_params
        writer.scalars(s.step, scalars)

    for epoch in range(start_epoch, spec.epochs):
        stats = searcher.run_epoch(epoch, train_loader, val_loader, gate_every, spec.max_steps, progress, on_gate_step)
        masks = [m.detach() for m in searcher.gates()]
        stats["binarization_gap"] = searcher.gates.binarization_gap(masks)
        stats["flops_ratio"] = (
            float(searcher.flops_model.flops(searcher.gates.expected_width(masks))) / searcher.flops_target
        )
        stats["dense_epoch_seconds"] = dense_step * steps
        stats["search_over_dense_epoch"] = stats["seconds"] / max(stats["dense_epoch_seconds"], 1e-9)
        history.append(stats)
        step = searcher.step
        writer.scalars(step, {"search/task_loss": stats["train_loss"], "search/train_top1": stats["train_top1"],
                              "search/val_top1": stats["val_top1"]})  # fmt: skip
        for g, m in zip(searcher.groups, masks, strict=True):
            writer.scalars(step, {f"keep/{g.name}": float(m.sum()) / g.size})
            writer.histogram(f"mask/{g.name}", m, step)
        writer.image("search/indicators", indicator_heatmap(masks), step)
        writer.flush()
        atomic_torch_save({"model": model.state_dict(), "searcher": searcher.state_dict(), "epoch": epoch + 1,
                           "history": history}, state_path)  # fmt: skip
        log.info("search epoch %d/%d: %s", epoch + 1, spec.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if isinstance(v, float)))  # fmt: skip

    plan = searcher.binarize()
    plan.meta.update(model=budget.model.name, num_classes=num_classes, budget=str(budget_path))
    pruned = plan.apply(model)
    recalibrate_bn(pruned, train_loader, spec.recalibrate_batches)
    plan.save(out_dir / "plan.json")
    save_checkpoint(out_dir / "pruned.pt", pruned, budget.model.name, num_classes, normalize=dspec.normalize,
                    plan=plan.to_dict())  # fmt: skip

    # Reported beside the result: uniform L1 pruning of the dense model at the same FLOPs.
    baseline_plan = uniform_plan(dense, shape, plan.flops, budget.budget.ignore)
    baseline = recalibrate_bn(baseline_plan.apply(dense), train_loader, spec.recalibrate_batches)

    def accuracy(m, data) -> float:
        loader = make_loader(data, 256, False, dspec.normalize, workers=dspec.workers, image_size=image)
        return evaluate(m, loader, progress=False)["top1"]

    metrics = {
        "budget": str(budget_path),
        "mode": spec.mode,
        "dense_flops": plan.dense_flops,
        "target_flops": searcher.flops_target,
        "flops": plan.flops,
        "flops_over_target": plan.flops / searcher.flops_target,
        "params": plan.params,
        "dense_params": plan.dense_params,
        "binarization_gap": history[-1]["binarization_gap"] if history else None,
        "search_seconds": sum(h["seconds"] for h in history),
        "dense_epoch_seconds": dense_step * steps,
        "search_epoch_over_dense_epoch": [h["search_over_dense_epoch"] for h in history],
        "pruned_held_out_top1": accuracy(pruned, held),
        "pruned_test_top1": accuracy(pruned, splits.test),
        "uniform_l1": {
            "flops": baseline_plan.flops,
            "held_out_top1": accuracy(baseline, held),
            "test_top1": accuracy(baseline, splits.test),
        },  # fmt: skip
        "dense_test_top1": accuracy(dense, splits.test),
        "history": history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    writer.text("plan/final", "```\n" + json.dumps(plan.to_dict(), indent=1)[:60000] + "\n```", searcher.step)
    writer.close()
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
    print(f"FLOPs / target {metrics['flops_over_target']:.4f}; binarization gap {metrics['binarization_gap']:.4f}; "
          f"search {metrics['search_seconds']:.0f} s, per epoch {ratios} x a dense epoch "
          f"({metrics['dense_epoch_seconds']:.0f} s, from timed steps)")  # fmt: skip
    print(f"plan: {out_dir / 'plan.json'}   (dais-search flops --plan {out_dir / 'plan.json'})")
    return metrics


def run_pipeline(budget: Budget, budget_path: str, out: str, resume: bool = False, device: str = "cpu",
                 progress: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The main job: search -> prune -> LOP + distillation fine-tune -> fold -> export.

    Resumable per stage with ``resume``: a finished search (``plan.json``) or fine-tune
    (``bundle/metrics.json``) is not run again, an interrupted search continues from its state.
    Writes ``OUT/summary.json`` and prints dense vs pruned accuracy, FLOPs, params and latency.
    """
    from .finetune import FinetuneConfig, distill_layers, export, finetune
    from .plan import ChannelPlan
    from .timing import interleaved_latency

    _check_inputs(budget)
    config = FinetuneConfig(**dataclasses.asdict(budget.finetune), seed=budget.search.seed)
    try:  # before the search, not after it
        distill_layers(create_model(budget.model.name), config)
    except ValueError as exc:
        raise UserError(f"{budget_path}: [finetune] {exc}") from exc
    out_dir = Path(out)
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty; pass --resume to continue its stages or choose another --out")
    if resume and (out_dir / "plan.json").is_file() and (out_dir / "metrics.json").is_file():
        log.info("search: done already (%s)", out_dir / "plan.json")
        search_metrics = json.loads((out_dir / "metrics.json").read_text())
    else:
        search_metrics = run_search(budget, budget_path, out, resume and (out_dir / "state.pt").is_file(), device,
                                    progress, overrides)  # fmt: skip

    plan = ChannelPlan.load(out_dir / "plan.json")
    dspec = budget.data
    splits = load_dataset(dspec.dataset, dspec.data_dir)
    num_classes = plan.meta.get("num_classes") or splits.num_classes
    teacher = create_model(budget.model.name, num_classes=num_classes)
    if budget.model.checkpoint:
        load_state_dict_strict(teacher, load_checkpoint(budget.model.checkpoint)["state_dict"],
                               f"checkpoint {budget.model.checkpoint!r}")  # fmt: skip
    teacher.to(device).eval()
    student = plan.apply(teacher)
    load_state_dict_strict(student, load_checkpoint(out_dir / "pruned.pt")["state_dict"], "pruned model")
    image = plan.input_shape[-1]
    test_loader = make_loader(splits.test, 256, False, dspec.normalize, workers=dspec.workers, image_size=image)
    bundle = out_dir / "bundle"
    if resume and (bundle / "metrics.json").is_file():
        log.info("fine-tune: done already (%s)", bundle)
        ft_metrics = json.loads((bundle / "metrics.json").read_text())
    else:
        # BENCH.md: fine-tuning uses all training images, with the search's batch size and seed.
        train_loader = make_loader(splits.train, dspec.batch_size, True, dspec.normalize, budget.search.seed,
                                   dspec.workers, image, True)  # fmt: skip
        folded, ft_metrics = finetune(student, teacher, train_loader, test_loader, plan, config, progress)
        export(folded, plan, ft_metrics, bundle, budget.model.name, num_classes, dspec.normalize, budget_path)
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
        "dense": {"test_top1": search_metrics["dense_test_top1"], "flops": plan.dense_flops,
                  "params": plan.dense_params, "latency_ms": {b: v["dense"] for b, v in latency.items()}},
        "pruned": {"test_top1": ft_metrics["test_top1"], "flops": plan.flops, "params": plan.params,
                   "latency_ms": {b: v["pruned"] for b, v in latency.items()},
                   "test_top1_before_finetune": search_metrics["pruned_test_top1"]},
        "flops_over_target": search_metrics["flops_over_target"],
    }  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    b1, bn = 1, dspec.batch_size
    rows = [
        [name, f"{s['test_top1']:.2f}", f"{s['flops']:,}", f"{s['params']:,}", f"{s['latency_ms'][b1]:.2f}",
         f"{s['latency_ms'][bn]:.1f}"]
        for name, s in (("dense", summary["dense"]), ("pruned (fine-tuned, folded)", summary["pruned"]))
    ]  # fmt: skip
    print(format_table(rows, ["model", "test top-1 %", "FLOPs", "params", "CPU ms (batch 1)", f"CPU ms (batch {bn})"]))
    print(f"exported: {bundle}/model.ts (TorchScript), {bundle}/model.pt, {bundle}/plan.json")
    return summary
