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
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..budget import KD_MODES, PRECISIONS
from ..channels import ChannelPlan
from ..cost import count_flops, count_params
from ..train import check_finite_model, cosine_schedule, evaluate, make_sgd, set_channels_last, train_one_epoch
from .distill import DistillTask, resolve_layers
from .overparam import expand, fold

__all__ = ["FinetuneConfig", "FinetuneResult", "distill_layers", "finetune"]

log = logging.getLogger("dais_search")


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
    precision: str = "fp32"  # "bf16": autocast of the forward passes (weights stay float32; the fold is exact)
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.kd not in KD_MODES:
            raise ValueError(f"kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
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
    if config.channels_last:
        set_channels_last(model)
    sp = config.sp_weight if "sp" in config.kd else 0.0
    logit = config.logit_weight if "logit" in config.kd else 0.0
    task = DistillTask(model, teacher, distill_layers(teacher, config), sp, logit, config.temperature)
    optimizer = make_sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = len(train_loader) if not config.max_steps else min(config.max_steps, len(train_loader))
    scheduler = cosine_schedule(optimizer, config.epochs * steps)
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        stats = train_one_epoch(task, train_loader, optimizer, scheduler, _distill_step, config.max_steps or None,
                                progress, f"fine-tune {epoch + 1}/{config.epochs}",
                                precision=config.precision)  # fmt: skip
        stats = {k: stats[k] for k in ("loss", "task_loss", "kd_loss", "top1", "seconds")}
        if test_loader is not None:
            stats["test_top1_folded"] = evaluate(fold(model), test_loader, progress=False)["top1"]
        stats["epoch"] = epoch + 1
        history.append(stats)
        log.info("fine-tune epoch %d/%d: %s", epoch + 1, config.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))  # fmt: skip
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
    return FinetuneResult(folded, metrics)
