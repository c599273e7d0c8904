"""Fine-tuning a pruned network: optional linear over-parameterisation (LOP) and distillation from
the dense teacher, then fold and export.

    student (pruned) --expand(r)--> over-parameterised student --fine-tune with DistillTask-->
    --fold--> deployable model (checked equal to the expanded one, FLOPs == the plan's)
    --export--> OUT/model.ts (TorchScript), OUT/model.pt (state dict + plan), plan.json, metrics.json

BENCH.md's schedule by default: batch 128, SGD with Nesterov momentum 0.9, weight decay 5e-4,
learning rate 0.01 with cosine decay to 0 per step, on all training images.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .distill import DistillTask, resolve_layers
from .flops import count_flops, count_params
from .loops import cosine_schedule, evaluate, make_sgd
from .overparam import expand, fold
from .plan import ChannelPlan
from .report import library_versions

__all__ = ["FinetuneConfig", "distill_layers", "export", "finetune"]

log = logging.getLogger("dais_search")

KD_MODES = ("sp", "logit", "sp+logit", "none")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (defaults: BENCH.md's schedule, LOP r = 4, SP-KD)."""

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    overparam: int = 4  # expansion ratio r; 0 fine-tunes the pruned layers as they are
    kd: str = "sp"
    kd_layers: str = "stages"  # "stages", "blocks" or comma-separated module paths (SP-KD)
    sp_weight: float = 3000.0
    logit_weight: float = 1.0
    temperature: float = 4.0
    max_steps: int = 0  # per epoch; 0: all
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kd not in KD_MODES:
            raise ValueError(f"kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        if self.overparam < 0 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("overparam must be >= 0, epochs >= 1 and lr > 0")


def distill_layers(teacher: nn.Module, config: FinetuneConfig) -> list[str]:
    """The module paths SP-KD matches (none without SP-KD); ``ValueError`` naming any that is missing.

    Cheap: call it before data is loaded. Pruned models keep the dense model's module paths.
    """
    if "sp" not in config.kd:
        return []
    layers = resolve_layers(teacher, config.kd_layers)
    names = dict(teacher.named_modules())
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"kd_layers: {', '.join(missing[:5])} not in {type(teacher).__name__}; use 'stages', "
                         "'blocks' or module paths such as 'layer1,layer2' (see named_modules())")  # fmt: skip
    return layers


def _train_epoch(task: DistillTask, loader, optimizer, scheduler, max_steps: int, progress: bool, desc: str):
    task.train()
    device = next(task.student.parameters()).device
    totals = {"loss": 0.0, "task_loss": 0.0, "kd_loss": 0.0, "correct": 0, "seen": 0}
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    for i, (x, y) in enumerate(tqdm(loader, total=steps, desc=desc, leave=False, disable=not progress)):
        if i >= steps:
            break
        x, y = x.to(device), y.to(device)
        out = task(x, y)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        scheduler.step()
        n = len(y)
        for key in ("loss", "task_loss", "kd_loss"):
            totals[key] += float(out[key].detach()) * n
        totals["correct"] += int((out["output"].detach().argmax(1) == y).sum())
        totals["seen"] += n
    seen = max(totals["seen"], 1)
    return {k: totals[k] / seen for k in ("loss", "task_loss", "kd_loss")} | {"top1": 100.0 * totals["correct"] / seen}


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_loader,
    test_loader,
    plan: ChannelPlan,
    config: FinetuneConfig,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tunes ``student`` (the pruned model) and returns (the folded model, metrics).

    Every epoch evaluates a folded copy on ``test_loader`` (reported, never used for choices).
    At the end asserts that the folded model equals the expanded one and has the plan's FLOPs, within
    the plan's budget (``meta.target_flops``, written by the search) when it names one.
    """
    torch.manual_seed(config.seed)
    pruned_flops = count_flops(student, plan.input_shape)
    model = expand(student, config.overparam, seed=config.seed) if config.overparam else copy.deepcopy(student)
    sp = config.sp_weight if "sp" in config.kd else 0.0
    logit = config.logit_weight if "logit" in config.kd else 0.0
    task = DistillTask(model, teacher, distill_layers(teacher, config), sp, logit, config.temperature)
    optimizer = make_sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = len(train_loader) if not config.max_steps else min(config.max_steps, len(train_loader))
    scheduler = cosine_schedule(optimizer, config.epochs * steps)
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        stats = _train_epoch(task, train_loader, optimizer, scheduler, config.max_steps, progress,
                             f"fine-tune {epoch + 1}/{config.epochs}")  # fmt: skip
        stats["seconds"] = time.perf_counter() - t0
        stats["test_top1_folded"] = evaluate(fold(model), test_loader, progress=False)["top1"]
        stats["epoch"] = epoch + 1
        history.append(stats)
        log.info("fine-tune epoch %d/%d: %s", epoch + 1, config.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))  # fmt: skip
    task.remove_hooks()
    model.eval()
    folded = fold(model).eval()
    x = torch.randn(4, *plan.input_shape[1:], device=next(model.parameters()).device)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    error = float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
    if error > 1e-4:
        raise AssertionError(f"folded model differs from the expanded one (relative error {error:.2e})")
    flops = count_flops(folded, plan.input_shape)
    if flops != pruned_flops or flops != plan.flops:
        raise AssertionError(f"folded model has {flops} FLOPs, the plan {plan.flops}")
    target = plan.meta.get("target_flops")
    if target is not None and flops > target:
        raise AssertionError(f"folded model has {flops} FLOPs, over the plan's budget of {target}")
    metrics = {
        "config": asdict(config),
        "history": history,
        "finetune_seconds": time.perf_counter() - start,
        "fold_max_rel_error": error,
        "flops": flops,
        "params": count_params(folded),
        "test_top1": evaluate(folded, test_loader, progress=False)["top1"],
    }
    return folded, metrics


def export(folded: nn.Module, plan: ChannelPlan, metrics: dict[str, Any], out: str | Path,
           model_name: str, num_classes: int, normalize: str, budget_file: str | None = None) -> Path:  # fmt: skip
    """Writes the deployable bundle: TorchScript, state dict + plan, plan.json, budget, metrics.

    ``model.ts`` loads with plain ``torch.jit.load`` (no dais_search needed); ``model.pt``
    rebuilds with ``ChannelPlan.from_dict(ckpt["plan"]).apply(create_model(name))`` and
    ``load_state_dict``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folded = folded.eval()
    example = torch.zeros(plan.input_shape, device=next(folded.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated; it is still the format plain torch.jit.load reads
        # with no Python source of the model, which is what a deployable bundle needs here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.trace(folded, example)
    tmp = out / ".model.ts.tmp"
    scripted.save(str(tmp))
    tmp.replace(out / "model.ts")
    save_checkpoint(out / "model.pt", folded, model_name, num_classes, normalize=normalize, plan=plan.to_dict())
    plan.save(out / "plan.json")
    if budget_file:
        shutil.copyfile(budget_file, out / "budget.toml")
    (out / "metrics.json").write_text(json.dumps({**metrics, "versions": library_versions()}, indent=1))
    return out
