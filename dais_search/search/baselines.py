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
from .repair import whole_units

__all__ = ["uniform_plan"]


def uniform_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    criterion: str = "l1",
) -> ChannelPlan:
    """Keeps the same fraction of every prunable group, the largest whose FLOPs fit ``flops_target``,
    within a group the channels the ``criterion`` (see :mod:`.importance`) ranks highest.

    Granularity (whole channels, whole blocks of grouped convs) leaves the shared ratio short of
    the target; the remainder is topped up one unit at a time, always in the group whose kept
    fraction is lowest among those whose next unit still fits, so the widths stay as uniform as
    the granularity allows (no group's kept fraction exceeds another's by more than one unit,
    unless the lower one's next unit would overshoot the budget). Scores are only compared within
    a group: the criterion's scale differs from layer to layer.
    """
    score = get_importance(criterion)
    example = torch.zeros(tuple(input_shape), device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller has seen the blocked-op warnings already
        graph = trace_channels(model, example, tuple(ignore))
    fm = FlopsModel(graph, model, example)
    groups = fm.groups
    floor = float(fm.flops({g.id: g.min_keep for g in groups}))
    if floor > flops_target:
        raise ValueError(f"cannot meet {flops_target:.0f} FLOPs: the model has {floor:.0f} at the minimum width "
                         "of every group; raise the budget")  # fmt: skip

    def widths(ratio: float) -> dict[int, int]:
        out = {}
        for g in groups:
            n = max(g.min_keep, int(ratio * g.size))
            out[g.id] = n - n % g.round_to if n % g.round_to and n > g.round_to else n
        return out

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the shared ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(fm.flops(widths(mid))) <= flops_target else (lo, mid)
    counts = _top_up(fm, widths(lo), flops_target)
    kept = {}
    for g in groups:
        if counts[g.id] < g.size:
            kept[g.id] = whole_units(g, torch.argsort(score(model, g), descending=True), counts[g.id])
    return ChannelPlan.create(model, kept, input_shape, tuple(ignore), {"method": f"uniform-{criterion}"}, graph)


def _top_up(fm: FlopsModel, counts: dict[int, int], flops_target: float) -> dict[int, int]:
    """Adds units to the group with the lowest kept fraction whose next unit fits, until none fits."""
    counts = dict(counts)
    unit = {g.id: (len(g.blocks[0]) if g.blocks else g.round_to) for g in fm.groups}
    size = {g.id: g.size for g in fm.groups}
    full = {gid for gid in counts if counts[gid] >= size[gid]}
    while True:
        candidates = sorted((counts[gid] / size[gid], gid) for gid in counts if gid not in full)
        for _, gid in candidates:
            trial = dict(counts)
            trial[gid] += unit[gid]
            if float(fm.flops(trial)) <= flops_target:
                counts = trial
                break
            full.add(gid)  # its next unit overshoots now and will only cost more later
        else:
            return counts
        if counts[gid] >= size[gid]:
            full.add(gid)
