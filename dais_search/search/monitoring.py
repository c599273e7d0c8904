"""What a search shows in TensorBoard, and when.

Every ``monitor.every`` weight steps (default: about 200 points per search), under ``search/``:
the temperature, the progress (0 to 1), the soft FLOPs (or latency) over the target, the
multiplier(s), the binarisation gap, the train loss (mean of the weight steps since the last
point) and the held-out loss (mean of the gate steps since then); under ``keep/`` every group's
soft keep ratio, under ``block/`` every searched residual block's (or chain layer's) indicator.

``monitor.snapshots`` times per search (and once at the end): a histogram of every group's masks
(``mask/``), the indicator heatmap figure (``search/indicators``) and a row of
``indicators.npz`` (every channel's mask, for ``dais-search plot``). Per epoch, under ``epoch/``:
the epoch's mean losses and accuracies. Once: the custom-scalars layout (all groups' keep
ratios in one chart per stage) and, at the end, the plan as text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..budget import MonitorSpec
from ..channels import ChannelPlan
from ..monitor import SNAPSHOTS_FILE, IndicatorHistory, MetricWriter, custom_scalars_layout, heatmap_figure
from .searcher import Searcher, StepStats

__all__ = ["SearchMonitor", "default_every"]

POINTS = 200  # curve points per search when monitor.every = 0


def default_every(total_steps: int) -> int:
    """Weight steps between points when ``monitor.every = 0``: ``POINTS`` points, or one per step on
    shorter searches."""
    return max(1, total_steps // POINTS)


class SearchMonitor:
    """Writes a search's TensorBoard events into ``log_dir`` (see the module docstring).

    ``total_steps`` is the number of weight steps of the whole search; ``resume_step`` the step a
    resumed search continues from (events written after it by the interrupted run are dropped).
    """

    def __init__(self, log_dir: str | os.PathLike, searcher: Searcher, total_steps: int, spec: MonitorSpec,
                 resume_step: int | None = None) -> None:  # fmt: skip
        self.log_dir = Path(log_dir)
        self.every = spec.every or default_every(total_steps)
        self.snapshot_every = max(1, total_steps // spec.snapshots)
        # A resumed run drops what the interrupted one wrote after its saved state (step resume_step).
        self.writer = MetricWriter(str(self.log_dir), purge_step=None if resume_step is None else resume_step + 1)
        self.names = [g.name for g in searcher.groups]
        sizes = [g.size for g in searcher.groups]
        path = self.log_dir / SNAPSHOTS_FILE
        self.history = IndicatorHistory(self.names, sizes)
        if resume_step is not None and path.is_file():
            saved = IndicatorHistory.load(path)
            if saved.names == self.names and saved.sizes == sizes:
                self.history = saved
                self.history.truncate(resume_step)
        self.writer.layout(custom_scalars_layout(self.names, searcher.cost_name, [b.name for b in searcher.blocks]))
        self.temperature, self.progress = float(searcher.gates.temperature), 0.0
        self._sums = {"task_loss": [0.0, 0], "val_loss": [0.0, 0]}

    # -- called by Searcher.run_epoch after every weight step ------------------------------------
    def __call__(self, s: Searcher, weight: StepStats | None, gate: dict[str, float] | None, temperature: float,
                 progress: float) -> None:  # fmt: skip
        self.temperature, self.progress = temperature, progress
        if weight is not None:
            self._add("task_loss", weight.loss)
        if gate is not None:
            self._add("val_loss", gate["val_loss"])
        if s.step % self.every == 0:
            self.points(s)
        if s.step % self.snapshot_every == 0:
            self.snapshot(s)

    def _add(self, key: str, value: float) -> None:
        self._sums[key][0] += value
        self._sums[key][1] += 1

    @torch.no_grad()
    def points(self, s: Searcher) -> None:
        """One point on every curve, at the searcher's current step."""
        masks = s.gates()
        scalars = {
            "search/temperature": self.temperature,
            "search/progress": self.progress,
            f"search/{s.cost_name}_ratio": float(s.soft_cost(s.gates.expected_width(masks))) / s.cost_target,
            "search/lambda": s.lam,
            "search/binarization_gap": s.gates.binarization_gap(masks),
        }
        if s.params_target is not None:
            scalars["search/lambda_params"] = s.lam_params
        if s.latency_ceiling is not None:
            widths = s.gates.expected_width(masks)
            scalars["search/latency_ceiling_ratio"] = float(s.latency_model.latency(widths)) / s.latency_ceiling
            scalars["search/lambda_latency"] = s.lam_latency
        for key, (total, count) in self._sums.items():
            if count:
                scalars[f"search/{key}"] = total / count
        self._sums = {key: [0.0, 0] for key in self._sums}
        scalars |= {f"keep/{n}": float(m.sum()) / len(m) for n, m in zip(self.names, masks, strict=True)}
        blocks = s.gates.block_masks()
        if blocks is not None:
            scalars |= {f"block/{b.name}": float(v) for b, v in zip(s.blocks, blocks, strict=True)}
        self.writer.scalars(s.step, scalars)

    @torch.no_grad()
    def snapshot(self, s: Searcher) -> None:
        """Histograms, the heatmap figure and a row of ``indicators.npz``, at the current step."""
        if self.history.steps and self.history.steps[-1] == s.step:
            return
        masks = [m.detach().float().cpu() for m in s.gates()]
        for name, m in zip(self.names, masks, strict=True):
            self.writer.histogram(f"mask/{name}", m, s.step)
        title = f"channel indicators at step {s.step} (progress {self.progress:.2f}, T = {self.temperature:.3g})"
        arrays = [m.numpy() for m in masks]
        self.writer.figure("search/indicators", heatmap_figure(self.names, arrays, title), s.step)
        self.history.add(s.step, self.progress, self.temperature, arrays)
        self.history.save(self.log_dir / SNAPSHOTS_FILE)
        self.writer.flush()

    def epoch(self, s: Searcher, stats: dict[str, Any]) -> None:
        """The epoch's means (``epoch/``), after the epoch's last step."""
        keys = ("train_loss", "train_top1", "val_loss", "val_top1", "binarization_gap", f"{s.cost_name}_ratio")
        self.writer.scalars(s.step, {f"epoch/{k}": float(stats[k]) for k in keys if k in stats})
        self.writer.flush()

    def close(self, s: Searcher, plan: ChannelPlan, limit: int = 60_000) -> None:
        """The last points and snapshot, and the plan as text (cut to what a text panel shows)."""
        if s.step % self.every:
            self.points(s)
        self.snapshot(s)
        self.writer.text("plan/final", "```\n" + json.dumps(plan.to_dict(), indent=1)[:limit] + "\n```", s.step)
        self.writer.close()
