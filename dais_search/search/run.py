"""The search stage as one library call: your model and loaders in, a plan and a pruned model out.

:func:`search` runs the :class:`~.searcher.Searcher` for ``budget.search.epochs`` epochs over any
iterables of ``(x, y)`` batches (plain ``torch.utils.data.DataLoader``\\ s, or our loaders),
binarises onto the budget, slices the model and recalibrates its BN statistics. The command line
(``dais-search search``) is this function plus data loading, files and a report.

Example:
    >>> budget = Budget(budget=BudgetSpec(flops="50%"), search=SearchSpec(epochs=2))
    >>> result = search(model, budget, train_loader, held_out_loader, torch.zeros(1, 3, 32, 32))
    >>> result.plan.save("runs/mine/plan.json"); result.pruned   # a plain, smaller nn.Module
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..budget import Budget, check_budget
from ..channels import ChannelPlan
from ..checkpoint import get_rng_state, set_rng_state, stop_requests
from ..distributed import broadcast_state, is_main
from ..errors import DivergedError, UserError
from ..files import atomic_torch_save
from ..train import as_input, recalibrate_bn, time_train_steps
from .monitoring import SearchMonitor
from .schedules import get_schedule
from .searcher import Searcher, SearchInterrupted

__all__ = ["SearchResult", "search"]

log = logging.getLogger("dais_search")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SearchResult:
    """What :func:`search` returns.

    Attributes:
        plan: the binarised plan (kept channels per group, FLOPs, the budget in ``meta.target_flops``).
        pruned: the model the plan slices to, with the searched weights and recalibrated BN.
        metrics: FLOPs against the target, binarisation gap, timings and the per-epoch history.
    """

    plan: ChannelPlan
    pruned: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)


def search(
    model: nn.Module,
    budget: Budget,
    train_loader: Batches,
    held_out_loader: Batches,
    example_input: torch.Tensor,
    *,
    log_dir: str | os.PathLike | None = None,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Searches which channels of ``model`` to keep under ``budget`` (DAIS + DSA, bi-level).

    Weights take SGD steps on ``train_loader``'s batches, indicators and keep ratios Adam steps
    on ``held_out_loader``'s (see :mod:`.searcher`); ``budget.search`` sets epochs, learning
    rates, temperatures and the mode, ``budget.budget`` the FLOPs target (the ``model``,
    ``data`` and ``finetune`` sections are not used here).

    Args:
        model: the trained dense model, on the device to search on. Its weights are trained in
            place: pass a copy to keep the dense one.
        budget: a :class:`~dais_search.budget.Budget` from :func:`~dais_search.budget.load_budget`
            or built in Python.
        train_loader, held_out_loader: iterables of ``(images, labels)`` batches with ``len()``;
            one pass over ``train_loader`` is an epoch (or ``search.max_steps`` batches of it).
        example_input: an input of the shape the budget is measured at (batch 1).
        log_dir: write TensorBoard events there (curves of the temperature, FLOPs / target, multiplier,
            losses, binarisation gap and every group's keep ratio; mask histograms and heatmaps; the final
            plan: :mod:`.monitoring`) and the indicator snapshots ``dais-search plot`` draws.
        state_path: save the search state there after every epoch and every ``search.checkpoint_every``
            weight steps (and on SIGTERM / SIGINT, which then stop the search with a hint to resume);
            with ``resume`` continue from it exactly (mid-epoch too: model, optimizers, gates,
            multipliers, RNG states and the loaders' position).
        progress: show progress bars.

    Returns:
        The plan, the pruned and BN-recalibrated model, and the metrics.

    Raises:
        UserError: an invalid budget, or ``resume`` without a saved state.
    """
    budget = check_budget(budget)
    spec = budget.search
    get_schedule(spec.temperature_schedule)  # an unknown schedule fails here, not after the first epoch
    if resume and (state_path is None or not os.path.isfile(state_path)):
        raise UserError(f"resume: no search state at {state_path}; start without resume")
    torch.manual_seed(spec.seed)
    example_input = as_input(example_input, model)
    dense = copy.deepcopy(model)  # the dense weights, for timing dense steps at the end
    steps = len(train_loader) if not spec.max_steps else min(spec.max_steps, len(train_loader))
    gate_every = spec.gate_every or max(1, len(train_loader) // max(1, len(held_out_loader)))
    searcher = Searcher(model, budget, example_input, steps)

    history: list[dict[str, Any]] = []
    start_epoch, position = 0, None
    if resume:
        state = torch.load(state_path, map_location=example_input.device, weights_only=False)
        model.load_state_dict(state["model"])
        searcher.load_state_dict(state["searcher"])
        start_epoch, history, position = state["epoch"], state["history"], state.get("position")
        if "rng" in state:
            set_rng_state(state["rng"])
    # Our BatchLoader counts passes: put it where an uninterrupted run would be at the start of the
    # epoch, so that it shuffles and augments the same (the held-out split is passed over again when
    # gate_every asks for more gate steps than it has batches); a mid-epoch resume then replays the
    # batches already done without computing on them.
    held_passes = max(1, math.ceil((steps // gate_every) / max(1, len(held_out_loader))))
    for loader, passes in ((train_loader, 1), (held_out_loader, held_passes)):
        if resume and hasattr(loader, "epoch"):
            loader.epoch = start_epoch * passes

    last_saved: list[str] = []  # where the state on disk stands, for messages
    if resume:
        last_saved.append(f"epoch {start_epoch + 1}, after step {position['step']}" if position
                          else f"after epoch {start_epoch}")  # fmt: skip

    def save(epoch_done: int, position: dict | None = None) -> None:
        if state_path is not None:
            last_saved[:] = [f"epoch {epoch_done + 1}, after step {position['step']}" if position
                             else f"after epoch {epoch_done}"]  # fmt: skip
            state = {"model": model.state_dict(), "searcher": searcher.state_dict(), "epoch": epoch_done,
                     "position": position, "history": history, "rng": get_rng_state()}
            atomic_torch_save(state, state_path)

    monitor = None
    if log_dir is not None and is_main():  # torchrun: rank 0 logs
        monitor = SearchMonitor(log_dir, searcher, steps * spec.epochs, budget.monitor,
                                resume_step=searcher.step if resume else None)  # fmt: skip
    with stop_requests() as stop:
        for epoch in range(start_epoch, spec.epochs):
            start_step, totals = (position["step"], position["totals"]) if position else (0, None)
            position = None
            try:
                stats = searcher.run_epoch(epoch, train_loader, held_out_loader, gate_every, spec.max_steps, progress,
                                           monitor, start_step, totals,
                                           lambda step, totals, e=epoch: save(e, {"step": step, "totals": totals}),
                                           spec.checkpoint_every if state_path is not None else 0, stop)  # fmt: skip
            except DivergedError as exc:
                last = (f"the last good state is {state_path} ({last_saved[0]})" if last_saved
                        else "no search state was written")  # fmt: skip
                raise DivergedError(f"{exc} (epoch {epoch + 1}/{spec.epochs}); {last}. Lower search.weight_lr or "
                                    "search.gate_lr and search again") from None  # fmt: skip
            except SearchInterrupted as exc:
                raise _interrupted(exc.epoch, exc.step, state_path) from None
            masks = [m.detach() for m in searcher.gates()]
            stats["binarization_gap"] = searcher.gates.binarization_gap(masks)
            stats[f"{searcher.cost_name}_ratio"] = (
                float(searcher.soft_cost(searcher.gates.expected_width(masks))) / searcher.cost_target
            )
            history.append(stats)
            if monitor is not None:
                monitor.epoch(searcher, stats)
            save(epoch + 1)
            log.info("search epoch %d/%d: %s", epoch + 1, spec.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if isinstance(v, float)))  # fmt: skip
            if stop() and epoch + 1 < spec.epochs:
                raise _interrupted(epoch + 1, 0, state_path)

    plan = searcher.binarize()
    pruned = recalibrate_bn(plan.apply(model), train_loader, spec.recalibrate_batches)
    broadcast_state(pruned)  # torchrun: each process recalibrated on its own batches; rank 0's statistics for all
    dense_step = _time_dense_steps(dense, train_loader, min(20, steps))
    for h in history:
        h["dense_epoch_seconds"] = dense_step * steps
        h["search_over_dense_epoch"] = h["seconds"] / max(dense_step * steps, 1e-9)
    if monitor is not None:
        monitor.close(searcher, plan)
    metrics = {
        "mode": spec.mode,
        "weight_epochs": spec.epochs if spec.train_weights else 0,  # what BENCH.md's equal-total-epochs rule counts
        "dense_flops": plan.dense_flops,
        "target_flops": searcher.flops_target,  # None under a latency budget
        "flops": plan.flops,
        "flops_over_target": plan.flops / searcher.flops_target if searcher.flops_target else None,
        **({"removed_blocks": list(plan.removed_blocks), "searched_blocks": len(searcher.blocks)}
           if searcher.blocks else {}),
        **({"latency": plan.meta["latency"]} if "latency" in plan.meta else {}),
        "params": plan.params,
        "dense_params": plan.dense_params,
        "binarization_gap": history[-1]["binarization_gap"] if history else None,
        "search_seconds": sum(h["seconds"] for h in history),
        "dense_epoch_seconds": dense_step * steps,
        "search_epoch_over_dense_epoch": [h["search_over_dense_epoch"] for h in history],
        "history": history,
    }
    return SearchResult(plan, pruned, metrics)


def _interrupted(epoch: int, step: int, state_path) -> UserError:
    where = f"epoch {epoch + 1}, after step {step}" if step else f"after epoch {epoch}"
    if state_path is None:
        return UserError(f"search interrupted ({where}); no state_path was given, so nothing was saved")
    return UserError(f"search interrupted ({where}); its state is saved in {state_path}: continue it with "
                     "--resume (the same command, plus --resume)")


def _time_dense_steps(dense: nn.Module, loader: Batches, steps: int) -> float:
    """Seconds per plain training step of the dense model (trained by the timing: a copy).

    Timed after the search, so that it cannot shift the search's data order; our loaders' pass
    counter is put back, so that what reads them next sees the same batches as without it.
    """
    epoch = getattr(loader, "epoch", None)
    seconds = time_train_steps(dense, loader, steps)
    if epoch is not None:
        loader.epoch = epoch
    return seconds
