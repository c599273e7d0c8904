"""Exact FLOPs and parameter counts.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts on one forward pass with
autograd enabled: 2 x multiply-accumulates of convolutions, linear layers and matrix products.
BN, activations, pooling and additions are not counted (BENCH.md), matching the numbers papers
report for CIFAR ResNets (e.g. ResNet-56: 125.5 M MACs = 250,971,392 FLOPs).

Example:
    >>> model = create_model("resnet56")
    >>> count_flops(model, (1, 3, 32, 32))
    250971392
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["LayerCost", "count_flops", "count_params", "example_input", "flops_breakdown"]


def example_input(model: nn.Module, input_shape: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Zeros of ``input_shape`` on ``model``'s device in its floating dtype (a tensor is returned as is)."""
    if isinstance(input_shape, torch.Tensor):
        return input_shape
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(tuple(input_shape), device=device, dtype=dtype)


def _counted_forward(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    # Eval mode so BN uses running statistics and dropout is off (neither changes the count, but a
    # batch of one would make training-mode BN fail); the mode is restored afterwards.
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.enable_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, input_shape: Sequence[int] | torch.Tensor = (1, 3, 32, 32)) -> int:
    """Total FLOPs of one forward pass.

    Args:
        model: any module.
        input_shape: the input's shape including the batch dimension, or an example tensor.

    Returns:
        FLOPs as an integer (2 x MACs of conv/linear/matmul).
    """
    return int(_counted_forward(model, example_input(model, input_shape)).get_total_flops())


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerCost:
    """FLOPs and parameters of one leaf module."""

    name: str
    type: str
    flops: int
    params: int


def flops_breakdown(model: nn.Module, input_shape: Sequence[int] | torch.Tensor = (1, 3, 32, 32)) -> list[LayerCost]:
    """Per-layer FLOPs and parameters, in module order, for every leaf module that has either.

    FLOPs of functional calls made directly in a container's ``forward`` (not inside a leaf
    module) are reported under that container's name, so the rows always add up to
    :func:`count_flops`.

    Args:
        model: any module.
        input_shape: the input's shape including the batch dimension, or an example tensor.

    Returns:
        One :class:`LayerCost` per module with FLOPs or parameters of its own.
    """
    counter = _counted_forward(model, example_input(model, input_shape))
    # FlopCounterMode keys nested module names as "<RootClass>.<path>"; FLOPs of a module include
    # its children's, so a module's own FLOPs are its total minus its children's totals.
    root = type(model).__name__
    totals: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key[len(root) + 1 :] if key.startswith(root + ".") else None
        if path is not None:
            totals[path] = int(sum(ops.values()))
    rows = []
    for name, module in model.named_modules():
        own_flops = totals.get(name, 0) - sum(
            totals.get(f"{name}.{child}" if name else child, 0) for child, _ in module.named_children()
        )
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        if own_flops or own_params:
            rows.append(LayerCost(name or "(root)", type(module).__name__, own_flops, own_params))
    return rows
