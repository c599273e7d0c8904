"""Fixed-ratio and one-shot baselines: plans under a FLOPs budget without a search.

Three allocations (how many channels each group keeps), each choosing channels inside a group by
an importance criterion (:mod:`.importance`; which channels):

* **uniform** (:func:`uniform_plan`): one keep fraction for every group, the largest that fits,
  found by bisection, then topped up evenly to the budget;
* **global** (:func:`global_plan`): scores normalised per group (divided by the group's mean),
  one threshold for the whole network, then topped up by the next-best units that fit;
* **EagleEye** (:func:`eagleeye_plan`, Li et al., ECCV 2020): random per-group keep ratios on
  the budget, L1 channels, each candidate's BN statistics recalibrated on held-out batches
  (adaptive BN), the best held-out accuracy wins.

A method name is ``<criterion>-uniform``, ``<criterion>-global`` or ``eagleeye``
(:func:`parse_method`), e.g. ``fpgm-uniform`` or ``l1-global``. Every plan function takes
``ignore`` (layers whose outputs stay), ``min_keep``, ``prune_streams`` (false: residual
streams stay whole, the budget's ``prune_streams``) and ``round_to`` (kept widths multiples of
it, or the full width; :class:`.granularity.Granularity`) as the search does.

Example:
    >>> plan = uniform_plan(model, (1, 3, 32, 32), flops_target=0.5 * count_flops(model))
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np
import torch
from torch import nn

from ..channels import ChannelGroup, ChannelPlan, FlopsModel, trace_channels
from ..errors import UserError
from ..train import evaluate, recalibrate_bn
from .granularity import Granularity, unit_width, whole_units
from .importance import get_importance, list_importance, score_groups
from .repair import check_feasible

__all__ = ["ALLOCATIONS", "baseline_plan", "eagleeye_plan", "global_plan", "list_methods", "parse_method",
           "uniform_plan"]  # fmt: skip

log = logging.getLogger("dais_search")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
ALLOCATIONS = ("uniform", "global")


def list_methods() -> list[str]:
    """Every baseline method name: each criterion with each allocation, and ``eagleeye``."""
    return [f"{c}-{a}" for a in ALLOCATIONS for c in list_importance()] + ["eagleeye"]


def parse_method(method: str) -> tuple[str, str]:
    """``"fpgm-uniform"`` -> ``("uniform", "fpgm")``; ``"eagleeye"`` -> ``("eagleeye", "l1")``.

    Raises:
        UserError: an unknown allocation or criterion; the message lists the methods.
    """
    if method == "eagleeye":
        return "eagleeye", "l1"
    criterion, _, allocation = method.rpartition("-")
    if allocation not in ALLOCATIONS or criterion not in list_importance():
        raise UserError(f"unknown baseline method {method!r}; choose one of {', '.join(list_methods())} "
                        "(<criterion>-<allocation>; register criteria with register_importance)")  # fmt: skip
    return allocation, criterion


def _setup(model: nn.Module, input_shape: Sequence[int], flops_target: float, ignore: Iterable[str],
           min_keep: int = 1, prune_streams: bool = True, round_to: int = 1):  # fmt: skip
    example = torch.zeros(tuple(input_shape), device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller has seen the blocked-op warnings already
        graph = trace_channels(model, example, tuple(ignore), streams=prune_streams)
    fm = FlopsModel(graph, model, example)
    check_feasible(fm, flops_target, None, min_keep, "the FLOPs target", round_to)
    return graph, fm, Granularity(fm.groups, min_keep, round_to)


def _select(groups: Sequence[ChannelGroup], counts: dict[int, int],
            scores: dict[int, torch.Tensor]) -> dict[int, list[int]]:  # fmt: skip
    """Per group, its ``counts`` highest-scoring channels (whole blocks); full groups left out."""
    return {g.id: whole_units(g, torch.argsort(scores[g.id], descending=True), counts[g.id])
            for g in groups if counts[g.id] < g.size}  # fmt: skip


def uniform_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    criterion: str = "l1",
    batches: Batches | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    min_keep: int = 1,
    prune_streams: bool = True,
    round_to: int = 1,
) -> ChannelPlan:
    """Keeps the same fraction of every prunable group, the largest whose FLOPs fit ``flops_target``,
    within a group the channels the ``criterion`` (see :mod:`.importance`) ranks highest; a data
    criterion scores on ``batches`` (at most ``max_batches``).

    Granularity (whole channels, whole blocks of grouped convs) leaves the shared ratio short of
    the target; the remainder is topped up one unit at a time, always in the group whose kept
    fraction is lowest among those whose next unit still fits, so the widths stay as uniform as
    the granularity allows (no group's kept fraction exceeds another's by more than one allowed step,
    unless the lower one's next step would overshoot the budget). Scores are only compared within
    a group: the criterion's scale differs from layer to layer.
    """
    get_importance(criterion)  # an unknown name fails before any work
    graph, fm, lattice = _setup(model, input_shape, flops_target, ignore, min_keep, prune_streams, round_to)
    groups = fm.groups

    def widths(ratio: float) -> dict[int, int]:
        return {g.id: lattice.down(g.id, int(ratio * g.size)) for g in groups}

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the shared ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(fm.flops(widths(mid))) <= flops_target else (lo, mid)
    counts = _top_up(fm, lattice, widths(lo), flops_target)
    scores = score_groups(model, graph, criterion, groups, batches, max_batches, seed)
    kept = _select(groups, counts, scores)
    return ChannelPlan.create(model, kept, input_shape, tuple(ignore), {"method": f"{criterion}-uniform"}, graph)


def _top_up(fm: FlopsModel, lattice: Granularity, counts: dict[int, int], flops_target: float) -> dict[int, int]:
    """Steps up the group with the lowest kept fraction whose next allowed width fits, until none fits."""
    counts = dict(counts)
    size = {g.id: g.size for g in fm.groups}
    full = {gid for gid in counts if counts[gid] >= size[gid]}
    while True:
        candidates = sorted((counts[gid] / size[gid], gid) for gid in counts if gid not in full)
        for _, gid in candidates:
            trial = dict(counts)
            trial[gid] = lattice.next_up(gid, counts[gid])
            if float(fm.flops(trial)) <= flops_target:
                counts = trial
                break
            full.add(gid)  # its next unit overshoots now and will only cost more later
        else:
            return counts
        if counts[gid] >= size[gid]:
            full.add(gid)


def global_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    criterion: str = "l1",
    batches: Batches | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    min_keep: int = 1,
    prune_streams: bool = True,
    round_to: int = 1,
) -> ChannelPlan:
    """Ranks the units (channels, or blocks of grouped convs) of all groups together by their
    criterion score divided by the mean score of their group, keeps the best ones down to the one
    threshold whose FLOPs fit ``flops_target``, then adds the next-best units that still fit.
    Every group keeps at least its minimum width (its best units)."""
    get_importance(criterion)
    graph, fm, lattice = _setup(model, input_shape, flops_target, ignore, min_keep, prune_streams, round_to)
    groups = fm.groups
    floors = lattice.floor()
    unit = {g.id: unit_width(g) for g in groups}
    scores = score_groups(model, graph, criterion, groups, batches, max_batches, seed)
    ranked = []  # (normalised score, group id, rank of the unit within its group), beyond each floor
    for g in groups:
        s = scores[g.id].double()
        s = s / s.mean() if float(s.mean()) > 0 else torch.zeros_like(s)
        units = g.blocks or [(c,) for c in range(g.size)]
        values = sorted((float(s[list(u)].mean()) for u in units), reverse=True)
        ranked += [(v, g.id, r) for r, v in enumerate(values) if r >= floors[g.id] // unit[g.id]]
    ranked.sort(key=lambda t: -t[0])

    def counts_of(k: int) -> dict[int, int]:
        """The widths of the top ``k`` units above the floors, each rounded down to an allowed width."""
        counts = dict(floors)
        for _, gid, _ in ranked[:k]:
            counts[gid] += unit[gid]
        return {gid: lattice.down(gid, n) for gid, n in counts.items()}

    lo, hi = 0, len(ranked)  # the largest k whose top-k units fit: FLOPs grow with k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if float(fm.flops(counts_of(mid))) <= flops_target else (lo, mid - 1)
    counts = counts_of(lo)
    for _, gid, _ in ranked[lo:]:  # the next-best units' groups step up while they fit, in score order
        nxt = lattice.next_up(gid, counts[gid])
        trial = {**counts, gid: nxt}
        if nxt is not None and float(fm.flops(trial)) <= flops_target:
            counts = trial
    kept = _select(groups, counts, scores)
    return ChannelPlan.create(model, kept, input_shape, tuple(ignore), {"method": f"{criterion}-global"}, graph)


def _random_counts(fm: FlopsModel, flops_target: float, rng: np.random.Generator, tolerance: float,
                   lattice: Granularity, low: float = 0.05) -> dict[int, int] | None:  # fmt: skip
    """One EagleEye candidate: per-group keep ratios drawn from U(low, 1), scaled by one factor so
    the FLOPs fit the target, then random units added while they fit; ``None`` when the result
    is not within ``tolerance`` below the target."""
    groups = fm.groups
    draw = {g.id: rng.uniform(low, 1.0) for g in groups}

    def widths(scale: float) -> dict[int, int]:
        return {g.id: lattice.nearest(g.id, min(1.0, scale * draw[g.id]) * g.size) for g in groups}

    lo, hi = 0.0, 1.0 / low
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(fm.flops(widths(mid))) <= flops_target else (lo, mid)
    counts = widths(lo)
    if float(fm.flops(counts)) > flops_target:
        return None
    open_ = [g for g in groups if counts[g.id] < g.size]
    while float(fm.flops(counts)) < (1 - tolerance) * flops_target and open_:
        g = open_[int(rng.integers(len(open_)))]
        nxt = lattice.next_up(g.id, counts[g.id])
        trial = {**counts, g.id: nxt}
        if nxt is None or float(fm.flops(trial)) > flops_target:
            open_.remove(g)
        else:
            counts = trial
    return counts if float(fm.flops(counts)) >= (1 - tolerance) * flops_target else None


def eagleeye_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    recalibrate: Batches,
    held_out: Batches,
    ignore: Iterable[str] = (),
    candidates: int = 50,
    recalibrate_batches: int = 50,
    eval_batches: int | None = None,
    criterion: str = "l1",
    seed: int = 0,
    tolerance: float = 0.005,
    min_keep: int = 1,
    prune_streams: bool = True,
    round_to: int = 1,
) -> ChannelPlan:
    """EagleEye: ``candidates`` random per-group keep-ratio vectors with FLOPs within ``tolerance``
    below ``flops_target``; each keeps its groups' top-``criterion`` channels, has its BN
    statistics re-estimated on ``recalibrate_batches`` batches of ``recalibrate`` (adaptive BN),
    and is scored by top-1 on ``held_out`` (at most ``eval_batches``; eval mode). The best wins;
    ``plan.meta["candidates"]`` records every candidate's FLOPs ratio, held-out accuracy and widths
    (kept channels per prunable group, in graph order).

    Raises:
        UserError: when no candidate can be drawn within the tolerance (a budget the granularity
            of the groups cannot meet that closely).
    """
    if candidates < 1:
        raise UserError(f"EagleEye needs at least 1 candidate, got {candidates}")
    graph, fm, lattice = _setup(model, input_shape, flops_target, ignore, min_keep, prune_streams, round_to)
    groups = fm.groups
    scores = score_groups(model, graph, criterion, groups, seed=seed)
    rng = np.random.default_rng(seed)
    scoring = list(islice(held_out, eval_batches))  # the same images for every candidate
    best, best_acc, records, tries = None, -math.inf, [], 0
    while len(records) < candidates:
        tries += 1
        if tries > 100 * candidates:
            raise UserError(f"EagleEye drew no candidate within {tolerance:.1%} below the FLOPs target in "
                            f"{tries - 1} tries; the groups are too coarse for it: raise the budget")  # fmt: skip
        counts = _random_counts(fm, flops_target, rng, tolerance, lattice)
        if counts is None:
            continue
        plan = ChannelPlan.create(model, _select(groups, counts, scores), input_shape, tuple(ignore),
                                  {"method": "eagleeye"}, graph)  # fmt: skip
        pruned = recalibrate_bn(plan.apply(model, graph), recalibrate, recalibrate_batches)
        acc = evaluate(pruned, scoring, progress=False)["top1"]
        records.append({"flops_ratio": plan.flops / fm.dense_flops, "held_out_top1": acc,
                        "widths": [counts[g.id] for g in groups]})  # fmt: skip
        log.info("eagleeye: candidate %d/%d, FLOPs %.4f of dense, held-out top-1 %.2f%%", len(records), candidates,
                 plan.flops / fm.dense_flops, acc)  # fmt: skip
        if acc > best_acc:
            best, best_acc = plan, acc
    best.meta.update(candidates=records, best=int(np.argmax([r["held_out_top1"] for r in records])))
    return best


def baseline_plan(
    method: str,
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    held_out: Batches | None = None,
    recalibrate: Batches | None = None,
    score_batches: int | None = None,
    candidates: int = 50,
    recalibrate_batches: int = 50,
    eval_batches: int | None = None,
    seed: int = 0,
    min_keep: int = 1,
    prune_streams: bool = True,
    round_to: int = 1,
) -> ChannelPlan:
    """The plan of baseline ``method`` (see :func:`parse_method`). ``held_out`` (plain batches)
    feeds data criteria and EagleEye's scoring, ``recalibrate`` (training-style batches)
    EagleEye's adaptive BN."""
    allocation, criterion = parse_method(method)
    if allocation == "eagleeye":
        if held_out is None or recalibrate is None:
            raise UserError("eagleeye scores its candidates on held-out batches; give held_out and recalibrate")
        return eagleeye_plan(model, input_shape, flops_target, recalibrate, held_out, ignore, candidates,
                             recalibrate_batches, eval_batches, criterion, seed, min_keep=min_keep,
                             prune_streams=prune_streams, round_to=round_to)  # fmt: skip
    make = uniform_plan if allocation == "uniform" else global_plan
    return make(model, input_shape, flops_target, ignore, criterion, held_out, score_batches, seed, min_keep,
                prune_streams, round_to)  # fmt: skip
