"""Fine-tuning a pruned network: optional linear over-parameterisation (LOP) and distillation from
the dense teacher, then fold (:mod:`.export` writes the result).

    student (pruned) --expand(r)--> over-parameterised student --fine-tune with DistillTask-->
    --fold--> deployable model (checked equal to the expanded one, FLOPs == the pruned model's)

BENCH.md's schedule by default: batch 128, SGD with Nesterov momentum 0.9, weight decay 5e-4,
learning rate 0.01 with cosine decay to 0 per step, on all training images.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..budget import KD_MODES, PRECISIONS
from ..channels import ChannelPlan
from ..checkpoint import get_rng_state, set_rng_state, stop_requests
from ..cost import count_flops, count_params
from ..errors import UserError
from ..files import atomic_torch_save
from ..train import (
    check_finite_model,
    cosine_schedule,
    device_of,
    evaluate,
    make_sgd,
    set_channels_last,
    train_one_epoch,
)
from .distill import DistillTask, resolve_layers
from .overparam import expand, fold
from .sparsity import SCOPES, apply_masks, magnitude_masks, sparse_finetune, sparsity_report

__all__ = ["FinetuneConfig", "FinetuneResult", "distill_layers", "finetune"]

log = logging.getLogger("dais_search")


class FinetuneInterrupted(Exception):
    """Raised inside the epoch loop after a stop request (SIGTERM/SIGINT), once the state is saved."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"interrupted in epoch {epoch + 1} after step {step}")
        self.epoch, self.step = epoch, step


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
    checkpoint_every: int = 200  # steps between saves of the fine-tune state (when finetune gets a state_path)
    precision: str = "fp32"  # "bf16": autocast of the forward passes (weights stay float32; the fold is exact)
    channels_last: bool = False
    sparsity: float = 0.0  # after the fold: this fraction of conv/linear weights zeroed by magnitude (no speed-up)
    sparsity_scope: str = "global"  # "global": one threshold over all layers; "layer": the fraction in each
    sparse_epochs: int = 1  # fine-tune epochs with the zeros held (counted in the total training epochs)

    def __post_init__(self) -> None:
        if self.kd not in KD_MODES:
            raise ValueError(f"kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.overparam < 0 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("overparam must be >= 0, epochs >= 1 and lr > 0")
        if not 0 <= self.sparsity < 1 or self.sparsity_scope not in SCOPES or self.sparse_epochs < 0:
            raise ValueError(f"sparsity must be in [0, 1), sparsity_scope one of {', '.join(SCOPES)} and "
                             "sparse_epochs >= 0")  # fmt: skip


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


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the folded, deployable model: plain Conv/BN/Linear of the pruned shapes, eval mode.
        metrics: the per-epoch history, the fold error, FLOPs, params and (with a test loader) test top-1.
    """

    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)


def _distill_step(task: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return task(x, y)  # DistillTask computes its own loss terms


def finetune(
    pruned: nn.Module,
    teacher: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: FinetuneConfig | None = None,
    *,
    plan: ChannelPlan | None = None,
    input_shape: Sequence[int] | None = None,
    test_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = True,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> FinetuneResult:
    """Fine-tunes a pruned model with LOP and distillation from ``teacher``, then folds it exactly.

    ``pruned`` is expanded (``config.overparam``; 0 fine-tunes it as it is), trained with
    :func:`~dais_search.train.train_one_epoch` on a :class:`DistillTask` for ``config.epochs``
    epochs and folded back. Every epoch evaluates a folded copy on ``test_loader`` when given
    (reported, never used for choices). At the end it asserts that the folded model equals the
    expanded one and has the pruned model's FLOPs (the plan's, and within its budget
    ``meta.target_flops`` when the plan names one).

    Args:
        pruned: the pruned model (e.g. ``plan.apply(dense)``); not modified.
        teacher: the dense model it was pruned from (kept in eval mode, no gradients).
        train_loader: iterable of ``(images, labels)`` batches.
        config: epochs, learning rate, expansion ratio, distillation (default: BENCH.md's schedule).
        plan: the plan ``pruned`` came from: its input shape and FLOPs are checked.
        input_shape: the shape FLOPs are counted at (batch 1) when no plan is given.
        test_loader: evaluate the folded model on it after every epoch and at the end.
        progress: show progress bars.
        state_path: save the fine-tune state there (expanded model, optimizer, schedule, history,
            RNG states, position) every ``config.checkpoint_every`` steps, after every epoch and on
            SIGTERM / SIGINT (which then stop with a hint to resume); with ``resume`` continue from
            it, to the same weights as an uninterrupted run (our loaders replay their batches).

    Returns:
        The folded model and the metrics.
    """
    config = config or FinetuneConfig()
    if plan is None and input_shape is None:
        raise ValueError("finetune needs plan= or input_shape= (e.g. (1, 3, 32, 32)) to count FLOPs and check the fold")
    input_shape = tuple(plan.input_shape if plan is not None else input_shape)
    torch.manual_seed(config.seed)
    pruned_flops = count_flops(pruned, input_shape)
    model = expand(pruned, config.overparam, seed=config.seed) if config.overparam else copy.deepcopy(pruned)
    # Every weight of the student trains, whatever the flags it was copied with: a student sliced from a
    # teacher that an earlier fine-tune froze (DistillTask freezes its teacher) would keep BN frozen.
    model.requires_grad_(True)
    if config.channels_last:
        set_channels_last(model)
    sp = config.sp_weight if "sp" in config.kd else 0.0
    logit = config.logit_weight if "logit" in config.kd else 0.0
    task = DistillTask(model, teacher, distill_layers(teacher, config), sp, logit, config.temperature)
    optimizer = make_sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = len(train_loader) if not config.max_steps else min(config.max_steps, len(train_loader))
    scheduler = cosine_schedule(optimizer, config.epochs * steps)
    history: list[dict] = []
    start_epoch, start_step, elapsed = 0, 0, 0.0
    if resume:
        if state_path is None or not os.path.isfile(state_path):
            raise UserError(f"resume: no fine-tune state at {state_path}; start without resume")
        state = torch.load(state_path, map_location=device_of(model), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, start_step, elapsed = state["history"], state["epoch"], state["step"], state["seconds"]
        set_rng_state(state["rng"])
    start = time.perf_counter() - elapsed

    def save(epoch: int, step: int) -> None:
        if state_path is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "history": history, "epoch": epoch, "step": step,
                               "seconds": time.perf_counter() - start, "rng": get_rng_state()}, state_path)  # fmt: skip

    with stop_requests() as stop:
        for epoch in range(start_epoch, config.epochs):
            if hasattr(train_loader, "epoch"):
                train_loader.epoch = epoch  # our loaders shuffle by pass: where an uninterrupted run is

            def on_step(step: int, out, epoch=epoch) -> None:
                if step + 1 >= steps:
                    return  # the end of the epoch is saved below
                stopping = stop()
                if stopping or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                    save(epoch, step + 1)
                if stopping:
                    raise FinetuneInterrupted(epoch, step + 1)

            try:
                stats = train_one_epoch(task, train_loader, optimizer, scheduler, _distill_step,
                                        config.max_steps or None, progress, f"fine-tune {epoch + 1}/{config.epochs}",
                                        on_step if state_path is not None else None, config.precision,
                                        start_step if epoch == start_epoch else 0)  # fmt: skip
            except FinetuneInterrupted as exc:
                raise UserError(f"fine-tune interrupted (epoch {exc.epoch + 1}, after step {exc.step}); its state "
                                f"is saved in {state_path}: continue with --resume (the same command)") from None
            stats = {k: stats[k] for k in ("loss", "task_loss", "kd_loss", "top1", "seconds")}
            if test_loader is not None:
                stats["test_top1_folded"] = evaluate(fold(model), test_loader, progress=False)["top1"]
            stats["epoch"] = epoch + 1
            history.append(stats)
            save(epoch + 1, 0)
            log.info("fine-tune epoch %d/%d: %s", epoch + 1, config.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))  # fmt: skip
            if stop() and epoch + 1 < config.epochs:
                raise UserError(f"fine-tune interrupted (after epoch {epoch + 1}); its state is saved in "
                                f"{state_path}: continue with --resume (the same command)")  # fmt: skip
    task.remove_hooks()
    set_channels_last(model, False)  # the folded, exported weights in the default memory format
    model.eval()
    folded = fold(model).eval()
    x = torch.randn(4, *input_shape[1:], device=next(model.parameters()).device)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    check_finite_model(folded, "fine-tune: the folded model")
    error = float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
    if not error <= 1e-4:  # NaN fails too
        raise AssertionError(f"folded model differs from the expanded one (relative error {error:.2e})")
    flops = count_flops(folded, input_shape)
    if flops != pruned_flops or (plan is not None and flops != plan.flops):
        raise AssertionError(f"folded model has {flops} FLOPs, the pruned one {pruned_flops}")
    target = plan.meta.get("target_flops") if plan is not None else None
    if target is not None and flops > target:
        raise AssertionError(f"folded model has {flops} FLOPs, over the plan's budget of {target}")
    metrics = {
        "config": asdict(config),
        "history": history,
        "finetune_seconds": time.perf_counter() - start,
        "fold_max_rel_error": error,
        "flops": flops,
        "params": count_params(folded),
    }
    if test_loader is not None:
        metrics["test_top1"] = evaluate(folded, test_loader, progress=False)["top1"]
    if config.sparsity:
        metrics["sparsity"] = _sparsify(folded, teacher, train_loader, config, progress, test_loader)
        if test_loader is not None:
            metrics["test_top1_structured"] = metrics["test_top1"]
            metrics["test_top1"] = metrics["sparsity"]["test_top1"]
    return FinetuneResult(folded, metrics)


def _sparsify(folded: nn.Module, teacher: nn.Module, train_loader, config: FinetuneConfig, progress: bool,
              test_loader) -> dict[str, Any]:  # fmt: skip
    """The weight grain: magnitude sparsity on the folded model, then ``sparse_epochs`` epochs with the
    zeros held (plain cross-entropy, BENCH.md's schedule); the report and the sparse test top-1."""
    start = time.perf_counter()
    masks = magnitude_masks(folded, config.sparsity, config.sparsity_scope)
    history = sparse_finetune(folded, masks, train_loader, config.sparse_epochs, config.lr, config.max_steps,
                              progress) if config.sparse_epochs else []  # fmt: skip
    if not config.sparse_epochs:
        apply_masks(folded, masks)
    check_finite_model(folded, "fine-tune: the sparse model")
    report = {"sparsity": config.sparsity, "scope": config.sparsity_scope, "epochs": config.sparse_epochs,
              "history": history, "seconds": time.perf_counter() - start,
              **sparsity_report(folded, count_params(teacher))}  # fmt: skip
    if test_loader is not None:
        report["test_top1"] = evaluate(folded, test_loader, progress=False)["top1"]
    folded.eval()
    return report
