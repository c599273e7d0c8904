"""LatencyModel: measured forward latency as a differentiable function of the channel groups' widths.

Every conv (timed with its BN and ReLU) and linear layer the channel analysis saw gets a measured
lookup table (:mod:`dais_search.cost.lut`) over its input and output widths; a layer's widths are
affine in the group widths (as in :class:`.flops_model.FlopsModel`), so the network's latency at
``widths`` is

    latency(w) = scale * sum over layers of table_l(in_l(w), out_l(w)) + offset

Layers timed one by one do not add up to the network's time (caches stay warm between layers of
one network; what the tables do not see: residual additions, pooling, the framework's overhead),
so ``scale`` and ``offset`` are calibrated on two measured networks: the dense model and the
one that keeps the first half of every prunable group; the model is exact at both. Tables are
bilinear, so the search can descend on it; at integer widths it is the prediction the search's
repair meets, and the final network's measured latency is reported beside it.
"""

from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

from ..cost import interleaved_latency, median_ratio
from ..cost.lut import LatencyCache, LayerSpec, grid, interpolate
from .flops_model import axis_counts
from .groups import ChannelGraph, ChannelGroup
from .plan import ChannelPlan

__all__ = ["LatencyModel"]


class LatencyModel:
    """Predicted seconds per forward pass at the budget's batch size, differentiable in the widths.

    Args:
        graph: the channel analysis of ``model``.
        model: the dense model (copied for timing; not changed).
        example_input: an input of the shape the budget is measured at; its batch dimension is
            replaced by ``batch_size``, its device is where the tables are measured.
        batch_size: the batch the latency is for.
        cache: where tables are kept (default: a :class:`~dais_search.cost.lut.LatencyCache` for the device).
        grid_step: tables are measured at multiples of this (the budget's ``round_to``) where that is
            few enough widths, so that the widths a plan may keep are measured, not interpolated.
        repeats: timed runs of the dense model (medians).

    Attributes:
        groups: the prunable groups, in the order of the width vector (as FlopsModel's).
        dense_seconds: the dense model's measured latency.
        offset: dense_seconds minus the tables' sum at full width.
    """

    def __init__(self, graph: ChannelGraph, model: nn.Module, example_input: torch.Tensor, batch_size: int,
                 cache: LatencyCache | None = None, repeats: int = 20, grid_step: int = 1) -> None:  # fmt: skip
        device = example_input.device
        self.groups = [g for g in graph.groups if g.prunable]
        self.batch_size = batch_size
        self.cache = cache if cache is not None else LatencyCache(device=device)
        specs, grids, self._axes = [], [], []
        for path, in_shape, _ in graph.calls:
            module = model.get_submodule(path)
            batched = (batch_size, *in_shape[1:])
            if isinstance(module, nn.Conv2d):
                spec = LayerSpec("conv", batched, module.out_channels, module.kernel_size, module.stride,
                                 module.padding, module.dilation, module.groups)  # fmt: skip
            elif isinstance(module, nn.Linear):
                spec = LayerSpec("linear", batched, module.out_features)
            else:
                continue
            axes = tuple(self._axis(graph, path, role, size) for role, size in
                         (("in", spec.in_channels), ("out", spec.out_channels)))  # fmt: skip
            specs.append(spec)
            fixed_in = not bool(axes[0][1].any())  # e.g. the network's input: one width only
            grids.append(([spec.in_channels] if fixed_in else grid(spec.in_channels, grid_step),
                          grid(spec.out_channels, grid_step)))  # fmt: skip
            self._axes.append(axes)
        self.tables = self.cache.get(specs, grids)
        self.specs = specs
        self.graph, self.repeats = graph, repeats
        self._dense = copy.deepcopy(model).eval()
        self._shape = (1, *example_input.shape[1:])
        self._x = example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous()
        halves = {g.id: _first_half(g) for g in self.groups}
        times = interleaved_latency({"dense": self._dense, "half": self.pruned(halves)}, self._x, repeats, 3)
        self.dense_seconds = statistics.median(times["dense"])
        self.half_seconds = statistics.median(times["half"])
        full = torch.tensor([float(g.size) for g in self.groups], dtype=torch.float64)
        s_full = float(self.layers(full).sum())
        s_half = float(self.layers(torch.tensor([float(len(halves[g.id])) for g in self.groups],
                                                dtype=torch.float64)).sum())  # fmt: skip
        self.scale = (self.dense_seconds - self.half_seconds) / max(s_full - s_half, 1e-12)
        if self.scale <= 0:  # timing noise larger than the difference: fall back to proportional
            self.scale = self.dense_seconds / s_full
        self.offset = self.dense_seconds - self.scale * s_full

    def pruned(self, kept: dict[int, list[int]]) -> nn.Module:
        """The dense model cut to ``kept`` (eval mode; the weights do not matter for its time)."""
        plan = ChannelPlan.create(self._dense, kept, self._shape, graph=self.graph)
        return plan.apply(self._dense, self.graph).eval()

    def measure_ratio(self, kept: dict[int, list[int]], repeats: int | None = None) -> float:
        """Measured seconds of the model cut to ``kept`` over the dense model's: the median of the
        per-round ratios of interleaved runs at the budget's batch size."""
        times = interleaved_latency({"dense": self._dense, "pruned": self.pruned(kept)}, self._x,
                                    repeats or self.repeats, 3)  # fmt: skip
        return median_ratio(times, "pruned", "dense")

    def _axis(self, graph: ChannelGraph, path: str, role: str, size: int) -> tuple[float, torch.Tensor]:
        if (path, role) not in graph.sites:  # an axis the analysis does not slice: always whole
            return float(size), torch.zeros(len(self.groups), dtype=torch.float64)
        return axis_counts(graph, self.groups, path, role)

    def layers(self, widths: torch.Tensor) -> torch.Tensor:
        """Each layer's predicted seconds at ``widths`` ((G,) or (B, G)): shape (..., layers)."""
        w = widths.to(torch.float64)
        out = []
        for table, ((fi, ci), (fo, co)) in zip(self.tables, self._axes, strict=True):
            cin = fi + w @ ci.to(w.device)
            cout = fo + w @ co.to(w.device)
            out.append(interpolate(table, cin, cout))
        return torch.stack(out, dim=-1)

    def latency(self, widths) -> torch.Tensor:
        """Predicted seconds at ``widths``: a (G,) or (B, G) tensor in :attr:`groups` order, or
        ``{group id: width}`` (missing groups at full width)."""
        if not isinstance(widths, torch.Tensor):
            full = {g.id: float(g.size) for g in self.groups}
            full.update({int(k): float(v) for k, v in widths.items()})
            widths = torch.tensor([full[g.id] for g in self.groups], dtype=torch.float64)
        return self.offset + self.scale * self.layers(widths).sum(dim=-1)

    def __call__(self, widths) -> torch.Tensor:
        return self.latency(widths)


def _first_half(group: ChannelGroup) -> list[int]:
    """The first half of a group's channels (whole blocks; at least its minimum)."""
    units = group.blocks or [(c,) for c in range(group.size)]
    n = max(1, len(units) // 2, -(-group.min_keep // len(units[0])))
    return sorted(c for u in units[:n] for c in u)
