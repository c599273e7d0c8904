"""The one training loop and evaluation, shared by dense training, the search and fine-tuning.

Example:
    >>> optimizer = make_sgd(model, lr=0.01, weight_decay=5e-4)
    >>> scheduler = cosine_schedule(optimizer, total_steps=epochs * len(train_loader))
    >>> for epoch in range(epochs):
    ...     train_one_epoch(model, train_loader, optimizer, scheduler)
    >>> evaluate(model, test_loader)["top1"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .distributed import average_gradients, local
from .errors import DivergedError

__all__ = [
    "AUX_WEIGHT",
    "CHECK_EVERY",
    "PRECISIONS",
    "autocast",
    "as_input",
    "check_finite_model",
    "classification_loss",
    "cosine_schedule",
    "cross_entropy",
    "device_of",
    "evaluate",
    "finite_step",
    "make_sgd",
    "recalibrate_bn",
    "set_channels_last",
    "time_train_steps",
    "to_model",
    "train_one_epoch",
    "train_step",
]


def make_sgd(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = True
) -> torch.optim.SGD:
    """SGD (BENCH.md: Nesterov momentum 0.9, weight decay 5e-4) over the trainable parameters.

    BN and bias parameters get no weight decay: decaying them only shrinks the BN scales, which
    the channel scores of pruning read.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine decay from the optimizer's learning rate to 0 over ``total_steps``, with an
    optional linear warm-up. Call ``scheduler.step()`` after every optimizer step."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str = "fp32"):
    """``torch.autocast`` to bfloat16 for ``precision == "bf16"`` (CPU and GPU), a no-op for ``"fp32"``:
    convolutions and matmuls run in bf16, losses and norms in float32, weights stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def set_channels_last(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Puts ``model``'s 4-D weights in channels-last memory format (in place; returns it); the
    batches :func:`to_model` moves then follow."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _channels_last(model: nn.Module) -> bool:
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def as_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on ``model``'s device and, if floating point, in its dtype (non-blocking: a copy from
    pinned memory overlaps with the computation already queued); images in channels-last memory
    format when the model's convolutions are."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None:
        return x
    x = x.to(p.device, p.dtype if x.is_floating_point() else None, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and _channels_last(model) else x


def to_model(x: torch.Tensor, y: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``model``'s device, floating-point inputs in its dtype: the one place batches are moved."""
    x = as_input(x, model)
    return x, y.to(x.device, non_blocking=True)


AUX_WEIGHT = 0.4
"""Weight of each auxiliary classifier's loss (Inception v3's 0.4), for models that return them in training."""


def classification_loss(output: torch.Tensor | tuple, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of a classifier's output. A tuple (torchvision's GoogLeNet and Inception v3 in
    train mode: main logits, then auxiliary ones) adds ``AUX_WEIGHT`` x the CE of each auxiliary head."""
    if isinstance(output, tuple):
        main, aux = output[0], [a for a in output[1:] if isinstance(a, torch.Tensor)]
        return F.cross_entropy(main, y) + AUX_WEIGHT * sum(F.cross_entropy(a, y) for a in aux), main
    return F.cross_entropy(output, y), output


Output = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Output]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Output:
    """The default loss of :func:`train_step`: ``{"loss": CE, "output": logits}`` (:func:`classification_loss`)."""
    loss, logits = classification_loss(model(x), y)
    return {"loss": loss, "output": logits}


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_fn: LossFn = cross_entropy,
    precision: str = "fp32",
) -> Output:
    """One optimisation step on one batch: ``loss_fn(model, x, y)`` (under :func:`autocast` for
    ``precision``), backward, optimizer and scheduler step. Under ``torchrun`` the gradients are
    averaged over the processes before the step (:func:`~dais_search.distributed.average_gradients`).

    Args:
        loss_fn: returns ``{"loss": scalar, "output": logits, ...}``; further scalar entries (e.g. a
            distillation term) are averaged by :func:`train_one_epoch`. A
            :class:`~dais_search.finetune.DistillTask` is its own loss: ``lambda task, x, y: task(x, y)``.

    Returns:
        What ``loss_fn`` returned (not detached).
    """
    with autocast(x.device, precision):
        out = loss_fn(model, x, y)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    average_gradients(p for group in optimizer.param_groups for p in group["params"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return out


CHECK_EVERY = 50  # steps between the host reads of the on-device finiteness flag (a sync on GPUs)


def finite_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """A 0-dim bool on the loss's device: the loss and every gradient the optimizer holds are finite.
    No host sync: read it when convenient."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    ok = torch.isfinite(loss.detach()).all()
    if grads:
        ok = ok & torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)).to(ok.device)
    return ok


def check_finite_model(model: nn.Module, where: str) -> None:
    """Raises :class:`DivergedError` naming ``where`` and the first parameter or buffer holding a NaN
    or an infinity."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DivergedError(f"{where}: {name} holds NaN or infinite values")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_fn: LossFn = cross_entropy,
    max_steps: int | None = None,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, Output], None] | None = None,
    precision: str = "fp32",
    start_step: int = 0,
) -> dict[str, float]:
    """One pass over ``loader`` (or ``max_steps`` batches) in training mode, one :func:`train_step` a batch.

    The one training loop: dense training, fine-tuning (``loss_fn`` calling a distillation task)
    and the timing of dense steps all use it. Batches are moved to the model's device here.

    Args:
        on_step: called after every step with the step index and :func:`train_step`'s output.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; see :func:`autocast`).
        start_step: resume the pass here: earlier batches are drawn (so that a seeded loader stays in
            step) but not trained on; the returned averages cover the steps from here on.

    Raises:
        DivergedError: a step's loss or gradients were NaN or infinite (checked on the device and
            read every ``CHECK_EVERY`` steps and at the end); the message names ``desc`` and the step.

    Returns:
        ``{"loss", "top1", "images", "seconds", "images_per_s"}`` over the pass (``top1`` in
        percent), plus the mean of every other scalar ``loss_fn`` returns (e.g. ``kd_loss``).
    """
    model.train()
    device = device_of(model)
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # the first step with a non-finite loss or grad
    seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        if step < start_step:  # resuming mid-pass: the loader replays the batches done, nothing is computed
            continue
        x, y = to_model(x, y, model)
        out = train_step(model, x, y, optimizer, scheduler, loss_fn, precision)
        bad = ~finite_step(out["loss"], optimizer).to(device)
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        if (step + 1) % CHECK_EVERY == 0:
            _raise_if_diverged(first_bad, desc)
        # Accumulate on the device: a .item() per step would be a host-device sync point.
        for key, value in out.items():
            if key != "output" and value.dim() == 0:
                sums[key] = sums.get(key, 0) + value.detach().float() * len(y)
        correct += (out["output"].detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step, out)
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{out['loss'].item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
    _raise_if_diverged(first_bad, desc)
    seconds = time.perf_counter() - start
    seen = max(seen, 1)
    stats = {key: float(value) / seen for key, value in sums.items()}
    stats.setdefault("loss", 0.0)
    return stats | {
        "top1": 100.0 * correct.item() / seen,
        "images": float(seen),
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
    }


@torch.no_grad()
def _raise_if_diverged(first_bad: torch.Tensor, desc: str) -> None:
    step = int(first_bad)
    if step >= 0:
        raise DivergedError(f"{desc}: the loss or a gradient was NaN or infinite at step {step + 1} of this pass")


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, float]:
    """Evaluates ``model`` in eval mode.

    Returns:
        ``{"top1", "top5", "loss", "images"}``; accuracies in percent (top-5 equals 100 when there
        are 5 classes or fewer).
    """
    model.eval()
    loss_sum, correct1, correct5, seen = 0.0, 0, 0, 0
    total = len(loader) if hasattr(loader, "__len__") else None
    for x, y in tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x, y = to_model(x, y, model)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
        seen += len(y)
    seen = max(seen, 1)
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen, "images": seen}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int) -> nn.Module:
    """Re-estimates BN running statistics of ``model`` on ``batches`` training batches (cumulative average).

    Only the BN layers are put in training mode: dropout and stochastic depth stay off, so the
    statistics are those of the network that inference runs.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return model
    momenta = [m.momentum for m in norms]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        model(to_model(x, y, model)[0])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    for m, mode in modes.items():
        m.training = mode
    return model


def time_train_steps(model: nn.Module, loader: Iterable, steps: int, warmup: int = 2) -> float:
    """Seconds per plain training step (CE, SGD) of ``model``, which it trains: pass a copy.

    The first ``warmup`` steps (allocator, kernel selection) are not timed, unless the loader has
    no more than that (then every step is: a time, not 0). A step's time runs from the end of the
    previous step, so it includes fetching the batch. Under ``torchrun``: this process's steps alone,
    without gradient averaging.
    """
    optimizer = make_sgd(model, 0.01)
    ends = [time.perf_counter()]  # ends[i + 1]: when step i finished

    def lap(step: int, out: Output) -> None:
        if out["loss"].is_cuda:
            torch.cuda.synchronize(out["loss"].device)  # CUDA runs asynchronously: time what finished
        ends.append(time.perf_counter())

    with local():  # one process's steps, without gradient averaging (under torchrun the others may not take them)
        train_one_epoch(model, loader, optimizer, max_steps=steps + warmup, progress=False, on_step=lap)
    done = len(ends) - 1
    timed = ends[warmup:] if done > warmup else ends  # a loader shorter than the warm-up: time every step
    return (timed[-1] - timed[0]) / max(len(timed) - 1, 1)
