"""Weight granularity, the finest grain: unstructured magnitude sparsity after the structured prune.

The smallest-magnitude weights of every conv and linear layer are set to zero (one threshold over
all of them, ``scope="global"``, or the same fraction in each layer, ``scope="layer"``), then the
network is fine-tuned with those zeros held (re-applied after every optimizer step).

It is reported as **parameter compression** against the dense model (dense parameters / non-zero
parameters), as the multi-grain pruning paper (MGP) does. It gives **no speed-up on dense
kernels**: the tensors keep their shapes and the FLOPs model, FLOPs counts and measured latency
are those of the structured network. The zeros pay off only in sparse storage or sparse kernels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..cost import count_params
from ..train import cosine_schedule, make_sgd, train_one_epoch

__all__ = ["SCOPES", "apply_masks", "magnitude_masks", "sparse_finetune", "sparsity_report", "sparse_weights"]

SCOPES = ("global", "layer")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def sparse_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights sparsity applies to: those of every conv and linear layer, by parameter name."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, _LAYERS)}  # fmt: skip


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """0/1 masks (bool) that zero ``sparsity`` of the conv and linear weights, smallest |w| first.

    ``global``: exactly ``round(sparsity * total)`` weights over all layers, by one ranking (ties
    broken by position); ``layer``: ``round(sparsity * n)`` of each layer's ``n``.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity = {sparsity}; give a fraction of the weights in [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"sparsity scope {scope!r}; choose one of {', '.join(SCOPES)}")
    weights = sparse_weights(model)
    if scope == "layer":
        return {name: _keep_largest(w.detach().abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    keep = _keep_largest(flat, sparsity)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w).to(w.device)
        start += w.numel()
    return masks


def _keep_largest(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    drop = round(sparsity * values.numel())
    keep = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
    if drop:
        keep[torch.argsort(values, stable=True)[:drop]] = False
    return keep


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zeros the masked weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def sparsity_report(model: nn.Module, dense_params: int) -> dict[str, Any]:
    """Non-zero parameters, the zero fraction of the conv/linear weights, and the compression rate
    against the dense model (dense parameters / non-zero parameters)."""
    weights = sparse_weights(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    params = count_params(model)
    nonzero = params - zeros
    return {
        "weights": total,
        "zero_weights": zeros,
        "weight_sparsity": zeros / max(total, 1),
        "params": params,
        "nonzero_params": nonzero,
        "compression_vs_dense": dense_params / max(nonzero, 1),
        "dense_speedup": "none: tensors keep their shapes (zeros help sparse storage or kernels only)",
    }


def sparse_finetune(model: nn.Module, masks: dict[str, torch.Tensor],
                    loader: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int, lr: float,
                    max_steps: int = 0, progress: bool = True) -> list[dict[str, float]]:  # fmt: skip
    """Fine-tunes ``model`` (SGD, BENCH.md's schedule) with the masked weights held at zero: they are
    zeroed first and again after every optimizer step. Returns each epoch's training averages."""
    apply_masks(model, masks)
    steps = len(loader) if not max_steps else min(max_steps, len(loader))  # type: ignore[arg-type]
    optimizer = make_sgd(model, lr)
    scheduler = cosine_schedule(optimizer, epochs * steps)
    history = []
    model.train()
    for epoch in range(epochs):
        stats = train_one_epoch(model, loader, optimizer, scheduler, max_steps=steps, progress=progress,
                                desc=f"sparse fine-tune {epoch + 1}/{epochs}",
                                on_step=lambda step, out: apply_masks(model, masks))  # fmt: skip
        history.append({"epoch": epoch + 1, **stats})
    model.eval()
    return history
