"""FlopsModel: FLOPs and parameters as a differentiable polynomial of the channel groups' widths.

Built from the layer handlers' ``flops`` and ``params`` terms (:mod:`.layers`) over the sliceable
axes the channel analysis found; what no group touches is a constant from the exact count
(:func:`~dais_search.cost.count_flops`). The search optimises it at soft widths; the budget repair
evaluates it at integer widths, where it is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from ..cost import count_flops, count_params
from .blocks import ResidualBlock
from .chain import layer_classes
from .groups import ChannelGraph, trace_channels
from .layers import Term, handler_for

__all__ = ["FlopsModel", "axis_counts"]


class FlopsModel:
    """FLOPs and parameters as a differentiable polynomial of the kept width of each prunable group.

    Every conv/linear call contributes ``coef * (kept inputs) * (kept outputs)`` (grouped convs
    ``coef * (kept outputs)``), where a layer's kept count along an axis is affine in the group
    widths: its fixed channels plus, for each group it sees, ``multiplicity x width``. Whatever
    no group touches (attention matmuls, unprunable layers) is a constant, taken from the exact
    count of the dense model. At integer widths the polynomial equals ``FlopCounterMode``'s count
    of the physically pruned model; at soft widths (tensors with grad) it is differentiable.

    Attributes:
        groups: the prunable groups, in the order of the width vector.
        dense_flops, dense_params: the exact counts at full width.

    Example:
        >>> fm = FlopsModel.from_model(model, torch.zeros(1, 3, 32, 32))
        >>> widths = fm.full_widths().requires_grad_()
        >>> fm.flops(widths * 0.5).backward()
    """

    def __init__(self, graph: ChannelGraph, model: nn.Module, example_input: torch.Tensor,
                 blocks: Sequence[ResidualBlock] = ()) -> None:  # fmt: skip
        self.groups = [g for g in graph.groups if g.prunable]
        self.blocks = list(blocks)
        n = len(self.groups)

        classes: dict[frozenset, dict] = {}  # atom classes with a set of chain layers removed

        def classes_without(removed: frozenset) -> dict:
            if removed not in classes:
                classes[removed] = layer_classes(graph, [self.blocks[k] for k in sorted(removed)])
            return classes[removed]

        def terms_of(terms: list, path: str) -> list[tuple[float, list[tuple[float, torch.Tensor]], torch.Tensor]]:
            """Each term, with the factor of every block it sits in; a term that reads a searched
            chain layer's output is split in two: ``g`` times itself, and ``1 - g`` times the same term
            reading the layer's input channels (marked -1), downstream layers first."""
            inside = torch.tensor([float(path in b.modules or path.rpartition(".")[0] in b.modules)
                                   for b in self.blocks])  # fmt: skip
            variants = [(frozenset(), inside)]
            for k in reversed(range(len(self.blocks))):
                layer = self.blocks[k]
                if layer.kind != "layer" or inside[k]:
                    continue
                out_group = graph.atom_class[graph.infos[layer.node].atoms[0]][0]
                split = []
                for removed, factors in variants:
                    atom_class = classes_without(removed)
                    reads = any(atom_class.get(a, (None,))[0] == out_group
                                for t in terms for r in t.roles for a in graph.sites[(path, r)])  # fmt: skip
                    if not reads:
                        split.append((removed, factors))
                        continue
                    kept, gone = factors.clone(), factors.clone()
                    kept[k], gone[k] = 1.0, -1.0
                    split += [(removed, kept), (removed | {k}, gone)]
                variants = split
            return [(t.coef, [axis_counts(graph, self.groups, path, r, classes_without(removed)) for r in t.roles],
                     factors) for removed, factors in variants for t in terms]  # fmt: skip

        flop_terms, param_terms = [], []
        for path, in_shape, out_shape in graph.calls:
            module = model.get_submodule(path)
            flop_terms += terms_of(handler_for(module).flops(module, in_shape, out_shape), path)
        for path in dict.fromkeys(p for p, role in graph.sites if not role.startswith("dim")):
            module = model.get_submodule(path)
            param_terms += terms_of(handler_for(module).params(module), path)
        for (path, role), atoms in graph.sites.items():
            if role.startswith("dim") and _is_parameter(model, path):
                per_channel = prod(graph.param_shapes[path]) // len(atoms)
                param_terms += terms_of([Term(per_channel, (role,))], path)

        self._flop_terms = self._pack(flop_terms, n)
        self._param_terms = self._pack(param_terms, n)
        self.dense_flops = count_flops(model, example_input)
        self.dense_params = count_params(model)
        full = self.full_widths()
        self._flops_const = self.dense_flops - float(self._evaluate(self._flop_terms, full))
        self._params_const = self.dense_params - float(self._evaluate(self._param_terms, full))

    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, ignore=()) -> FlopsModel:
        """Traces ``model`` (see :func:`~.groups.trace_channels`) and builds its FLOPs model."""
        return cls(trace_channels(model, example_input, ignore), model, example_input)

    def _pack(self, terms, n: int) -> list[tuple[torch.Tensor, ...]]:
        """Groups terms by their number of factors into (coef, fixed, coefficient-matrix, block
        membership) tensors."""
        packed = []
        for k in (0, 1, 2):
            chosen = [t for t in terms if len(t[1]) == k]
            if not chosen:
                continue
            coef = torch.tensor([t[0] for t in chosen], dtype=torch.float64)
            fixed = torch.tensor([[f for f, _ in t[1]] for t in chosen], dtype=torch.float64).reshape(len(chosen), k)
            mats = (
                torch.stack([torch.stack([a for _, a in t[1]]) for t in chosen])
                if k
                else torch.zeros(len(chosen), 0, n, dtype=torch.float64)
            )
            inside = torch.stack([t[2] for t in chosen]).reshape(len(chosen), len(self.blocks)).to(torch.float64)
            packed.append((coef, fixed, mats, inside))
        if any(len(t[1]) > 2 for t in terms):
            raise NotImplementedError("terms of more than two factors")
        return packed

    @staticmethod
    def _evaluate(packed, widths: torch.Tensor, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """The polynomial at ``widths`` of shape (G,) or a batch (B, G); a term inside residual
        blocks or chain layers is multiplied by their ``blocks`` values (kept: 1, removed: 0; (K,) or
        (B, K); default all kept), a term marked -1 for a chain layer (it reads the layer's input in
        its place) by ``1 - value``."""
        w = widths.to(torch.float64)
        total = torch.zeros(w.shape[:-1], dtype=torch.float64, device=w.device)
        for coef, fixed, mats, inside in packed:
            factors = fixed.to(w.device) + torch.einsum("tkg,...g->...tk", mats.to(w.device), w)  # (..., terms, k)
            value = coef.to(w.device) * factors.prod(dim=-1)
            if inside.shape[1]:
                b = torch.ones(inside.shape[1], dtype=torch.float64) if blocks is None else blocks
                b = b.to(device=w.device, dtype=torch.float64).unsqueeze(-2)  # (..., 1, K)
                m = inside.to(w.device)
                value = value * torch.where(m > 0, b, torch.where(m < 0, 1 - b, torch.ones_like(b))).prod(dim=-1)
            total = total + value.sum(dim=-1)
        return total

    def _widths(self, widths) -> torch.Tensor:
        if isinstance(widths, torch.Tensor):
            if widths.shape[-1:] != (len(self.groups),):
                raise ValueError(
                    f"expected {len(self.groups)} widths (one per prunable group), got {tuple(widths.shape)}"
                )
            return widths
        full = {g.id: float(g.size) for g in self.groups}
        unknown = set(widths) - set(full)
        if unknown:
            raise ValueError(f"groups {sorted(unknown)} are not prunable groups of this model")
        full.update({int(k): float(v) for k, v in widths.items()})
        return torch.tensor([full[g.id] for g in self.groups], dtype=torch.float64)

    def full_widths(self) -> torch.Tensor:
        """The dense widths (every group's size), float64."""
        return torch.tensor([float(g.size) for g in self.groups], dtype=torch.float64)

    def widths_of(self, kept: dict[int, list[int]]) -> torch.Tensor:
        """The integer widths of a plan's ``kept`` mapping."""
        return self._widths({g: len(v) for g, v in kept.items()})

    def flops(self, widths, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """FLOPs at ``widths``: a tensor of one width per group in :attr:`groups` (or a (B, G) batch of
        them), or ``{group id: width}``; ``blocks``: a value per residual block of :attr:`blocks`
        (1 kept, 0 removed, soft in between; default all kept)."""
        return self._flops_const + self._evaluate(self._flop_terms, self._widths(widths), blocks)

    def params(self, widths, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters at ``widths`` (see :meth:`flops`)."""
        return self._params_const + self._evaluate(self._param_terms, self._widths(widths), blocks)


def axis_counts(graph: ChannelGraph, groups: list, path: str, role: str,
                atom_class: dict | None = None) -> tuple[float, torch.Tensor]:  # fmt: skip
    """(fixed count, coefficient per width of ``groups``) of one sliceable axis: the axis keeps
    ``fixed + coef @ widths`` positions at ``widths`` (``atom_class``: the graph's by default)."""
    index = {g.id: i for i, g in enumerate(groups)}
    atom_class = graph.atom_class if atom_class is None else atom_class
    coef = torch.zeros(len(groups), dtype=torch.float64)
    fixed = 0.0
    for atom in graph.sites[(path, role)]:
        gc = atom_class.get(atom)
        if gc is not None and gc[0] in index:
            coef[index[gc[0]]] += 1.0
        else:
            fixed += 1.0
    # A layer sees each channel of a group equally often (groups.py ensures it), so its count is
    # multiplicity x width, with multiplicity = positions / group size.
    sizes = torch.tensor([float(g.size) for g in groups], dtype=torch.float64)
    return fixed, coef / sizes.clamp(min=1)


def _is_parameter(model: nn.Module, path: str) -> bool:
    owner, _, name = path.rpartition(".")
    return isinstance(getattr(model.get_submodule(owner) if owner else model, name, None), nn.Parameter)
