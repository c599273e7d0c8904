"""Measured latency lookup tables: each prunable layer (conv + BN + ReLU, or linear) timed at a grid
of input and output widths, cached on disk, interpolated differentiably.

A layer is described by a :class:`LayerSpec` (its kind, full input shape at the budget's batch
size, output width, kernel, stride, padding, dilation, groups). :func:`measure_table` times a
freshly made copy of the layer at every grid point (warm-up, then the median of ``repeats``
runs); :class:`LatencyCache` keeps the tables in one JSON file per machine, keyed by the device,
the CPU thread count and the torch version, so a second search on the same machine measures
nothing. :func:`interpolate` reads a table at soft widths (bilinear, clamped to the grid), so the
search can follow its gradient.

Plain torch: nothing else of dais_search is imported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["LatencyCache", "LayerSpec", "LayerTable", "device_tag", "grid", "interpolate", "measure_table"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the table times it.

    Attributes:
        kind: ``"conv"`` (timed with BatchNorm and ReLU of its output) or ``"linear"``.
        in_shape: the full input shape at the budget's batch size, channels second (conv) or last (linear).
        out_channels: the full output width.
        kernel, stride, padding, dilation: the conv's (empty for linear).
        groups: 1, or the conv's groups; a depthwise conv (groups == in == out) keeps it equal to its
            width, another grouped conv keeps its group count.
    """

    kind: str
    in_shape: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def in_channels(self) -> int:
        return self.in_shape[1] if self.kind == "conv" else self.in_shape[-1]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def build(self, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
        """The layer at widths ``cin`` -> ``cout`` and a random input for it."""
        if self.kind == "linear":
            return nn.Linear(cin, cout), torch.randn(*self.in_shape[:-1], cin)
        groups = cin if self.depthwise else self.groups
        conv = nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, bias=False)
        layer = nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        return layer, torch.randn(self.in_shape[0], cin, *self.in_shape[2:])


@dataclass
class LayerTable:
    """Seconds of one layer at ``in_grid`` x ``out_grid`` widths (``seconds[i][j]``). A depthwise
    conv has one axis (its width): ``in_grid == out_grid`` and only the diagonal is measured."""

    in_grid: list[int]
    out_grid: list[int]
    seconds: list[list[float]]


def grid(full: int, step: int = 1, points: int = 9) -> list[int]:
    """Widths a table is measured at along an axis of ``full`` channels: every multiple of ``step``
    (the budget's ``round_to``) when that is at most ``2 * points`` widths, else ``points - 1`` even
    steps; always 1 and ``full``."""
    multiples = range(step, full, step)
    if step > 1 and len(multiples) <= 2 * points:
        return sorted({1, full, *multiples})
    return sorted({1, full, *(max(1, round(full * i / (points - 1))) for i in range(1, points))})


def _time(module: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_table(spec: LayerSpec, in_grid: Sequence[int], out_grid: Sequence[int], device: torch.device | str = "cpu",
                  repeats: int = 7, warmup: int = 2) -> LayerTable:  # fmt: skip
    """Times ``spec`` at every (input, output) width of the grids (eval mode, no grad; a depthwise
    conv on the diagonal only, a grouped conv at multiples of its group count)."""
    in_grid, out_grid = list(in_grid), list(out_grid)
    if spec.depthwise:
        in_grid = out_grid
    elif spec.groups > 1:
        g = spec.groups
        in_grid = sorted({max(g, -(-c // g) * g) for c in in_grid})
        out_grid = sorted({max(g, -(-c // g) * g) for c in out_grid})
    seconds = []
    for cin in in_grid:
        row = []
        for cout in out_grid:
            if spec.depthwise and cin != cout:
                row.append(float("nan"))
                continue
            module, x = spec.build(cin, cout)
            module, x = module.to(device).eval(), x.to(device)
            row.append(_time(module, x, repeats, warmup))
        seconds.append(row)
    return LayerTable(in_grid, out_grid, seconds)


def _segment(grid_: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the grid segment, position in it) of widths ``w``, clamped to the grid's range."""
    if len(grid_) == 1:
        return torch.zeros_like(w, dtype=torch.long), torch.zeros_like(w)
    w = w.clamp(float(grid_[0]), float(grid_[-1]))
    i = (torch.searchsorted(grid_, w.detach().contiguous(), right=True) - 1).clamp(0, len(grid_) - 2)
    lo, hi = grid_[i], grid_[i + 1]
    return i, (w - lo) / (hi - lo)


def interpolate(table: LayerTable, cin: torch.Tensor, cout: torch.Tensor) -> torch.Tensor:
    """Seconds at soft widths ``cin``, ``cout`` (tensors of one shape; float64): bilinear on the
    grid, clamped to its range, differentiable in both; a depthwise table follows its diagonal."""
    gi = torch.tensor(table.in_grid, dtype=torch.float64, device=cout.device)
    go = torch.tensor(table.out_grid, dtype=torch.float64, device=cout.device)
    s = torch.tensor(table.seconds, dtype=torch.float64, device=cout.device)
    if table.in_grid == table.out_grid and torch.isnan(s).any():  # depthwise: the width is the output's
        d = torch.diagonal(s)
        j, t = _segment(go, cout)
        return d[j] + t * (d[(j + 1).clamp(max=len(go) - 1)] - d[j]) if len(go) > 1 else d[j]
    i, u = _segment(gi, cin)
    j, t = _segment(go, cout)
    i1 = (i + 1).clamp(max=len(gi) - 1)
    j1 = (j + 1).clamp(max=len(go) - 1)
    low = s[i, j] + t * (s[i, j1] - s[i, j])
    high = s[i1, j] + t * (s[i1, j1] - s[i1, j])
    return low + u * (high - low)


def device_tag(device: torch.device | str) -> str:
    """What a table is only valid on: the device's name, CPU threads and the torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} {platform.processor() or 'cpu'} x{os.cpu_count()}"
    return f"{device.type}:{name}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def default_cache_dir() -> Path:
    """``$DAIS_SEARCH_CACHE`` or ``~/.cache/dais_search``, then ``latency/``."""
    root = os.environ.get("DAIS_SEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dais_search")
    return Path(root) / "latency"


class LatencyCache:
    """Tables by layer, one JSON file per device tag under ``directory`` (default
    :func:`default_cache_dir`); written atomically after each new table."""

    def __init__(self, directory: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.tag = device_tag(self.device)
        digest = hashlib.sha1(self.tag.encode()).hexdigest()[:12]
        self.path = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.path / f"{digest}.json"
        self.tables: dict[str, dict] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("device") == self.tag:
                self.tables = data.get("tables", {})
        self.measured = 0  # tables measured (not read from the cache) by this object

    def get(self, specs: Sequence[LayerSpec], grids: Sequence[tuple[list[int], list[int]]],
            **kwargs) -> list[LayerTable]:  # fmt: skip
        """The table of every spec at its (input, output) grids, measuring (and saving) the missing ones."""
        out = []
        for spec, (in_grid, out_grid) in zip(specs, grids, strict=True):
            key = f"{spec.key()}|{in_grid}|{out_grid}"
            if key not in self.tables:
                self.tables[key] = dataclasses.asdict(measure_table(spec, in_grid, out_grid, self.device, **kwargs))
                self.measured += 1
                self._save()
            out.append(LayerTable(**self.tables[key]))
        return out

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"device": self.tag, "tables": self.tables}))
        os.replace(tmp, self.path)
