"""ChannelPlan: which channels of each group to keep; applied by slicing, replayable from JSON.

A plan names kept channel indices per channel group (see :mod:`.groups`), the FLOPs and
parameters it achieves, and a fingerprint of the dense architecture it was made for.
:meth:`ChannelPlan.apply` slices a copy of the dense model into plain, smaller Conv/BN/Linear
modules under the same module names: no masks, no hooks, a real speed-up.
:meth:`ChannelPlan.mask` zeroes the removed channels of a traced copy instead, which is what
equivalence tests compare against.

Example:
    >>> plan = ChannelPlan.create(model, {3: [0, 2, 5], 7: list(range(8))}, input_shape=(1, 3, 32, 32))
    >>> plan.save("runs/x/plan.json")
    >>> pruned = ChannelPlan.load("runs/x/plan.json").apply(fresh_dense_model)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..cost import count_flops, count_params, example_input
from ..errors import UserError
from ..files import write_json
from .atoms import TensorInfo
from .blocks import ResidualBlock, find_blocks, remove_blocks
from .chain import find_chain_layers, layer_classes
from .groups import ChannelGraph, ChannelGroup, trace_channels
from .index_ops import keep_of, rewrite_index_ops
from .layers import handler_for

__all__ = ["ChannelPlan", "fingerprint", "keep_positions", "random_plan"]

FORMAT = "dais_search.plan"
VERSION = 1


def fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the architecture: module types, parameter and buffer names,
    shapes and dtypes. Weights do not enter it, so a plan replays on any checkpoint of the
    same architecture."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__name__};".encode())
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def keep_positions(
    graph: ChannelGraph, kept: Mapping[int, Iterable[int]], atom_class: Mapping[int, tuple[int, int]] | None = None
) -> dict[tuple[str, str], torch.Tensor]:
    """Kept indices along every sliceable axis (``(path, role) -> LongTensor``) for a plan's groups
    (``atom_class``: the graph's, or :func:`~.chain.layer_classes` with layers removed)."""
    keep = keep_of(graph.atom_class if atom_class is None else atom_class, kept)
    return {key: torch.tensor([pos for pos, atom in enumerate(atoms) if keep(atom)], dtype=torch.long)
            for key, atoms in graph.sites.items()}  # fmt: skip


def _check_kept(groups: Sequence[ChannelGroup], kept: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    by_id = {g.id: g for g in groups}
    clean: dict[int, list[int]] = {}
    for gid, idx in kept.items():
        gid = int(gid)
        if gid not in by_id:
            raise UserError(f"plan names channel group {gid}, but the model has groups 0..{len(groups) - 1}")
        g = by_id[gid]
        if not g.prunable:
            raise UserError(f"plan prunes group {gid} ({g.name}), which cannot be pruned: {g.reason}")
        idx = sorted(int(i) for i in idx)
        if len(set(idx)) != len(idx) or (idx and (idx[0] < 0 or idx[-1] >= g.size)):
            raise UserError(
                f"plan keeps invalid channels in group {gid} ({g.name}): indices must be unique, 0..{g.size - 1}"
            )
        if len(idx) < g.min_keep:
            raise UserError(f"plan keeps {len(idx)} channels of group {gid} ({g.name}); it needs at least {g.min_keep}")
        if len(idx) % g.round_to:
            raise UserError(
                f"plan keeps {len(idx)} channels of group {gid} ({g.name}); need a multiple of {g.round_to}"
            )
        if g.blocks:
            kept_set = set(idx)
            broken = [b for b in g.blocks if 0 < len(kept_set.intersection(b)) < len(b)]
            if broken:
                raise UserError(
                    f"plan splits the block {list(broken[0])} of group {gid} ({g.name}); grouped convs and GroupNorm "
                    f"keep or remove whole blocks"
                )
        if len(idx) < g.size:
            clean[gid] = idx
    return clean


def _get_owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    owner, _, name = path.rpartition(".")
    return (model.get_submodule(owner) if owner else model), name


def _slice_model(model: nn.Module, graph: ChannelGraph, kept: Mapping[int, Sequence[int]],
                 removed: Sequence[ResidualBlock] = ()) -> None:  # fmt: skip
    """Slices ``model`` (whose architecture ``graph`` was traced from) in place, then removes the
    ``removed`` blocks and layers; a module that calls a channel index op with other constants after
    the cut is replaced by its rewritten fx trace. What read a removed layer's output is sliced as
    the layer's input channels (:func:`~.chain.layer_classes`)."""
    classes = layer_classes(graph, removed)
    positions = keep_positions(graph, kept, classes)
    by_module: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    changed: set[str] = set()
    for (path, role), keep in positions.items():
        if role.startswith("dim"):
            if len(keep) == len(graph.sites[(path, role)]):
                continue
            owner, name = _get_owner(model, path)
            value = getattr(owner, name).index_select(int(role[3:]), keep)
            old = getattr(owner, name)
            setattr(owner, name, nn.Parameter(value, old.requires_grad) if isinstance(old, nn.Parameter) else value)
            continue
        by_module[path][role] = keep
        if len(keep) < len(graph.sites[(path, role)]):
            changed.add(path)
    with torch.no_grad():
        for path in changed:
            module = model.get_submodule(path)
            handler = handler_for(module)
            if handler is None:  # pragma: no cover - sites are only recorded for handled modules
                raise AssertionError(f"no handler to slice {path}")
            handler.slice(module, by_module[path])
    # Channel pads, slices and splits with the pruned constants, in the modules that call them.
    rewrite_index_ops(model, graph.index_ops, keep_of(classes, kept))
    remove_blocks(model, removed)


def _apply_mask(x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = -1
    # where, not multiply: a removed channel may hold inf/nan (e.g. after a division by it).
    return torch.where(keep.view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _blocks_of(dense: nn.Module, graph: ChannelGraph, names: Sequence[str]) -> list[ResidualBlock]:
    """The removable residual blocks and chain layers named ``names``; a UserError naming the unknown
    ones and the choices."""
    if not names:
        return []
    blocks = {b.name: b for b in find_blocks(dense, graph.gm, graph.infos)}
    if set(names) - set(blocks):  # chain layers are looked for only when named
        blocks |= {b.name: b for b in find_chain_layers(dense, graph)}
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise UserError(f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a removable "
                        f"residual block or chain layer of this model; the removable ones: "
                        f"{', '.join(blocks) or 'none'}")  # fmt: skip
    return [blocks[n] for n in names]


def _masked_copy(graph: ChannelGraph, kept: Mapping[int, Sequence[int]],
                 removed: Sequence[ResidualBlock] = ()) -> fx.GraphModule:  # fmt: skip
    gm = copy.deepcopy(graph.gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    for block in removed:  # the branch times 0: the add passes its skip through
        if block.kind == "layer":  # the layer's readers read its input instead
            by_name[block.node].replace_all_uses_with(by_name[block.source])
            continue
        add = by_name[block.node]
        branch = add.args[1 - block.skip]
        with gm.graph.inserting_before(add):
            zero = gm.graph.call_function(torch.mul, (branch, 0.0))
        add.replace_input_with(branch, zero)
    kept_atom = keep_of(layer_classes(graph, removed), kept)
    nodes = list(gm.graph.nodes)
    for i, node in enumerate(nodes):
        info = graph.infos.get(node.name)
        if not isinstance(info, TensorInfo) or info.atoms is None or node.op == "output":
            continue
        keep = [kept_atom(atom) for atom in info.atoms]
        if all(keep):
            continue
        name = f"_dais_keep_{i}"
        gm.register_buffer(name, torch.tensor(keep))
        with gm.graph.inserting_after(node):
            mask_node = gm.graph.get_attr(name)
        with gm.graph.inserting_after(mask_node):
            masked = gm.graph.call_function(_apply_mask, (node, mask_node, info.cdim))
        node.replace_all_uses_with(masked, delete_user_cb=lambda user, m=masked: user is not m)
    gm.recompile()
    return gm


@dataclass
class ChannelPlan:
    """Kept channels per group of a dense architecture, and what they achieve.

    Attributes:
        kept: group id -> sorted kept channel indices (groups not named keep everything).
        input_shape: the example input shape the groups and FLOPs were computed at.
        fingerprint: :func:`fingerprint` of the dense model.
        flops, params: of the pruned model (FLOPs at ``input_shape``).
        dense_flops, dense_params: of the dense model.
        ignore: module paths whose outputs were excluded from pruning.
        group_sizes: group id -> size, for readers of the JSON file.
        meta: free-form provenance (model name, budget, method).
        removed_blocks: names of residual blocks removed whole (:mod:`.blocks`): their branch is
            gone and the addition passes its skip through.
    """

    kept: dict[int, list[int]]
    input_shape: tuple[int, ...]
    fingerprint: str
    flops: int
    params: int
    dense_flops: int
    dense_params: int
    ignore: tuple[str, ...] = ()
    group_sizes: dict[int, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    removed_blocks: tuple[str, ...] = ()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dense: nn.Module,
        kept: Mapping[int, Sequence[int]],
        input_shape: Sequence[int] = (1, 3, 32, 32),
        ignore: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        graph: ChannelGraph | None = None,
        removed_blocks: Iterable[str] = (),
    ) -> ChannelPlan:
        """Validates ``kept`` (and ``removed_blocks``) against the model and measures what it achieves.

        Raises:
            UserError: a group that does not exist or cannot be pruned, bad indices, too few
                channels, a split block, a block name that is not a removable block.
        """
        input_shape = tuple(int(s) for s in input_shape)
        ignore = tuple(ignore)
        graph = graph or trace_channels(dense, example_input(dense, input_shape), ignore)
        clean = _check_kept(graph.groups, kept)
        removed = tuple(removed_blocks)
        pruned = copy.deepcopy(dense)
        _slice_model(pruned, graph, clean, _blocks_of(dense, graph, removed))
        return cls(
            kept=clean,
            input_shape=input_shape,
            fingerprint=fingerprint(dense),
            flops=count_flops(pruned, input_shape),
            params=count_params(pruned),
            dense_flops=count_flops(dense, input_shape),
            dense_params=count_params(dense),
            ignore=ignore,
            group_sizes={g.id: g.size for g in graph.groups if g.id in clean},
            meta=dict(meta or {}),
            removed_blocks=removed,
        )

    # -- use ---------------------------------------------------------------------------------
    def _graph(self, dense: nn.Module, graph: ChannelGraph | None = None) -> ChannelGraph:
        actual = fingerprint(dense)
        if actual != self.fingerprint:
            raise UserError(
                f"the plan was made for another architecture (fingerprint {self.fingerprint}, this model "
                f"{actual}{', ' + repr(self.meta['model']) if 'model' in self.meta else ''}); "
                f"apply it to the dense model it was searched on"
            )
        graph = graph or trace_channels(dense, example_input(dense, self.input_shape), self.ignore, warn=False)
        _check_kept(graph.groups, self.kept)
        return graph

    def apply(self, dense: nn.Module, graph: ChannelGraph | None = None) -> nn.Module:
        """A physically smaller copy of ``dense``: same class and module names, sliced weights.

        ``dense`` is left untouched. The copy keeps ``dense``'s train/eval mode. ``graph``, a
        :func:`~.groups.trace_channels` result of ``dense`` itself, saves a second trace.

        Raises:
            UserError: if ``dense`` is not the architecture the plan was made for.
        """
        graph = self._graph(dense, graph)
        pruned = copy.deepcopy(dense)
        _slice_model(pruned, graph, self.kept, _blocks_of(dense, graph, self.removed_blocks))
        return pruned

    def mask(self, dense: nn.Module, graph: ChannelGraph | None = None) -> nn.Module:
        """A traced copy of ``dense`` whose removed channels are zero wherever they appear
        (``graph`` as in :meth:`apply`; its trace must come from ``dense``, whose weights it holds)."""
        graph = self._graph(dense, graph)
        masked = _masked_copy(graph, self.kept, _blocks_of(dense, graph, self.removed_blocks))
        masked.train(dense.training)
        return masked

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.dense_flops if self.dense_flops else 1.0

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "ignore": list(self.ignore),
            "dense": {"flops": self.dense_flops, "params": self.dense_params},
            "pruned": {"flops": self.flops, "params": self.params, "flops_ratio": round(self.flops_ratio, 6)},
            "meta": self.meta,
            "groups": [{"id": g, "size": self.group_sizes.get(g), "kept": idx} for g, idx in sorted(self.kept.items())],
        } | ({"removed_blocks": list(self.removed_blocks)} if self.removed_blocks else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> ChannelPlan:
        if data.get("format") != FORMAT:
            raise UserError(f"{source} is not a dais_search plan (format {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise UserError(
                f"{source} has plan version {data.get('version')}; this dais_search reads version {VERSION}"
            )
        try:
            return cls(
                kept={int(g["id"]): [int(i) for i in g["kept"]] for g in data["groups"]},
                input_shape=tuple(int(s) for s in data["input_shape"]),
                fingerprint=str(data["fingerprint"]),
                flops=int(data["pruned"]["flops"]),
                params=int(data["pruned"]["params"]),
                dense_flops=int(data["dense"]["flops"]),
                dense_params=int(data["dense"]["params"]),
                ignore=tuple(data.get("ignore", ())),
                group_sizes={int(g["id"]): g.get("size") for g in data["groups"]},
                meta=dict(data.get("meta", {})),
                removed_blocks=tuple(str(b) for b in data.get("removed_blocks", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source} is missing or has a malformed field ({exc!r})") from exc

    def save(self, path: str | os.PathLike) -> None:
        """Writes the plan as JSON, atomically (temporary file + ``os.replace``)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelPlan:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UserError(f"plan file {path!r} does not exist")
        try:
            with open(path) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"plan file {path!r} is not valid JSON ({exc}); it may be truncated") from exc
        return cls.from_dict(data, f"plan file {path!r}")


def random_plan(
    dense: nn.Module,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    keep: float | tuple[float, float] = (0.1, 1.0),
    seed: int = 0,
    ignore: Iterable[str] = (),
    graph: ChannelGraph | None = None,
) -> ChannelPlan:
    """A plan keeping a random subset of every prunable group (whole blocks, >= ``min_keep``).

    Args:
        keep: the fraction to keep in every group, or a (low, high) range drawn per group.
    """
    rng = np.random.default_rng(seed)
    graph = graph or trace_channels(dense, example_input(dense, input_shape), tuple(ignore))
    kept: dict[int, list[int]] = {}
    for g in graph.groups:
        if not g.prunable:
            continue
        ratio = keep if isinstance(keep, (int, float)) else rng.uniform(*keep)
        units = g.blocks or [(i,) for i in range(g.size)]
        width = len(units[0])
        n = min(len(units), max(-(-g.min_keep // width), round(ratio * len(units))))
        chosen = rng.choice(len(units), size=n, replace=False)
        kept[g.id] = sorted(i for u in chosen for i in units[u])
    return ChannelPlan.create(dense, kept, input_shape, ignore, {"method": "random", "seed": seed}, graph)
