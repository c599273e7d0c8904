"""Fixed-ratio baselines: the same kept fraction in every prunable group, channels by a criterion.

Example:
    >>> plan = uniform_plan(model, (1, 3, 32, 32), flops_target=0.5 * count_flops(model))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..channels import ChannelPlan, FlopsModel, trace_channels
from .importance import get_importance
from .repair import repair, whole_units

__all__ = ["uniform_plan"]


def uniform_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    criterion: str = "l1",
) -> ChannelPlan:
    """Keeps the same fraction of every prunable group, the largest whose FLOPs fit ``flops_target``,
    within a group the channels the ``criterion`` (see :mod:`.importance`) ranks highest; then adds
    back single channels (best score per FLOP) while they fit, to end within 1% of the target."""
    score = get_importance(criterion)
    example = torch.zeros(tuple(input_shape), device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller has seen the blocked-op warnings already
        graph = trace_channels(model, example, tuple(ignore))
    fm = FlopsModel(graph, model, example)

    def widths(ratio: float) -> dict[int, int]:
        out = {}
        for g in fm.groups:
            n = max(g.min_keep, int(ratio * g.size))
            out[g.id] = n - n % g.round_to if n % g.round_to and n > g.round_to else n
        return out

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the shared ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(fm.flops(widths(mid))) <= flops_target else (lo, mid)
    scores = [score(model, g) for g in fm.groups]
    kept = {
        g.id: whole_units(g, torch.argsort(s, descending=True), widths(lo)[g.id])
        for g, s in zip(fm.groups, scores, strict=True)
    }
    # Granularity leaves the shared ratio short of the target: top up with the best channels per FLOP.
    # The criterion's scale differs from layer to layer, so scores are normalised by each group's
    # maximum before they are compared across groups: a heuristic that decides only the few channels
    # of the top-up (the widths stay within a few channels of uniform).
    masks = [s / s.max().clamp(min=1e-12) for s in scores]
    kept = repair(fm, kept, masks, flops_target)
    return ChannelPlan.create(model, kept, input_shape, tuple(ignore), {"method": f"uniform-{criterion}"}, graph)
