"""Budget repair: a hard plan moved onto ``0.99 x target <= FLOPs <= target`` (and under any ceiling:
params, predicted latency) by allowed steps; and
:func:`check_feasible`, which says before any work whether a budget can be met at all.

Binarising soft masks (or rounding a shared keep ratio) leaves a plan somewhat off the budget.
:func:`repair` steps the group whose next allowed width down (:class:`.granularity.Granularity`:
whole blocks, ``min_keep``, multiples of ``round_to``) drops the least soft-mask value per FLOP
saved while over the target, then steps up the group whose next allowed width adds the most value
per FLOP cost while under 0.99 x target and it fits. FLOPs are exact: the
:class:`~dais_search.channels.FlopsModel` at integer widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..channels import FlopsModel
from ..errors import UserError
from .granularity import Granularity

__all__ = ["check_feasible", "floor_widths", "repair"]


def floor_widths(fm: FlopsModel, min_keep: int = 1, round_to: int = 1) -> dict[int, int]:
    """The fewest channels each prunable group may keep: its own minimum and ``min_keep``, rounded
    up to whole units (blocks of grouped convs) and to multiples of ``round_to`` (or the full width)."""
    return Granularity(fm.groups, min_keep, round_to).floor()


def check_feasible(fm: FlopsModel, flops_target: float, params_target: float | None = None, min_keep: int = 1,
                   what: str = "the budget", round_to: int = 1,
                   blocks: torch.Tensor | None = None) -> None:  # fmt: skip
    """Raises a :class:`UserError` naming the problem and the fix when no plan can meet the budget:
    ``min_keep`` above a group's size, a FLOPs (or params) target below what the minimum widths
    cost, or a target at or above the dense model's (nothing to prune). ``what`` names the budget
    in the message (e.g. ``'budget.flops = "1%"'``); ``blocks``: the residual blocks' values at the
    least the search may reach (all removed, for a block search), as in :meth:`FlopsModel.flops`."""
    for g in fm.groups:
        if min_keep > g.size:
            raise UserError(f"budget.min_keep = {min_keep} is more than group {g.id} ({g.name}) has: {g.size} "
                            f"channels; lower budget.min_keep to at most {min(x.size for x in fm.groups)}")  # fmt: skip
    dense = fm.dense_flops
    if flops_target >= dense:
        raise UserError(f"{what} asks for {flops_target:,.0f} FLOPs, at or above the dense model's {dense:,}: "
                        'nothing to prune; give less, e.g. "50%"')  # fmt: skip
    floor = floor_widths(fm, min_keep, round_to)
    least = float(fm.flops(floor, blocks))
    if least > flops_target:
        raise UserError(f"{what} asks for {flops_target:,.0f} FLOPs ({flops_target / dense:.1%} of dense), but the "
                        f"model has {least:,.0f} ({least / dense:.1%}) with every prunable group at its minimum "
                        f"width (min_keep = {min_keep}, round_to = {round_to}; unprunable layers keep their cost): "
                        "raise it to at least "
                        f'"{100 * least / dense + 0.05:.1f}%"')  # fmt: skip
    if params_target is not None and float(fm.params(floor, blocks)) > params_target:
        raise UserError(f"budget.params asks for {params_target:,.0f} parameters, but the model has "
                        f"{float(fm.params(floor, blocks)):,.0f} at the minimum widths; "
                        "raise budget.params")  # fmt: skip


def repair(
    fm: FlopsModel,
    kept: dict[int, list[int]],
    masks: list[torch.Tensor],
    flops_target: float,
    params_target: float | None = None,
    min_keep: int = 1,
    low: float = 0.99,
    round_to: int = 1,
    cost: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ceilings: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], float]] = (),
) -> dict[int, list[int]]:
    """Moves a hard plan onto ``low x target <= cost <= target``, with params <= their target and
    every ``(cost_j, ceiling_j)`` of ``ceilings`` (e.g. predicted latency) at or under its ceiling.

    While over any of them, steps the group whose next allowed width down removes the least
    soft-mask value (its lowest-valued kept units) per unit saved of the most violated one
    (cost / limit largest), so a binding latency ceiling picks the steps that save time, not
    FLOPs. Then, while under ``low x target``, steps up the group whose next allowed width adds
    the most value (its best dropped units) per unit of cost, among the steps that still fit all
    limits; where a ceiling binds, the cost may end under ``low x target``. The cost is
    ``cost(widths)`` (a (G,) or (B, G) tensor of widths in ``fm.groups`` order; default: exact
    FLOPs, ``fm.flops``) and ``flops_target`` its target; each round evaluates one candidate step
    per group, batched. Allowed widths: :class:`.granularity.Granularity` (``min_keep``,
    ``round_to``, whole blocks); a group whose start is not one of them first moves to the nearest
    one (by value, as above).
    """
    cost = cost or fm.flops
    limits = [(cost, flops_target), *([(fm.params, params_target)] if params_target is not None else []),
              *ceilings]  # fmt: skip
    groups = fm.groups
    n = len(groups)
    lattice = Granularity(groups, min_keep, round_to)
    keep_sets = [set(kept.get(g.id, range(g.size))) for g in groups]
    units = [g.blocks or [(c,) for c in range(g.size)] for g in groups]
    unit = [len(u[0]) for u in units]
    value = [{u: float(masks[i][list(u)].sum()) for u in units[i]} for i in range(n)]
    # Per group: kept units by ascending value (next to remove), dropped ones by descending value (next to add).
    kept_units = [sorted((u for u in units[i] if set(u) <= keep_sets[i]), key=value[i].get) for i in range(n)]
    dropped = [sorted((u for u in units[i] if not set(u) & keep_sets[i]), key=value[i].get, reverse=True)
               for i in range(n)]  # fmt: skip
    for i, g in enumerate(groups):  # a start off the lattice moves to the nearest allowed width first
        have = len(keep_sets[i])
        snap = lattice.nearest(g.id, have)
        if snap < have:
            moved = kept_units[i][: (have - snap) // unit[i]]
            del kept_units[i][: len(moved)]
            keep_sets[i] -= {c for u in moved for c in u}
            dropped[i][:0] = moved[::-1]
        elif snap > have:
            moved = dropped[i][: (snap - have) // unit[i]]
            del dropped[i][: len(moved)]
            keep_sets[i] |= {c for u in moved for c in u}
            kept_units[i][:0] = moved[::-1]
    w = torch.tensor([float(len(s)) for s in keep_sets], dtype=torch.float64)

    def steps(direction: str) -> list[int]:
        """Per group, channels its next allowed width down (or up) moves; 0 where there is none."""
        out = []
        for i, g in enumerate(groups):
            nxt = (lattice.next_down if direction == "down" else lattice.next_up)(g.id, int(w[i]))
            out.append(abs(int(w[i]) - nxt) if nxt is not None else 0)
        return out

    def over(widths: torch.Tensor) -> torch.Tensor:
        bad = torch.zeros(widths.shape[:-1], dtype=torch.bool)
        for fn, limit in limits:
            bad |= fn(widths) > limit
        return bad

    while bool(over(w)):
        delta = torch.tensor(steps("down"), dtype=torch.float64)
        binding, _ = max(limits, key=lambda f: float(f[0](w)) / f[1])  # the most violated: its savings count
        saved = float(binding(w)) - binding(w - torch.diag(delta))
        best, best_score = None, math.inf
        for i in range(n):
            if delta[i] > 0:
                score = sum(value[i][u] for u in kept_units[i][: int(delta[i]) // unit[i]])
                score /= max(float(saved[i]), 1e-9)
                if score < best_score:
                    best, best_score = i, score
        if best is None:
            raise ValueError("cannot meet the budget: every group is at its minimum width")
        moved = kept_units[best][: int(delta[best]) // unit[best]]
        del kept_units[best][: len(moved)]
        for u in moved:
            keep_sets[best] -= set(u)
        dropped[best][:0] = moved[::-1]
        w[best] -= delta[best]
    while float(cost(w)) < low * flops_target:
        delta = torch.tensor(steps("up"), dtype=torch.float64)
        trials = w + torch.diag(delta)
        added = cost(trials) - float(cost(w))
        fits = ~over(trials)
        best, best_score = None, -math.inf
        for i in range(n):
            if delta[i] > 0 and bool(fits[i]):
                score = sum(value[i][u] for u in dropped[i][: int(delta[i]) // unit[i]])
                score /= max(float(added[i]), 1e-9)
                if score > best_score:
                    best, best_score = i, score
        if best is None:
            break  # nothing more fits: the granularity of the groups decides
        moved = dropped[best][: int(delta[best]) // unit[best]]
        del dropped[best][: len(moved)]
        for u in moved:
            keep_sets[best] |= set(u)
        w[best] += delta[best]
    return {g.id: sorted(keep_sets[i]) for i, g in enumerate(groups) if len(keep_sets[i]) < g.size}
