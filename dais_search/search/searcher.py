"""The search: bi-level DAIS + DSA under a FLOPs budget, then binarisation onto the budget.

Weights take SGD steps on the train split; indicators and keep ratios take Adam steps on the
held-out split (first order, DARTS style), ``gate_every`` weight steps per gate step, one
iterator per split per epoch. With ``search.train_weights = false`` the weights stay the
teacher's and the train split only paces the schedule: the search then costs gate steps but no
weight epochs. The gate loss is the held-out task loss plus an augmented
Lagrangian on the relative FLOPs error ``r = F(w) / F_target - 1`` of the soft widths ``w``
(differentiable :class:`~dais_search.channels.FlopsModel`); the held-out iterator restarts when
``gate_every`` asks for more gate steps than it has batches::

    L_gate = CE + lambda * r + rho / 2 * r^2,      lambda <- lambda + rho * r   (after each gate step)

so the soft network converges onto the budget instead of being pushed by a fixed penalty
weight (an optional parameter budget adds a second, one-sided term, and so does a latency
ceiling: ``budget.latency`` given beside ``budget.flops``). The temperature stays at
``temperature_start`` for the first ``warmup`` fraction of the search (indicators and keep ratios
learn while the masks are still soft), then anneals to ``temperature_end`` over the rest.

At the end each group keeps its top channels by indicator (as many as ``alpha > 0`` in ``dais``
mode, the expected width otherwise, rounded to the nearest allowed width: whole blocks,
``min_keep``, multiples of ``[budget] round_to``); then the *hard* network is repaired onto
``0.99 x target <= FLOPs <= target`` by stepping the group whose next allowed width down loses the
least soft-mask value per FLOP saved, and stepping up the one that gains the most per FLOP cost
while it fits; BN statistics are recalibrated on training batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..budget import Budget
from ..channels import ChannelGraph, ChannelPlan, FlopsModel, LatencyModel, trace_channels
from ..channels.blocks import ResidualBlock, find_blocks
from ..channels.chain import find_chain_layers
from ..cost.lut import LatencyCache
from ..distributed import all_reduce_sum, average_gradients, broadcast_object, broadcast_state, is_main
from ..errors import DivergedError, UserError
from ..train import (
    autocast,
    classification_loss,
    cosine_schedule,
    finite_step,
    make_sgd,
    set_channels_last,
    to_model,
    train_step,
)
from .gates import ChannelGates, attach_gates
from .granularity import Granularity, whole_units
from .importance import log_importance
from .repair import check_feasible, repair
from .schedules import temperature_at

__all__ = ["SearchInterrupted", "Searcher", "StepStats"]

log = logging.getLogger("dais_search")
BLOCK_KEEP = 0.95  # the soft keep value a searched residual block starts at


@dataclass
class StepStats:
    """Loss, correct predictions and batch size of one weight step."""

    loss: float
    correct: int
    seen: int


class Searcher:
    """Owns the gated model, the two optimizers, the multiplier and the schedules.

    Args:
        model: the dense model (its weights are trained in place).
        budget: the parsed budget.
        example_input: an input of the shape the budget is measured at (batch 1).
        steps_per_epoch: weight steps in one epoch (for the schedules).
    """

    def __init__(self, model: nn.Module, budget: Budget, example_input: torch.Tensor, steps_per_epoch: int) -> None:
        self.model, self.budget = model, budget
        self.input_shape = tuple(example_input.shape)
        spec = budget.search
        if spec.channels_last:
            set_channels_last(model)
        self.graph: ChannelGraph = trace_channels(model, example_input, budget.budget.ignore,
                                                  streams=budget.budget.prune_streams)
        self.blocks = _searched_blocks(model, self.graph, budget) if set(spec.granularity) - {"channel"} else []
        self.flops_model = FlopsModel(self.graph, model, example_input, self.blocks)
        self.groups = self.flops_model.groups
        if not self.groups:
            raise ValueError("the model has no prunable channel group; nothing to search")
        self.params_target = budget.params_target(self.flops_model.dense_params)
        self.lattice = Granularity(self.groups, budget.budget.min_keep, budget.budget.round_to)
        self.latency_model: LatencyModel | None = None
        self.latency_ceiling: float | None = None  # seconds: budget.latency beside budget.flops
        if budget.latency_role != "target":
            self.cost_name, self.cost = "flops", self.flops_model.flops
            self.flops_target = self.cost_target = budget.flops_target(self.flops_model.dense_flops)
            check_feasible(self.flops_model, self.flops_target, self.params_target, budget.budget.min_keep,
                           f"budget.flops = {_toml(budget.budget.flops)}", budget.budget.round_to,
                           torch.zeros(len(self.blocks)) if self.blocks else None)  # fmt: skip
        if budget.latency_role:
            self.latency_model = _latency_model(self.graph, model, example_input, budget)
            seconds = budget.latency_target(self.latency_model.dense_seconds)
            _check_latency_feasible(self.latency_model, self.lattice, seconds, budget)
            if budget.latency_role == "target":
                self.cost_name, self.cost, self.flops_target = "latency", self.latency_model.latency, None
                self.cost_target = seconds
            else:
                self.latency_ceiling = seconds
        criterion = "bn" if spec.mode == "dsa" else "l1"  # DSA ranks by BN scale, DAIS starts from filter norms
        start_cost = self.cost  # the soft cost at the blocks' start value, so the search starts on the budget
        if self.blocks:
            start_cost = lambda w: self.flops_model.flops(w, torch.full((len(self.blocks),), BLOCK_KEEP))  # noqa: E731
        start_keep = _uniform_keep(start_cost, self.flops_model.full_widths(), self.cost_target)
        scores = [log_importance(criterion, model, g) for g in self.groups]
        self.gates = ChannelGates(self.groups, spec.mode, scores, start_keep, spec.temperature_start, len(self.blocks),
                                  BLOCK_KEEP)  # fmt: skip
        self.gates.to(example_input.device)
        self.gated = attach_gates(model, self.graph, self.gates, self.blocks)
        self._weight_masks: list[torch.Tensor] | None = None  # the gates' masks, cached between gate steps
        self.weight_params = [p for p in model.parameters() if p.requires_grad]
        self.gate_params = list(self.gates.parameters())
        self.w_opt = make_sgd(model, spec.weight_lr, spec.momentum, spec.weight_decay)
        self.w_sched = cosine_schedule(self.w_opt, spec.epochs * steps_per_epoch)
        self.g_opt = torch.optim.Adam(self.gate_params, lr=spec.gate_lr, betas=(0.5, 0.999),
                                      weight_decay=spec.gate_weight_decay)  # fmt: skip
        self.lam = 0.0
        self.lam_params = 0.0
        self.lam_latency = 0.0  # the latency ceiling's multiplier (one-sided, as the params one)
        self.total_steps = spec.epochs * steps_per_epoch
        self.step = 0
        lm = self.latency_model
        measured = f" (dense {1e3 * lm.dense_seconds:.2f} ms at batch {lm.batch_size}, measured)" if lm else ""
        target = (f"latency target {1e3 * self.cost_target:.2f} ms{measured}" if self.cost_name == "latency" else
                  f"FLOPs target {self.cost_target:.0f} (dense {self.flops_model.dense_flops})"
                  + (f", latency ceiling {1e3 * self.latency_ceiling:.2f} ms{measured}" if self.latency_ceiling
                     else ""))  # fmt: skip
        log.info("search: %d prunable groups (%d channels), %d weight / %d gate tensors; %s", len(self.groups),
                 sum(g.size for g in self.groups), len(self.weight_params), len(self.gate_params), target)  # fmt: skip

    # -- steps ---------------------------------------------------------------------------------
    def _set_trainable(self, weights: bool) -> None:
        # Only the side being stepped gets gradients: halves the backward work of each step.
        for p in self.weight_params:
            p.requires_grad_(weights)
        for p in self.gate_params:
            p.requires_grad_(not weights)

    def set_progress(self, progress: float) -> float:
        spec = self.budget.search
        annealed = max(0.0, progress - spec.warmup) / (1.0 - spec.warmup)
        t = temperature_at(annealed, spec.temperature_start, spec.temperature_end, spec.temperature_schedule)
        self.gates.temperature.fill_(t)
        return t

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> StepStats:
        """One SGD step of the weights on a train batch (gates fixed).

        The gates do not move between gate steps, so their masks are computed once after each
        gate step (at that step's temperature) and reused: no allocation solve per weight step.
        """
        self._set_trainable(weights=True)
        self.gated.train()
        x, y = to_model(x, y, self.model)
        if self._weight_masks is None:
            with torch.no_grad():
                self._weight_masks = self.gates()
        self.gates.fixed_masks = self._weight_masks
        try:
            out = train_step(self.gated, x, y, self.w_opt, self.w_sched, precision=self.budget.search.precision)
        finally:
            self.gates.fixed_masks = None
        if not bool(finite_step(out["loss"], self.w_opt)):
            raise DivergedError(f"search: the loss or a weight gradient was NaN or infinite at weight step "
                                f"{self.step + 1}")  # fmt: skip
        self.step += 1
        return StepStats(float(out["loss"].detach()), int((out["output"].detach().argmax(1) == y).sum()), len(y))

    def soft_cost(self, widths: torch.Tensor) -> torch.Tensor:
        """The budgeted cost at soft ``widths`` and the blocks' current soft masks."""
        if self.blocks:
            return self.flops_model.flops(widths, self.gates.block_masks())
        return self.cost(widths)

    def budget_terms(
        self, masks: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(penalty, relative error of the budgeted cost (FLOPs or latency), relative params excess,
        relative excess over the latency ceiling) of the soft widths; the last two ``None`` where
        the budget has no such ceiling."""
        widths = self.gates.expected_width(masks)
        rho = self.budget.search.rho
        r = self.soft_cost(widths) / self.cost_target - 1
        penalty = self.lam * r + rho / 2 * r**2
        rp = rl = None
        if self.params_target is not None:
            rp = self.flops_model.params(widths, self.gates.block_masks()) / self.params_target - 1
            penalty = penalty + self.lam_params * rp + rho / 2 * F.relu(rp) ** 2
        if self.latency_ceiling is not None:
            rl = self.latency_model.latency(widths) / self.latency_ceiling - 1
            penalty = penalty + self.lam_latency * rl + rho / 2 * F.relu(rl) ** 2
        return penalty, r, rp, rl

    def gate_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One Adam step of indicators and keep ratios on a held-out batch, then the dual update."""
        self._set_trainable(weights=False)
        self.gated.train()
        x, y = to_model(x, y, self.model)
        masks = self.gates()
        with autocast(x.device, self.budget.search.precision):
            task, out = classification_loss(self._forward_with(x, masks), y)
        task = task.float()
        penalty, r, rp, rl = self.budget_terms(masks)
        loss = task + penalty.to(task.dtype)
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.gate_params)  # torchrun: every process takes the same gate step
        if not bool(finite_step(loss, self.g_opt)):
            raise DivergedError(f"search: the held-out loss or an indicator gradient was NaN or infinite at the gate "
                                f"step after weight step {self.step}")  # fmt: skip
        self.g_opt.step()
        rho = self.budget.search.rho
        self.lam += rho * float(r.detach())
        if rp is not None:
            self.lam_params = max(0.0, self.lam_params + rho * float(rp.detach()))
        if rl is not None:
            self.lam_latency = max(0.0, self.lam_latency + rho * float(rl.detach()))
        self._set_trainable(weights=True)
        self._weight_masks = None  # the gates moved
        return {"val_loss": float(task.detach()), "val_correct": int((out.detach().argmax(1) == y).sum()),
                "val_seen": len(y), f"{self.cost_name}_ratio": float(r.detach()) + 1,
                **({"latency_ceiling_ratio": float(rl.detach()) + 1} if rl is not None else {})}  # fmt: skip

    def _forward_with(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        # The penalty and the forward pass must use the same masks (one allocation solve per step).
        self.gates.fixed_masks = masks
        try:
            return self.gated(x)
        finally:
            self.gates.fixed_masks = None

    # -- an epoch -------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, train_loader: Iterable, val_loader: Iterable, gate_every: int,
                  max_steps: int = 0, progress: bool = True, on_step=None, start_step: int = 0,
                  totals: dict | None = None, checkpoint=None, checkpoint_every: int = 0,
                  should_stop=None) -> dict[str, float]:  # fmt: skip
        """One pass over the train split with a gate step every ``gate_every`` weight steps.

        ``on_step(searcher, weight_stats, gate_stats, temperature, progress)`` is called after every
        weight step (``weight_stats`` is ``None`` when the weights are frozen, ``gate_stats`` when no
        gate step was taken). Resuming mid-epoch: the batches before ``start_step`` are drawn from
        both loaders again (so that shuffling and augmentation continue exactly where they stopped)
        but not computed on, and ``totals`` (from a checkpoint) carries the pass's running sums.
        ``checkpoint(step, totals)`` is called every ``checkpoint_every`` steps and, when
        ``should_stop()`` turns true (a signal), once more before :class:`SearchInterrupted` is raised.
        """
        spec = self.budget.search
        steps = len(train_loader) if not max_steps else min(max_steps, len(train_loader))
        val_iter = iter(val_loader)
        zero = {"loss": 0.0, "correct": 0, "seen": 0, "val_loss": 0.0, "val_correct": 0, "val_seen": 0,
                "gate_steps": 0, "seconds": 0.0}  # fmt: skip
        totals = dict(totals) if totals else zero
        start = time.perf_counter() - totals["seconds"]
        bar = tqdm(total=steps, initial=start_step, desc=f"search {epoch + 1}/{spec.epochs}", leave=False,
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        for i, (x, y) in enumerate(train_loader):
            if i >= steps:
                break
            gate_now = (i + 1) % gate_every == 0
            if gate_now:
                batch = next(val_iter, None)
                if batch is None:  # more gate steps than held-out batches: another pass
                    val_iter = iter(val_loader)
                    batch = next(val_iter, None)
            if i < start_step:  # done before the interruption: only the loaders move on
                continue
            progress_now = (epoch * steps + i) / max(1, spec.epochs * steps - 1)
            t = self.set_progress(progress_now)
            s = g = None
            if spec.train_weights:
                s = self.weight_step(x, y)
                totals["loss"] += s.loss * s.seen
                totals["correct"] += s.correct
                totals["seen"] += s.seen
            else:  # the weights stay the teacher's: the train split only paces the schedule
                self.step += 1
            if gate_now and batch is not None:
                g = self.gate_step(*batch)
                totals["val_loss"] += g["val_loss"] * g["val_seen"]
                totals["val_correct"] += g["val_correct"]
                totals["val_seen"] += g["val_seen"]
                totals["gate_steps"] += 1
            if on_step is not None:
                on_step(self, s, g, t, progress_now)
            bar.update(1)
            if progress and i % 20 == 0:
                with torch.no_grad():
                    ratio = float(self.soft_cost(self.gates.expected_width())) / self.cost_target
                bar.set_postfix(T=f"{t:.3g}", **{self.cost_name: f"{ratio:.3f}"}, lam=f"{self.lam:.2f}")
            if i + 1 < steps:  # the end of the epoch is saved by the caller
                stop = should_stop is not None and should_stop()
                due = checkpoint_every and (i + 1) % checkpoint_every == 0
                if checkpoint is not None and (stop or due):
                    checkpoint(i + 1, totals | {"seconds": time.perf_counter() - start})
                if stop:
                    bar.close()
                    raise SearchInterrupted(epoch, i + 1)
        bar.close()
        self.sync()
        keys = ("loss", "correct", "seen", "val_loss", "val_correct", "val_seen")  # summed over the processes
        totals |= dict(zip(keys, all_reduce_sum([float(totals[k]) for k in keys]), strict=True))
        seen, vseen = max(totals["seen"], 1), max(totals["val_seen"], 1)
        stats = {"epoch": epoch + 1, "seconds": time.perf_counter() - start}
        if spec.train_weights:
            stats |= {"train_loss": totals["loss"] / seen, "train_top1": 100.0 * totals["correct"] / seen}
        return stats | {
            "val_loss": totals["val_loss"] / vseen,
            "val_top1": 100.0 * totals["val_correct"] / vseen,
            "gate_steps": totals["gate_steps"],
        }

    def sync(self) -> None:
        """Under ``torchrun``: rank 0's weights, BN statistics, gates and multipliers on every process.
        The averaged gradients keep parameters equal; BN running statistics (each process's own
        batches) and rounding could drift, so they are made equal at the end of every epoch."""
        broadcast_state(self.model)
        broadcast_state(self.gates)
        self.lam, self.lam_params, self.lam_latency = broadcast_object((self.lam, self.lam_params, self.lam_latency))

    # -- the end ----------------------------------------------------------------------------------
    @torch.no_grad()
    def binarize(self) -> ChannelPlan:
        """Top channels per group by indicator, repaired onto the budget on the hard network; under a
        latency budget then measured, and repaired again while the measurement misses the target (or,
        for a latency ceiling beside a FLOPs target, goes over the ceiling)."""
        masks = self.gates()
        counts = self.gates.hard_counts(masks)
        scores = self.gates.channel_scores()
        kept = {}
        for g, n, s in zip(self.groups, counts, scores, strict=True):
            order = torch.argsort(s, descending=True)
            kept[g.id] = whole_units(g, order, self.lattice.nearest(g.id, n))
        # Repair ranks units by sigmoid(margin): the masks themselves are all ~1 (or ~0) after
        # annealing and would leave only the FLOPs saved to decide.
        values = [torch.sigmoid(m).cpu() for m in self.gates.margins()]
        spec = self.budget.budget
        cost, removed = self.cost, []
        if self.blocks:
            kept_blocks = self._binarize_blocks()
            removed = [b.name for b, k in zip(self.blocks, kept_blocks.tolist(), strict=True) if not k]
            cost = lambda w: self.flops_model.flops(w, kept_blocks)  # noqa: E731 - the chosen blocks fixed
        ceilings = [(self.latency_model.latency, self.latency_ceiling)] if self.latency_ceiling else []
        kept = repair(self.flops_model, kept, values, self.cost_target, self.params_target, spec.min_keep,
                      round_to=spec.round_to, cost=cost, ceilings=ceilings)  # fmt: skip
        thin = self._thin_blocks(kept, kept_blocks) if self.blocks else []
        if thin:  # chains of one or two channels: remove those blocks whole, give their FLOPs to the channels
            kept_blocks = kept_blocks.clone()
            kept_blocks[thin] = 0
            removed = [b.name for b, k in zip(self.blocks, kept_blocks.tolist(), strict=True) if not k]
            cost = lambda w: self.flops_model.flops(w, kept_blocks)  # noqa: E731
            kept = repair(self.flops_model, kept, values, self.cost_target, self.params_target, spec.min_keep,
                          round_to=spec.round_to, cost=cost)  # fmt: skip
        meta = {"method": f"dais_search:{self.budget.search.mode}"}
        if self.flops_target is not None:
            meta["target_flops"] = int(self.flops_target)
        if self.latency_model is not None:
            kept, meta["latency"] = self._measured_repair(kept, values)
        if spec.round_to > 1:
            meta["round_to"] = spec.round_to
        plan = ChannelPlan.create(self.model, kept, self.input_shape, spec.ignore, graph=self.graph, meta=meta,
                                  removed_blocks=removed)  # fmt: skip
        predicted = float(cost(self.flops_model.widths_of(kept)))
        if self.flops_target is None or predicted >= 0.99 * self.cost_target:
            return plan
        unbound = repair(self.flops_model, kept, values, self.cost_target, self.params_target, spec.min_keep,
                         round_to=spec.round_to, cost=cost)  # fmt: skip
        if self.latency_ceiling and float(cost(self.flops_model.widths_of(unbound))) > predicted:
            lat = meta["latency"]
            log.warning("the latency ceiling binds: the plan keeps %.4f of the FLOPs target, measured at %.3f of the "
                        "dense latency for a ceiling of %.3f; raise budget.latency to keep more FLOPs",
                        predicted / self.cost_target, lat["measured_ratio"], lat["target_ratio"])  # fmt: skip
        else:
            log.warning("the allowed widths (min_keep = %d, round_to = %d, whole blocks) leave the plan at %.4f of "
                        "the %s target: no allowed step up fits; a smaller budget.round_to gets closer",
                        spec.min_keep, spec.round_to, predicted / self.cost_target, self.cost_name)  # fmt: skip
        return plan

    def _binarize_blocks(self) -> torch.Tensor:
        """1/0 per searched block: kept where its mask is above 1/2; then, while even the narrowest
        channels cannot meet the budget, the kept block with the least mask per FLOP it costs goes."""
        beta = self.gates.beta.detach().cpu()
        keep = (beta > 0).double()
        floor = self.lattice.floor()
        while float(self.flops_model.flops(floor, keep)) > self.cost_target and bool(keep.any()):
            best, best_score = None, float("inf")
            for k in keep.nonzero().flatten().tolist():
                trial = keep.clone()
                trial[k] = 0
                saved = float(self.flops_model.flops(floor, keep)) - float(self.flops_model.flops(floor, trial))
                score = float(torch.sigmoid(beta[k])) / max(saved, 1e-9)
                if score < best_score:
                    best, best_score = k, score
            keep[best] = 0
        return keep

    def _thin_blocks(self, kept: dict[int, list[int]], kept_blocks: torch.Tensor) -> list[int]:
        """Kept blocks whose narrowest inner group (one only the block's layers produce) keeps at most
        ``search.block_thin`` of its channels."""
        limit = self.budget.search.block_thin
        out = []
        for k, block in enumerate(self.blocks):
            if not kept_blocks[k] or limit <= 0:
                continue
            inner = [g for g in self.groups if g.producers and all(p.name in block.modules for p in g.producers)]
            fractions = [len(kept.get(g.id, range(g.size))) / g.size for g in inner]
            if fractions and min(fractions) <= limit:
                out.append(k)
        return out

    def _measured_repair(self, kept: dict[int, list[int]], values: list[torch.Tensor],
                         rounds: int = 4, tolerance: float = 0.02) -> tuple[dict[int, list[int]], dict]:  # fmt: skip
        """Measures the repaired plan against the dense model (interleaved, medians); while the
        measured ratio misses the target ratio by more than ``tolerance``, scales the predicted
        target by target / measured and repairs again. A ceiling is scaled the same way while the
        plan measures over it, or under it with FLOPs left under their target (room the prediction
        did not see). Returns the plan and what was measured."""
        lm, spec = self.latency_model, self.budget.budget
        ceiling = self.latency_ceiling is not None
        seconds = self.latency_ceiling if ceiling else self.cost_target
        goal = seconds / lm.dense_seconds  # the latency ratio asked for
        aim = seconds  # what the prediction is repaired onto (or kept under)
        least = float(lm.latency(self.lattice.floor()))
        history, tried = [], []
        for round_ in range(rounds):
            predicted = float(lm.latency(self.flops_model.widths_of(kept)))
            measured = lm.measure_ratio(kept)
            history.append({"predicted_ratio": predicted / lm.dense_seconds, "measured_ratio": measured})
            tried.append((kept, measured))
            on_goal = abs(measured / goal - 1) <= tolerance
            if ceiling:  # under it, and either on it or the FLOPs on their target (the ceiling has no say)
                flops = float(self.cost(self.flops_model.widths_of(kept)))
                done = measured <= goal * (1 + tolerance) and (on_goal or flops >= 0.99 * self.cost_target)
            else:
                done = on_goal
            if done or round_ + 1 == rounds:
                break
            step = min(max(goal / measured, 0.8), 1.25)  # damped: one noisy measurement cannot throw the plan far
            aim = max(aim * step, least)  # and no lower than the minimum widths
            if ceiling:  # the FLOPs target again, under the scaled ceiling
                kept = repair(self.flops_model, kept, values, self.cost_target, self.params_target, spec.min_keep,
                              round_to=spec.round_to, cost=self.cost, ceilings=[(lm.latency, aim)])  # fmt: skip
            else:
                kept = repair(self.flops_model, kept, values, aim, self.params_target, spec.min_keep,
                              round_to=spec.round_to, cost=self.cost)  # fmt: skip
        # The closest to the target that is not over it by more than the tolerance (a ceiling: the one
        # with the most FLOPs under it); else the fastest.
        fine = [t for t in tried if t[1] <= goal * (1 + tolerance)]
        if fine and ceiling:
            chosen = max(fine, key=lambda t: float(self.cost(self.flops_model.widths_of(t[0]))))
        elif fine:
            chosen = min(fine, key=lambda t: abs(t[1] / goal - 1))
        else:
            chosen = min(tried, key=lambda t: t[1])
        kept, pick = chosen[0], history[tried.index(chosen)]
        log.info("latency: measured / dense %s for a target of %.3f (predicted %s)",
                 ", ".join(f"{h['measured_ratio']:.3f}" for h in history), goal,
                 ", ".join(f"{h['predicted_ratio']:.3f}" for h in history))  # fmt: skip
        return kept, {"role": "ceiling" if ceiling else "target", "target_ratio": goal,
                      "measured_ratio": pick["measured_ratio"],
                      "predicted_ratio": pick["predicted_ratio"], "target_ms": 1e3 * seconds,
                      "dense_ms": 1e3 * lm.dense_seconds, "batch_size": lm.batch_size, "device": lm.cache.tag,
                      "rounds": history}  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "gates": self.gates.state_dict(), "w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
            "g_opt": self.g_opt.state_dict(), "lam": self.lam, "lam_params": self.lam_params, "step": self.step,
            "lam_latency": self.lam_latency,
            "weight_masks": self._weight_masks,  # cached at the last gate step's temperature: part of the state
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.gates.load_state_dict(state["gates"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.lam, self.lam_params, self.step = state["lam"], state["lam_params"], state["step"]
        self.lam_latency = state.get("lam_latency", 0.0)  # states written before latency ceilings existed
        self._weight_masks = state.get("weight_masks")


class SearchInterrupted(Exception):
    """Raised by :meth:`Searcher.run_epoch` after a stop request (SIGTERM/SIGINT), once its state is saved."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"interrupted in epoch {epoch + 1} after step {step}")
        self.epoch, self.step = epoch, step


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else f"{value:g}"


def _uniform_keep(cost, full: torch.Tensor, target: float) -> float:
    """The keep ratio that, applied to every group, puts the soft cost on ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(cost(full * mid)) <= target else (lo, mid)
    return min(max(lo, 0.02), 0.98)


def _latency_model(graph: ChannelGraph, model: nn.Module, example_input: torch.Tensor, budget: Budget) -> LatencyModel:
    """The budget's latency model, measured on rank 0 (under torchrun the others receive it)."""
    lm = None
    if is_main():
        cache = LatencyCache(device=example_input.device)
        lm = LatencyModel(graph, model, example_input, budget.data.batch_size, cache, grid_step=budget.budget.round_to)
        log.info("latency tables: %d layers, %d measured now, the rest from %s", len(lm.tables), cache.measured,
                 cache.path)  # fmt: skip
    return broadcast_object(lm)


def _check_latency_feasible(lm: LatencyModel, lattice: Granularity, target: float, budget: Budget) -> None:
    least = float(lm.latency(lattice.floor()))
    if least > target:
        raise UserError(f"budget.latency = {_toml(budget.budget.latency)} asks for {1e3 * target:.2f} ms "
                        f"({target / lm.dense_seconds:.1%} of the dense {1e3 * lm.dense_seconds:.2f} ms measured at "
                        f"batch {lm.batch_size}), but the model takes {1e3 * least:.2f} ms predicted with every "
                        f"prunable group at its minimum width: raise it to at least "
                        f'"{100 * least / lm.dense_seconds + 1:.0f}%"')  # fmt: skip


def _searched_blocks(model: nn.Module, graph: ChannelGraph, budget: Budget) -> list[ResidualBlock]:
    """What a ``granularity = ["block" and/or "layer", "channel"]`` search gates: removable residual
    blocks whose branch ends in a module (its output is scaled by the block's mask), then removable
    layers of plain chains (:mod:`~dais_search.channels.chain`) outside those blocks."""
    wanted = [g for g in budget.search.granularity if g != "channel"]
    if budget.budget.latency not in ("", None):
        raise UserError(f"search.granularity = {list(budget.search.granularity)} takes a FLOPs budget; a latency "
                        'budget searches channels only: give budget.flops, or granularity = ["channel"]')  # fmt: skip
    blocks = [b for b in find_blocks(model, graph.gm, graph.infos) if b.output] if "block" in wanted else []
    if "block" in wanted and not blocks:
        raise UserError(f'search.granularity has "block", but {type(model).__name__} has no residual block that '
                        'can be removed whole (an addition of a block\'s input and a branch computed from it alone, '
                        'inside a submodule); search with granularity = ["channel"]')
    layers = []
    if "layer" in wanted:
        taken = {b.owner for b in blocks} | {m for b in blocks for m in b.modules}
        layers = [x for x in find_chain_layers(model, graph) if x.owner not in taken and not set(x.modules) & taken]
        if not layers:
            raise UserError(f'search.granularity has "layer", but {type(model).__name__} has no layer that can be '
                            "removed (a conv or linear layer, with its BN and activation, whose output is shaped like "
                            "its input and is called from a submodule such as nn.Sequential); search without "
                            '"layer"')  # fmt: skip
    for kind, found in (("residual blocks", blocks), ("chain layers", layers)):
        if found:
            log.info("search: %d %s searched with the channels: %s", len(found), kind, ", ".join(b.name for b in found))
    return blocks + layers
