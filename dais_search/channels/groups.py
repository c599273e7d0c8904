"""Channel groups: which channels of a network must be kept or removed together.

The model is traced with torch.fx and run once on an example input to record shapes. Every
channel a layer produces becomes an *atom*; operations propagate atoms from their inputs to their
outputs (BN, activations, pooling pass them through; concatenation joins lists; flatten repeats
each channel over the features it becomes) and *tie* atoms that must agree (operands of an
element-wise add or mul, the input and output of a depthwise conv). Tied atoms form a channel
*class*: one unit of pruning. Classes produced by the same layer, or tied across layers, form a
:class:`ChannelGroup`.

The rule that keeps this safe: any operation whose channel semantics are not understood (an
unknown module or function, channel slicing or padding, a reshape that splits the channel axis,
a norm whose statistics mix channels) *fixes* every atom it touches, making those groups
unprunable, with one warning per kind of operation that names it and where it is. The model's
outputs are fixed too. A result is therefore either right or not pruned, never silently wrong.

Example:
    >>> groups = find_channel_groups(create_model("resnet56"), torch.randn(1, 3, 32, 32))
    >>> [g.size for g in groups if g.prunable][:3]
    [16, 16, 16]
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .atoms import Tracker
from .index_ops import IndexOp, check_owners
from .trace import trace_with_shapes
from .walk import Walker

__all__ = ["ChannelGraph", "ChannelGroup", "Member", "find_channel_groups", "trace_channels"]


@dataclass(frozen=True)
class Member:
    """Where one group's channels sit in one layer.

    Attributes:
        name: module path (or parameter path for ``role`` ``dimK``).
        role: ``"out"`` (channels the layer produces), ``"in"`` (channels it reads), ``"ch"``
            (per-channel parameters of a norm/activation) or ``"dimK"`` (dimension K of a parameter).
        positions: indices along that layer's channel axis that belong to the group.
        classes: ``classes[i]`` is the group channel at ``positions[i]``.
    """

    name: str
    role: str
    positions: tuple[int, ...]
    classes: tuple[int, ...]


@dataclass
class ChannelGroup:
    """A set of channels that are pruned together.

    Attributes:
        id: index in the list :func:`find_channel_groups` returns (stable for an architecture).
        size: number of channels (classes) in the group.
        producers: layers whose outputs create the channels.
        consumers: layers that read them.
        members: per-channel parameters sliced with them (BN, PReLU, layer-scale parameters).
        blocks: channels that can only go together (grouped convs, GroupNorm), or ``None``.
        prunable: whether channels of this group may be removed.
        reason: why not, when ``prunable`` is false.
        min_keep: fewest channels a plan may keep.
        round_to: kept counts must be multiples of this (the block width for grouped convs).
    """

    id: int
    size: int
    producers: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    blocks: list[tuple[int, ...]] | None = None
    prunable: bool = True
    reason: str = ""
    min_keep: int = 1
    round_to: int = 1

    @property
    def name(self) -> str:
        """The first producer's module path, a readable label."""
        return self.producers[0].name if self.producers else f"group{self.id}"


@dataclass
class ChannelGraph:
    """Everything the analysis found: the groups, and what plans, masks and FLOPs models need.

    Attributes:
        groups: the channel groups (see :func:`find_channel_groups`).
        gm: the fx trace of the model (it shares modules with the model).
        sites: sliceable axes, ``(path, role) -> atoms``.
        infos: traced tensors by node name.
        calls: ``(module path, input shape, output shape)`` of every call of a handled module.
        param_sites: parameter paths read by element-wise ops, with their shapes.
        atom_class: ``atom -> (group id, class index)`` for atoms of groups.
        index_ops: the channel pads, slices and splits followed (:mod:`.index_ops`), which a
            pruned model calls with other constants.
    """

    groups: list[ChannelGroup]
    gm: fx.GraphModule
    sites: dict[tuple[str, str], list[int]]
    infos: dict[str, Any]
    calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    param_shapes: dict[str, tuple[int, ...]]
    atom_class: dict[int, tuple[int, int]]
    index_ops: list[IndexOp] = field(default_factory=list)


def trace_channels(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    ignore: Iterable[str | nn.Module] = (),
    warn: bool = True,
    streams: bool = True,
) -> ChannelGraph:
    """Runs the channel analysis (see the module docstring) and returns the full result.

    The model is traced twice when its control flow depends on ``self.training``: the eval-mode
    trace gives the FLOPs (``calls``) and the graph that masks are applied to; the train-mode trace
    adds what only training runs (auxiliary heads), walked with the same tracker, so that a layer
    seen in both is one set of sites and a train-only consumer is sliced with its group.

    Args:
        model: the dense model (not modified).
        example_input: an input (or tuple of inputs) of the shape the model will see.
        ignore: module paths or modules whose output channels must not be pruned.
        warn: warn about operations that block pruning (off when replaying a plan).
        streams: whether residual streams may be pruned; false marks every group that more than one
            layer produces (channels tied by residual additions) unprunable. Plans made either way
            replay on the default analysis.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    gm, opaque_modules, shapes = trace_with_shapes(model, inputs)
    model_tensors = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    model_tensors |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    walker = Walker(gm, shapes, opaque_modules, model_tensors)
    walker.run()
    tk = walker.tk
    walkers = [walker]
    train_walk = _train_mode_walk(model, inputs, gm, model_tensors, tk)
    if train_walk is not None:
        walkers.append(train_walk)

    names = {m: p for p, m in model.named_modules()}
    for item in ignore:
        path = names.get(item, item) if isinstance(item, nn.Module) else item
        if not any(key[0] == path for key in tk.sites):
            raise ValueError(f"ignore: {path!r} is not a traced layer of {type(model).__name__}")
        for (p, _role), atoms in tk.sites.items():
            if p == path:
                tk.fix(atoms, f"ignored: {path}")

    index_ops = _followed_index_ops(model, walkers)
    groups, atom_class = _assemble(tk)
    if not streams:
        for g in groups:
            if g.prunable and len({p.name for p in g.producers}) > 1:
                g.prunable, g.reason = False, "a residual stream (budget.prune_streams = false)"
    if warn:
        _warn(walkers, groups)
    infos = {n.name: walker.info.get(n) for n in gm.graph.nodes}
    param_shapes = {k: v for w in walkers for k, v in w.param_shapes.items()}
    return ChannelGraph(groups, gm, dict(tk.sites), infos, walker.calls, param_shapes, atom_class, index_ops)


def _followed_index_ops(model: nn.Module, walkers: list[Walker]) -> list[IndexOp]:
    """The walks' index ops whose owning modules can be rewritten; the others' channels are fixed
    (and named in the warnings, as an op the analysis does not understand)."""
    ops = [op for w in walkers for op in w.index_ops]
    bad = check_owners(model, ops)
    for w in walkers:
        for op in w.index_ops:
            if op.owner in bad:
                name = {"pad": "pad", "slice": "getitem", "narrow": "narrow", "split": "split"}[op.kind]
                w.tk.fix([*op.in_atoms, *(a for p in op.pieces for a in p)], f"{name} at {op.owner}: {bad[op.owner]}")
                w.unknown[name].append(op.owner or "(model)")
    return [op for op in ops if op.owner not in bad]


def _train_mode_walk(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], eval_gm: fx.GraphModule, model_tensors: set[str], tk: Tracker
) -> Walker | None:
    """The walk of the train-mode trace into ``tk``, when that trace differs from the eval one."""
    try:
        gm, opaque_modules, shapes = trace_with_shapes(model, inputs, training=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the eval trace stands alone, with a warning
        warnings.warn(
            f"dais_search: {type(model).__name__} cannot be traced in train mode ({exc}); layers that only training "
            f"runs are not analysed",
            stacklevel=3,
        )
        return None
    if gm.code == eval_gm.code:
        return None
    walker = Walker(gm, shapes, opaque_modules, model_tensors, tk)
    walker.run()
    return walker


def _assemble(tk: Tracker) -> tuple[list[ChannelGroup], dict[int, tuple[int, int]]]:
    """The groups from the tracker: classes joined by the union-find ``groups``, then split into
    *segments* of classes that the same layers see equally often.

    Without index ops every layer sees all of a joined set's classes or none. Through a channel pad or
    slice it may not: the stream of stage 1 of an option-A ResNet is read by the layers of all stages,
    the channels its shortcut pads in only by the later stages. Each segment is a group of its own, so a
    layer's width stays a sum of group widths (the FLOPs model's polynomial). Groups are numbered by
    where they are first produced.
    """
    root_of_group: dict[int, int] = {}
    group_classes: dict[int, list[int]] = {}
    for (_path, role), atoms in tk.sites.items():  # sites are in graph order
        if role != "out":
            continue
        for a in atoms:
            g = tk.groups.find(a)
            root_of_group.setdefault(g, len(root_of_group))
            classes = group_classes.setdefault(g, [])
            c = tk.classes.find(a)
            if c not in classes:
                classes.append(c)
    member_classes = {c for cs in group_classes.values() for c in cs}

    # Where each class is seen, and how often: its signature.
    signature: dict[int, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for key, atoms in tk.sites.items():
        for a in atoms:
            c = tk.classes.find(a)
            if c in member_classes:
                signature[c][key] += 1
    # Segments are numbered by where they are first produced (sites in graph order, then position), as
    # groups were before index ops were followed: the option-A streams, for instance, keep their ids.
    first_seen: dict[tuple[int, frozenset], int] = {}
    parts: dict[tuple[int, frozenset], list[int]] = {}
    order = 0
    for (_path, role), atoms in tk.sites.items():
        if role != "out":
            continue
        for a in atoms:
            g, c = tk.groups.find(a), tk.classes.find(a)
            key = (g, frozenset(signature[c].items()))
            if key not in first_seen:
                first_seen[key], order = order, order + 1
            if c not in parts.setdefault(key, []):
                parts[key].append(c)
    keys = sorted(parts, key=first_seen.__getitem__)
    segments = [parts[k] for k in keys]
    segments_of: dict[int, list[int]] = defaultdict(list)  # union-find root -> its segments' ids
    for sid, (g, _) in enumerate(keys):
        segments_of[g].append(sid)
    seg_of_class = {c: sid for sid, cs in enumerate(segments) for c in cs}
    class_index = {c: i for cs in segments for i, c in enumerate(cs)}

    fixed: dict[int, str] = {}

    def fix_set(g: int, reason: str) -> None:
        for sid in segments_of[g]:
            fixed.setdefault(sid, reason)

    for a, reason in tk.fixed.items():
        g = tk.groups.find(a)
        if g not in root_of_group:
            continue
        c = tk.classes.find(a)
        if c in seg_of_class:
            fixed.setdefault(seg_of_class[c], reason)
        else:  # fixed somewhere no layer reads: conservatively, the whole joined set
            fix_set(g, reason)
    members: dict[int, list[tuple[str, str, list[int], list[int]]]] = defaultdict(list)
    for (path, role), atoms in tk.sites.items():
        per_group: dict[int, tuple[list[int], list[int]]] = {}
        for pos, a in enumerate(atoms):
            g = tk.groups.find(a)
            if g not in root_of_group:
                continue
            c = tk.classes.find(a)
            if c not in seg_of_class:
                fix_set(g, f"{path} reads channels no layer produces")
                continue
            positions, classes = per_group.setdefault(seg_of_class[c], ([], []))
            positions.append(pos)
            classes.append(class_index[c])
        for sid, (positions, classes) in per_group.items():
            counts = defaultdict(int)
            for c in classes:
                counts[c] += 1
            if len(counts) != len(segments[sid]) or len(set(counts.values())) != 1:  # pragma: no cover
                # Segments are made so that this cannot happen; FLOPs would depend on which channels are kept.
                fixed.setdefault(sid, f"{path} ({role}) sees only part of the group's channels")
            members[sid].append((path, role, positions, classes))

    block_segments: dict[int, set[int]] = defaultdict(set)
    for c, sid in seg_of_class.items():
        block_segments[tk.blocks.find(c)].add(sid)
    for sids in block_segments.values():
        if len(sids) > 1:
            for sid in sids:
                fixed.setdefault(sid, "a block of channels that must go together spans channels different layers see")

    groups: list[ChannelGroup] = []
    for sid, classes_of in enumerate(segments):
        group = ChannelGroup(id=sid, size=len(classes_of))
        for path, role, positions, classes in members[sid]:
            member = Member(path, role, tuple(positions), tuple(classes))
            (group.producers if role == "out" else group.consumers if role == "in" else group.members).append(member)
        block_of: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(classes_of):
            block_of[tk.blocks.find(c)].append(i)
        blocks = sorted(tuple(sorted(b)) for b in block_of.values())
        if any(len(b) > 1 for b in blocks):
            group.blocks = blocks
            widths = {len(b) for b in blocks}
            if len(widths) != 1:
                fixed.setdefault(sid, "blocks of different widths")
            group.round_to = group.min_keep = max(widths)
        if sid in fixed:
            group.prunable, group.reason = False, fixed[sid]
        groups.append(group)
    atom_class: dict[int, tuple[int, int]] = {}
    for a in range(len(tk.classes.parent)):
        c = tk.classes.find(a)
        if c in seg_of_class:
            atom_class[a] = (seg_of_class[c], class_index[c])
    return groups, atom_class


def _warn(walkers: list[Walker], groups: list[ChannelGroup]) -> None:
    blocked = {g.reason for g in groups if not g.prunable}
    unknown: dict[str, list[str]] = defaultdict(list)
    for walker in walkers:
        for op, places in walker.unknown.items():
            unknown[op] += places
    for op, places in unknown.items():
        if not any(r.startswith(f"{op} at ") for r in blocked):
            continue
        unique = list(dict.fromkeys(places))
        where = ", ".join(unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")
        warnings.warn(
            f"dais_search: cannot follow channels through {op} (at {where}); the channel groups it touches "
            f"are not pruned",
            stacklevel=3,
        )


def find_channel_groups(
    model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], ignore: Iterable[str | nn.Module] = ()
) -> list[ChannelGroup]:
    """The channel groups of ``model``: sets of channels that must be kept or removed together.

    Args:
        model: any ``nn.Module`` (not modified).
        example_input: an input of the shape the model will see (batch size is irrelevant).
        ignore: module paths or modules whose output channels must not be pruned.

    Returns:
        Every group that some conv/linear layer produces, prunable or not (``reason`` says why
        not), in graph order.

    Example:
        >>> groups = find_channel_groups(model, torch.randn(1, 3, 32, 32), ignore=["conv1"])
        >>> [(g.name, g.size) for g in groups if g.prunable]
    """
    return trace_channels(model, example_input, ignore).groups
