"""Differentiable sparsity allocation (DSA): a keep ratio per group, mapped to soft channel masks.

DSA (Ning et al., ECCV 2020, ``models/op.py``) turns a group's keep ratio ``k`` and per-channel
scores ``s`` into keep probabilities ``p_i = sigmoid(beta2 * (log s_i - log beta1))`` with the
threshold ``beta1`` solved so that ``mean(p) = k``, and differentiates through the solve
implicitly. We use the same map with the scores on a log scale already (DAIS indicator logits, or
``log |gamma|`` of BN) and ``beta2 = 1 / T`` (the annealed temperature):

    m_i = sigmoid((s_i - tau) / T),   tau solved from  sum_i m_i = k * C.

So the ratio decides *how many* channels a group keeps and the scores decide *which*; as T -> 0
the masks become the top ``k * C`` scores. The threshold is found by bisection without autograd
(vectorised, on the scores' device: no CPU round trip per step, unlike DSA's scipy root finder),
then re-attached to the graph by one Newton step that changes tau's gradient but not its value
(the implicit-function gradient):

    d tau / d s_j = f'_j / sum f',    d tau / d k = -C T / sum f',    f'_j = m_j (1 - m_j).

This gives DSA's ratio gradient ``dL/dk = C * sum_i (dL/dm_i) f'_i / sum f'`` exactly (tested
against finite differences). Masks are not clamped, so ``mean(m) = k`` holds exactly, avoiding
the mismatch DSA's clipped ``+0.01`` offset causes.
"""

from __future__ import annotations

import torch

__all__ = ["solve_threshold", "allocate"]


@torch.no_grad()
def solve_threshold(scores: torch.Tensor, keep: torch.Tensor, temperature: float, iters: int = 60) -> torch.Tensor:
    """The tau with ``sum(sigmoid((scores - tau) / T)) == keep * len(scores)``, by bisection.

    Args:
        scores: (C,) channel scores.
        keep: scalar keep ratio in (0, 1).
        temperature: T > 0.
    """
    target = keep.clamp(1e-6, 1 - 1e-6) * scores.numel()
    # sum is decreasing in tau; these bounds put it within (0, C) for any target.
    span = temperature * 40.0
    lo = scores.min() - span
    hi = scores.max() + span
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_many = torch.sigmoid((scores - mid) / temperature).sum() > target
        lo = torch.where(too_many, mid, lo)
        hi = torch.where(too_many, hi, mid)
    return (lo + hi) / 2


def allocate(scores: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft masks of one group: ``sigmoid((scores - tau) / T)`` with ``mean == keep``.

    Differentiable in ``scores`` and ``keep`` (implicit differentiation through tau).

    Args:
        scores: (C,) channel scores (e.g. indicator logits); higher means more likely kept.
        keep: scalar tensor, the group's keep ratio in (0, 1).
        temperature: T > 0; smaller gives masks closer to 0/1.

    Returns:
        (C,) masks in (0, 1) whose sum is ``keep * C``.
    """
    tau_star = solve_threshold(scores.detach(), keep.detach(), temperature)
    masks_star = torch.sigmoid((scores - tau_star) / temperature)
    slope = (masks_star * (1 - masks_star)).detach().sum() / temperature  # -dF/dtau at tau*
    # One Newton step from tau*, taken in autograd only: tau's value stays tau*, its gradient is the
    # implicit one. (In value the step would be bisection error / slope, which explodes when the
    # masks saturate in float32 at a low temperature and the slope underflows to 0.)
    residual = masks_star.sum() - keep * scores.numel()
    tau = tau_star + (residual - residual.detach()) / slope.clamp(min=1e-12)
    return torch.sigmoid((scores - tau) / temperature)
