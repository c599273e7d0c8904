"""Budget repair: a hard plan moved onto ``0.99 x target <= FLOPs <= target`` by whole units; and
:func:`check_feasible`, which says before any work whether a budget can be met at all.

Binarising soft masks (or rounding a shared keep ratio) leaves a plan somewhat off the budget.
:func:`repair` removes the kept unit (a channel, or a block of a grouped conv) with the smallest
value per FLOP saved while over the target, then adds back the dropped unit with the largest value
per FLOP cost while under 0.99 x target and it fits. FLOPs are exact: the
:class:`~dais_search.channels.FlopsModel` at integer widths.
"""

from __future__ import annotations

import math

import torch

from ..channels import ChannelGroup, FlopsModel
from ..errors import UserError

__all__ = ["check_feasible", "floor_widths", "repair", "whole_units"]


def floor_widths(fm: FlopsModel, min_keep: int = 1) -> dict[int, int]:
    """The fewest channels each prunable group may keep: its own minimum and ``min_keep``, rounded
    up to whole units (blocks of grouped convs)."""
    out = {}
    for g in fm.groups:
        unit = len(g.blocks[0]) if g.blocks else g.round_to
        out[g.id] = min(g.size, -(-max(g.min_keep, min_keep) // unit) * unit)
    return out


def check_feasible(fm: FlopsModel, flops_target: float, params_target: float | None = None, min_keep: int = 1,
                   what: str = "the budget") -> None:  # fmt: skip
    """Raises a :class:`UserError` naming the problem and the fix when no plan can meet the budget:
    ``min_keep`` above a group's size, a FLOPs (or params) target below what the minimum widths
    cost, or a target at or above the dense model's (nothing to prune). ``what`` names the budget
    in the message (e.g. ``'budget.flops = "1%"'``)."""
    for g in fm.groups:
        if min_keep > g.size:
            raise UserError(f"budget.min_keep = {min_keep} is more than group {g.id} ({g.name}) has: {g.size} "
                            f"channels; lower budget.min_keep to at most {min(x.size for x in fm.groups)}")  # fmt: skip
    dense = fm.dense_flops
    if flops_target >= dense:
        raise UserError(f"{what} asks for {flops_target:,.0f} FLOPs, at or above the dense model's {dense:,}: "
                        'nothing to prune; give less, e.g. "50%"')  # fmt: skip
    floor = floor_widths(fm, min_keep)
    least = float(fm.flops(floor))
    if least > flops_target:
        raise UserError(f"{what} asks for {flops_target:,.0f} FLOPs ({flops_target / dense:.1%} of dense), but the "
                        f"model has {least:,.0f} ({least / dense:.1%}) with every prunable group at its minimum "
                        f"width (min_keep = {min_keep}; unprunable layers keep their cost): raise it to at least "
                        f'"{100 * least / dense + 0.05:.1f}%"')  # fmt: skip
    if params_target is not None and float(fm.params(floor)) > params_target:
        raise UserError(f"budget.params asks for {params_target:,.0f} parameters, but the model has "
                        f"{float(fm.params(floor)):,.0f} at the minimum widths; raise budget.params")  # fmt: skip


def whole_units(group: ChannelGroup, order: torch.Tensor, count: int) -> list[int]:
    """The first ``count`` channels of ``order``, extended to whole blocks (rounded to ``round_to``)."""
    if not group.blocks:
        return sorted(order[: min(count, group.size)].tolist())
    block_of = {c: b for b in group.blocks for c in b}
    chosen: list[int] = []
    seen = set()
    for c in order.tolist():
        b = block_of[c]
        if b not in seen:
            seen.add(b)
            chosen += list(b)
        if len(chosen) >= count:
            break
    return sorted(chosen)


def repair(
    fm: FlopsModel,
    kept: dict[int, list[int]],
    masks: list[torch.Tensor],
    flops_target: float,
    params_target: float | None = None,
    min_keep: int = 1,
    low: float = 0.99,
) -> dict[int, list[int]]:
    """Moves a hard plan onto ``low x target <= FLOPs <= target`` (and params <= their target).

    While over budget, removes the kept unit (channel, or block) with the smallest soft mask per
    FLOP saved; then, while under ``low x target``, adds back the dropped unit with the largest
    mask per FLOP cost that still fits. FLOPs are exact (the polynomial at integer widths); units
    of one group all cost the same, so each round evaluates one candidate per group, batched.
    """
    groups = fm.groups
    n = len(groups)
    keep_sets = [set(kept.get(g.id, range(g.size))) for g in groups]
    units = [g.blocks or [(c,) for c in range(g.size)] for g in groups]
    value = [{u: float(masks[i][list(u)].sum()) for u in units[i]} for i in range(n)]
    floor = [max(g.min_keep, min_keep) for g in groups]
    # Per group: kept units by ascending value (next to remove), dropped ones by descending value (next to add).
    kept_units = [sorted((u for u in units[i] if set(u) <= keep_sets[i]), key=value[i].get) for i in range(n)]
    dropped = [sorted((u for u in units[i] if not set(u) & keep_sets[i]), key=value[i].get, reverse=True)
               for i in range(n)]  # fmt: skip
    w = torch.tensor([float(len(s)) for s in keep_sets], dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    sizes = torch.tensor([float(len(u[0])) for u in units], dtype=torch.float64)

    def over(widths: torch.Tensor) -> torch.Tensor:
        bad = fm.flops(widths) > flops_target
        if params_target is not None:
            bad |= fm.params(widths) > params_target
        return bad

    while bool(over(w)):
        trials = w - eye * sizes[:, None]
        saved = float(fm.flops(w)) - fm.flops(trials)
        best, best_score = None, math.inf
        for i in range(n):
            if kept_units[i] and w[i] - sizes[i] >= floor[i]:
                score = value[i][kept_units[i][0]] / max(float(saved[i]), 1e-9)
                if score < best_score:
                    best, best_score = i, score
        if best is None:
            raise ValueError("cannot meet the budget: every group is at its minimum width")
        unit = kept_units[best].pop(0)
        keep_sets[best] -= set(unit)
        dropped[best].insert(0, unit)
        w = w - eye[best] * sizes[best]
    while float(fm.flops(w)) < low * flops_target:
        trials = w + eye * sizes[:, None]
        cost = fm.flops(trials) - float(fm.flops(w))
        fits = ~over(trials)
        best, best_score = None, -math.inf
        for i in range(n):
            if dropped[i] and bool(fits[i]):
                score = value[i][dropped[i][0]] / max(float(cost[i]), 1e-9)
                if score > best_score:
                    best, best_score = i, score
        if best is None:
            break  # nothing more fits: the granularity of the groups decides
        unit = dropped[best].pop(0)
        keep_sets[best] |= set(unit)
        w = w + eye[best] * sizes[best]
    return {g.id: sorted(keep_sets[i]) for i, g in enumerate(groups) if len(keep_sets[i]) < g.size}
