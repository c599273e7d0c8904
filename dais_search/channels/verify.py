"""Checks that a plan prunes correctly: the sliced model against the masked dense model.

The default BN state (mean 0, variance 1, weight 1, bias 0) hides wrong slicing formulas, so
checks run on a copy whose normalisation statistics and affine parameters (and layer scales)
are randomised first, in eval mode (RepVGG's ``verify.py`` habit).

Example:
    >>> report = check_plan(model, plan, torch.randn(2, 3, 32, 32))
    >>> report.max_rel_error < 1e-4
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..cost import count_flops
from .groups import trace_channels

__all__ = ["PlanCheck", "check_plan", "randomize_norms"]


@torch.no_grad()
def randomize_norms(model: nn.Module, example_input: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Randomises, in place, BN/GN/LN/InstanceNorm statistics and affine parameters and any
    per-channel scale parameter named ``*layer_scale*`` (ConvNeXt initialises those at 1e-6,
    which would make pruned channels invisible), and gives all-zero weight matrices small random
    values. Returns ``model`` in eval mode.

    With ``example_input`` the BN statistics are first calibrated on it (random inputs of its
    shape, batch 8) and then perturbed, so that activations stay in range: made-up statistics
    alone can saturate every ReLU6 of a deep network and make its output constant, and then no
    test can tell right slicing from wrong.
    """
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * (high - low) + low)

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if example_input is not None:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        batch = torch.randn((8, *example_input.shape[1:]), generator=g).to(example_input)
        model(batch)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    model.eval()
    for m in norms:
        std = m.running_var.sqrt()
        m.running_mean.add_(0.2 * std * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.8 + 0.7)
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                fill(module.weight, 0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                fill(module.bias, -0.5, 0.5)
    for name, p in model.named_parameters():
        if "layer_scale" in name:
            fill(p, 0.5, 1.5)
        elif p.dim() >= 2 and not p.any():
            # Zero-initialised heads (torchvision's ViT) would make every output 0.
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@dataclass(frozen=True)
class PlanCheck:
    """What :func:`check_plan` measured."""

    max_rel_error: float
    output_shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    flops: int

    @property
    def ok(self) -> bool:
        return self.output_shape == self.expected_shape and self.max_rel_error <= 1e-4


@torch.no_grad()
def check_plan(model: nn.Module, plan, x: torch.Tensor) -> PlanCheck:
    """Applies ``plan`` to a randomised copy of ``model`` and compares it with the masked copy.

    Returns:
        the largest absolute difference divided by the largest absolute masked output, the
        output shapes, and the pruned model's FLOPs at ``plan.input_shape``.
    """
    dense = randomize_norms(copy.deepcopy(model), x)
    graph = trace_channels(dense, torch.zeros(plan.input_shape, device=x.device), plan.ignore, warn=False)
    pruned, masked = plan.apply(dense, graph).eval(), plan.mask(dense, graph).eval()
    expected, actual = masked(x), pruned(x)
    scale = expected.abs().max().clamp(min=1e-12)
    error = float((actual - expected).abs().max() / scale) if actual.shape == expected.shape else float("inf")
    return PlanCheck(error, tuple(actual.shape), tuple(dense(x).shape), count_flops(pruned, plan.input_shape))
