"""Snapshots of every channel's soft mask during a search, kept beside its TensorBoard events.

TensorBoard keeps histograms, not the channel-by-channel values a heatmap needs; the search
saves them here (``indicators.npz``), and ``dais-search plot`` draws the heatmaps from them.

    step, progress, temperature  (K,)     one entry per snapshot
    names, sizes                 (G,)     the groups, in trace order
    masks                        (K, sum of sizes)  float32, the groups' masks side by side
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write

__all__ = ["FILENAME", "IndicatorHistory"]

FILENAME = "indicators.npz"


@dataclass
class IndicatorHistory:
    names: list[str]
    sizes: list[int]
    steps: list[int] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, step: int, progress: float, temperature: float, masks: list[np.ndarray]) -> None:
        if [len(m) for m in masks] != self.sizes:
            raise ValueError(f"masks of widths {[len(m) for m in masks]} for groups of widths {self.sizes}")
        self.truncate(step - 1)  # a resumed run logs these steps again
        self.steps.append(int(step))
        self.progress.append(float(progress))
        self.temperature.append(float(temperature))
        self.rows.append(np.concatenate([np.asarray(m, dtype=np.float32) for m in masks]))

    def truncate(self, last_step: int) -> None:
        """Drops the snapshots after ``last_step``."""
        keep = [i for i, s in enumerate(self.steps) if s <= last_step]
        self.steps, self.progress, self.temperature, self.rows = (
            [v[i] for i in keep] for v in (self.steps, self.progress, self.temperature, self.rows)
        )

    def masks(self, index: int = -1) -> list[np.ndarray]:
        """The groups' masks at snapshot ``index`` (the last by default)."""
        row = self.rows[index]
        bounds = np.cumsum([0, *self.sizes])
        return [row[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def save(self, path: str | os.PathLike) -> None:
        arrays = {
            "names": np.array(self.names), "sizes": np.array(self.sizes, dtype=np.int64),
            "step": np.array(self.steps, dtype=np.int64), "progress": np.array(self.progress),
            "temperature": np.array(self.temperature),
            "masks": np.stack(self.rows) if self.rows else np.zeros((0, sum(self.sizes)), np.float32),
        }  # fmt: skip
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> IndicatorHistory:
        with np.load(Path(path)) as z:
            return cls(
                [str(n) for n in z["names"]], [int(s) for s in z["sizes"]], [int(s) for s in z["step"]],
                [float(p) for p in z["progress"]], [float(t) for t in z["temperature"]], list(z["masks"]),
            )  # fmt: skip
