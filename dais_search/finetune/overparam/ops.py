"""Pure folding and initialisation maths for linear over-parameterisation (no modules, no state).

A chain of linear maps without non-linearities in between is one linear map (ExpandNets, Guo et
al. 2020; DBB's ``transIII_1x1_kxk``). For the conv chain ``1x1 (W1) -> kxk (W2) -> 1x1 (W3)``
the composed kernel is ``K[o, i, u, v] = sum_{p, q} W3[o, p] W2[p, q, u, v] W1[q, i]``; the first
1x1 has no bias, so zero padding of its output equals zero padding of its input and the
composition is exact at the borders too.
"""

from __future__ import annotations

import torch

__all__ = ["compose_conv", "compose_linear", "factor_conv", "factor_linear", "orthonormal"]


def orthonormal(rows: int, cols: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random (rows, cols) matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # a uniform (Haar) draw, not one biased by QR's sign convention
    return (q if rows >= cols else q.T).contiguous()


def compose_conv(w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """The kernel of ``1x1 (w1: (P, I, 1, 1)) -> kxk (w2: (Q, P, k, k)) -> 1x1 (w3: (O, Q, 1, 1))``."""
    return torch.einsum("oq,qpuv,pi->oiuv", w3[:, :, 0, 0], w2, w1[:, :, 0, 0])


def factor_conv(
    kernel: torch.Tensor, ratio: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w1, w2, w3)`` with ``compose_conv(w1, w2, w3) == kernel`` and every entry trainable.

    ``w1`` (r*I, I) has orthonormal columns and ``w3`` (O, r*O) orthonormal rows, so their
    pseudo-inverses are their transposes and ``w2 = w3^T K w1^T`` per tap gives back ``K``
    exactly (w3 w3^T = I, w1^T w1 = I). An identity-plus-zeros init would also be exact but
    leaves the added width with zero gradient for ever (methods.md 3.2); this one is dense.
    """
    out_ch, in_ch = kernel.shape[:2]
    w1 = orthonormal(ratio * in_ch, in_ch, generator)
    w3 = orthonormal(out_ch, ratio * out_ch, generator)
    w2 = torch.einsum("oq,oiuv,pi->qpuv", w3, kernel.double().cpu(), w1)  # factors are drawn on the CPU
    dtype = kernel.dtype
    return w1[:, :, None, None].to(dtype), w2.to(dtype), w3[:, :, None, None].to(dtype)


def compose_linear(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The weight of ``Linear(w1: (H, I)) -> Linear(w2: (O, H))``."""
    return w2 @ w1


def factor_linear(
    weight: torch.Tensor, ratio: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w1, w2)`` with ``w2 @ w1 == weight``; ``w1`` (r*I, I) has orthonormal columns."""
    w1 = orthonormal(ratio * weight.shape[1], weight.shape[1], generator)
    w2 = weight.double().cpu() @ w1.T  # factors are drawn on the CPU
    return w1.to(weight.dtype), w2.to(weight.dtype)
