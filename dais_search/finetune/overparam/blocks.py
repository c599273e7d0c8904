"""Over-parameterised layers that compute exactly what the layer they replace computes.

Each has ``fold() -> nn.Module``, the single layer of the original shape with the composed
weights (:mod:`.ops`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import compose_conv, compose_linear, factor_conv, factor_linear

__all__ = ["ExpandedConv2d", "ExpandedLinear"]


class ExpandedConv2d(nn.Module):
    """``1x1 (Cin -> r Cin) -> kxk (r Cin -> r Cout, the conv's stride/padding/dilation) -> 1x1 (r Cout -> Cout)``.

    No non-linearity in between; the bias (if any) sits on the last 1x1. Built from a dense
    ``nn.Conv2d`` with ``groups == 1`` and initialised to the same function.

    The forward pass composes the three factors into one kernel and runs a single convolution
    (as OREPA does): the function of input and factors is the same as running the chain, so are
    the gradients every factor receives, but the cost is the pruned layer's plus a small
    weight-space product, instead of r^2 times its FLOPs for the middle conv.
    ``forward_chain`` runs the three layers one after the other (for tests).
    """

    def __init__(self, conv: nn.Conv2d, ratio: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("ExpandedConv2d expands convs with groups == 1; grouped convs stay as they are")
        if conv.padding_mode != "zeros":
            raise ValueError(f"ExpandedConv2d needs zero padding, got padding_mode={conv.padding_mode!r}")
        cin, cout = conv.in_channels, conv.out_channels
        self.a = nn.Conv2d(cin, ratio * cin, 1, bias=False)
        self.b = nn.Conv2d(ratio * cin, ratio * cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                           bias=False)  # fmt: skip
        self.c = nn.Conv2d(ratio * cout, cout, 1, bias=conv.bias is not None)
        w1, w2, w3 = factor_conv(conv.weight.detach(), ratio, generator)
        with torch.no_grad():
            self.a.weight.copy_(w1)
            self.b.weight.copy_(w2)
            self.c.weight.copy_(w3)
            if conv.bias is not None:
                self.c.bias.copy_(conv.bias)
        self.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def kernel(self) -> torch.Tensor:
        """The composed (Cout, Cin, k, k) kernel, differentiable in the three factors."""
        return compose_conv(self.a.weight, self.b.weight, self.c.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b
        return F.conv2d(x, self.kernel(), self.c.bias, b.stride, b.padding, b.dilation)

    def forward_chain(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        b = self.b
        conv = nn.Conv2d(self.a.in_channels, self.c.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                         bias=self.c.bias is not None)  # fmt: skip
        weight = compose_conv(self.a.weight.double(), b.weight.double(), self.c.weight.double())
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if self.c.bias is not None:
            conv.bias.copy_(self.c.bias)
        return conv.to(device=self.c.weight.device, dtype=self.c.weight.dtype)


class ExpandedLinear(nn.Module):
    """``Linear(in -> r in) -> Linear(r in -> out)``; the bias sits on the second."""

    def __init__(self, linear: nn.Linear, ratio: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.a = nn.Linear(linear.in_features, ratio * linear.in_features, bias=False)
        self.b = nn.Linear(ratio * linear.in_features, linear.out_features, bias=linear.bias is not None)
        w1, w2 = factor_linear(linear.weight.detach(), ratio, generator)
        with torch.no_grad():
            self.a.weight.copy_(w1)
            self.b.weight.copy_(w2)
            if linear.bias is not None:
                self.b.bias.copy_(linear.bias)
        self.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Composed first when that is cheaper than two matrix products over the batch.
        return F.linear(x, compose_linear(self.a.weight, self.b.weight), self.b.bias)

    def forward_chain(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        linear = nn.Linear(self.a.in_features, self.b.out_features, bias=self.b.bias is not None)
        linear.weight.copy_(compose_linear(self.a.weight.double(), self.b.weight.double()).to(linear.weight.dtype))
        if self.b.bias is not None:
            linear.bias.copy_(self.b.bias)
        return linear.to(device=self.b.weight.device, dtype=self.b.weight.dtype)
