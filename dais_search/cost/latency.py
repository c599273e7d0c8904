"""CPU/GPU forward latency, measured so that models compared in one run are comparable.

Models are warmed up, then timed round-robin (each round runs every model once), so that a slow
spell of a shared machine lands on all of them; compare them by the median of per-round ratios.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["interleaved_latency", "median_ratio"]


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)  # CUDA runs asynchronously: time what finished


@torch.no_grad()
def interleaved_latency(
    models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 20, warmup: int = 5
) -> dict[str, list[float]]:
    """Seconds per forward pass of each model on ``x`` (eval mode, no grad), ``repeats`` rounds."""
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            m(x)
    _sync(x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(x)
            _sync(x)
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``time[numerator] / time[denominator]``."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))
