"""Fixed-ratio baselines: the same kept fraction in every prunable group, channels by a score.

Example:
    >>> plan = uniform_plan(model, (1, 3, 32, 32), flops_target=0.5 * count_flops(model))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .flops import FlopsModel
from .graph import ChannelGroup, trace_channels
from .plan import ChannelPlan

__all__ = ["l1_scores", "uniform_plan"]


def l1_scores(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of each channel's producing filters, summed over the group's producers."""
    score = torch.zeros(group.size)
    for member in group.producers:
        weight = model.get_submodule(member.name).weight.detach().float().cpu()
        norms = weight.abs().flatten(1).sum(1)
        score.index_add_(0, torch.tensor(member.classes), norms[list(member.positions)])
    return score


def uniform_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    score=l1_scores,
) -> ChannelPlan:
    """Keeps the same fraction of every prunable group, the largest whose FLOPs fit ``flops_target``,
    within a group the channels with the highest ``score(model, group)``; then adds back single
    channels (best score per FLOP) while they fit, to end within 1% of the target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller has seen the blocked-op warnings already
        graph = trace_channels(model, torch.zeros(tuple(input_shape)), tuple(ignore))
    fm = FlopsModel(graph, model, torch.zeros(tuple(input_shape)))

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
    kept = {}
    for g in fm.groups:
        order = torch.argsort(score(model, g), descending=True)
        n = widths(lo)[g.id]
        if g.blocks:
            block_of = {c: b for b in g.blocks for c in b}
            chosen: list[int] = []
            for c in order.tolist():
                if c not in chosen:
                    chosen += list(block_of[c])
                if len(chosen) >= n:
                    break
            kept[g.id] = sorted(chosen)
        else:
            kept[g.id] = sorted(order[:n].tolist())
    # Granularity leaves the shared ratio short of the target: top up with the best channels per FLOP.
    from .search import repair

    masks = []
    for g in fm.groups:
        s = score(model, g)
        masks.append(s / s.max().clamp(min=1e-12))
    kept = repair(fm, kept, masks, flops_target)
    return ChannelPlan.create(model, kept, input_shape, tuple(ignore), {"method": "uniform-l1"}, graph)
