"""Plain training and evaluation loops shared by training, search and fine-tuning.

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

__all__ = ["cosine_schedule", "evaluate", "make_sgd", "train_one_epoch"]


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


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    max_steps: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader`` (or ``max_steps`` batches) in training mode.

    Returns:
        ``{"loss", "top1", "images", "seconds", "images_per_s"}`` over the pass; ``top1`` in percent.
    """
    model.train()
    device = _device_of(model)
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # Accumulate on the device: a .item() per step would be a host-device sync point.
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
    seconds = time.perf_counter() - start
    seen = max(seen, 1)
    return {
        "loss": loss_sum.item() / seen,
        "top1": 100.0 * correct.item() / seen,
        "images": float(seen),
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
    }


@torch.no_grad()
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
    device = _device_of(model)
    loss_sum, correct1, correct5, seen = 0.0, 0, 0, 0
    total = len(loader) if hasattr(loader, "__len__") else None
    for x, y in tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
        seen += len(y)
    seen = max(seen, 1)
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen, "images": seen}
