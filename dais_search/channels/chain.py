"""Layers of a plain chain that can be removed: ``y = act(bn(conv(x)))`` with ``y`` shaped like ``x``.

The layer granularity of multi-grain pruning (MGP) for networks without residual blocks (VGG): a
conv (or linear) layer with the channel-wise ops that follow it (BN, activation, dropout) is a
*segment*; where its output has the shape of its input (stride 1, as many outputs as inputs), the
segment can be replaced by its input and what read its output reads the input instead.

The kept widths on the two sides need not match: the segment's output channels (group ``b``, which
only its conv produces) simply stop existing, and every reader of group ``b`` reads the input's
channels (group ``a``) in their place: channel ``i`` of the output is replaced by channel ``i`` of
the input. :func:`layer_classes` is that substitution on the trace's channel classes, so a plan that
removes layers is sliced and masked by the ordinary machinery (what read ``(b, c)`` is sliced as
``(a, c')``), and the FLOPs model counts the readers at group ``a``'s width.

A search gates such a layer with an indicator ``g``: its output becomes ``g * y * m_b + (1 - g) * x * m_a``
(:class:`~dais_search.search.gates.GatedModel`), which at ``g = 0`` is exactly the network without it.

Found from the trace, not from module names; only where the segment's modules are called once, from
a submodule whose forward fx can trace alone (``nn.Sequential``), the rewrite that removes them.
Layers in the model's own ``forward`` are not removable (there is no submodule to rewrite).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx
from torch import nn

from .atoms import TensorInfo
from .blocks import ResidualBlock
from .groups import ChannelGraph
from .index_ops import owner_problem
from .trace import symbolic_trace

__all__ = ["find_chain_layers", "layer_classes"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _tensor(graph: ChannelGraph, node: fx.Node) -> TensorInfo | None:
    info = graph.infos.get(node.name)
    return info if isinstance(info, TensorInfo) and info.cdim is not None else None


def _segment(graph: ChannelGraph, conv: fx.Node) -> list[fx.Node]:
    """``conv`` and the module calls after it that pass its channels on one to one (same atoms, same
    shape), each the only user of the one before."""
    out = _tensor(graph, conv)
    nodes, node = [conv], conv
    while len(node.users) == 1:
        (user,) = node.users
        info = _tensor(graph, user) if user.op == "call_module" else None
        if info is None or user.args[:1] != (node,) or info.shape != out.shape or info.atoms != out.atoms:
            break
        nodes.append(user)
        node = user
    return nodes


def _one_group(graph: ChannelGraph, atoms: Sequence[int] | None) -> int | None | bool:
    """The group id whose channels ``atoms`` are, one to one and all of them; ``None`` when no atom is
    in a group; ``False`` otherwise."""
    if atoms is None:
        return None
    classes = [graph.atom_class.get(a) for a in atoms]
    if all(c is None for c in classes):
        return None
    gids = {c[0] for c in classes if c is not None}
    if len(gids) != 1 or any(c is None for c in classes):
        return False
    (gid,) = gids
    size = next(g.size for g in graph.groups if g.id == gid)
    return gid if size == len(atoms) and len({c[1] for c in classes}) == size else False


def find_chain_layers(model: nn.Module, graph: ChannelGraph) -> list[ResidualBlock]:
    """The removable layers of plain chains in ``model`` (traced as ``graph``), in graph order; each
    a :class:`~.blocks.ResidualBlock` of kind ``"layer"`` named by its conv's path."""
    calls: dict[str, int] = {}
    for node in graph.gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    producers = {g.id: [p.name for p in g.producers] for g in graph.groups}
    groups = {g.id: g for g in graph.groups}
    owner_calls: dict[str, set[str] | None] = {}
    found = []
    for conv in graph.gm.graph.nodes:
        if conv.op != "call_module" or not isinstance(model.get_submodule(str(conv.target)), _LAYERS):
            continue
        if getattr(model.get_submodule(str(conv.target)), "groups", 1) != 1 or not conv.args:
            continue
        source = conv.args[0]
        x, out = _tensor(graph, source) if isinstance(source, fx.Node) else None, _tensor(graph, conv)
        if x is None or out is None or x.shape != out.shape or x.cdim != out.cdim:
            continue
        nodes = _segment(graph, conv)
        paths = [str(n.target) for n in nodes]
        out_group, in_group = _one_group(graph, out.atoms), _one_group(graph, x.atoms)
        if out_group in (None, False) or in_group is False or in_group == out_group:
            continue
        if not _same_constraints(groups[out_group], groups.get(in_group)):
            continue
        if producers[out_group] != [paths[0]] or any(calls[p] != 1 for p in paths):
            continue
        owner = paths[0].rpartition(".")[0]
        if not owner or any(p.rpartition(".")[0] != owner for p in paths):
            continue
        if owner not in owner_calls:  # each owner traced once, however many layers it holds
            owner_calls[owner] = None if owner_problem(model, owner) else _module_calls(model, owner)
        prefix = len(owner) + 1
        if owner_calls[owner] is None or not {paths[0][prefix:], paths[-1][prefix:]} <= owner_calls[owner]:
            continue  # the rewrite needs the owner's own trace to call the segment's first and last modules
        found.append(ResidualBlock(paths[0], owner, "", 0, -1, nodes[-1].name, tuple(paths), paths[-1], "layer",
                                   source.name))  # fmt: skip
    return found


def _module_calls(model: nn.Module, owner: str) -> set[str]:
    """The module targets the owner's own trace calls (relative to the owner)."""
    gm, _ = symbolic_trace(model.get_submodule(owner))
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def _same_constraints(out_group, in_group) -> bool:
    """Whether the input's channels may take the output's place: the output group is freely prunable
    (its readers accept any subset), and so is the input's group, or it is none (never pruned). Else a
    constraint of the readers (a channel reduction, whole blocks of a grouped conv) would bind the
    input's channels after the removal, which the input's group, traced with the layer, does not know."""
    free = lambda g: g.prunable and not g.blocks and g.round_to == 1  # noqa: E731
    return free(out_group) and (in_group is None or free(in_group))


def layer_classes(graph: ChannelGraph, layers: Sequence[ResidualBlock]) -> dict[int, tuple[int, int]]:
    """``graph.atom_class`` with the ``layers`` removed: every channel class of a removed layer's
    output group becomes the class of the input channel in its place (through chains of removed
    layers); atoms whose replacement is in no group are dropped (always kept)."""
    chain = [b for b in layers if b.kind == "layer"]
    if not chain:
        return graph.atom_class
    into: dict[tuple[int, int], tuple[int, int] | None] = {}
    for layer in chain:
        out, x = graph.infos[layer.node], graph.infos[layer.source]
        for i, atom in enumerate(out.atoms):
            into[graph.atom_class[atom]] = graph.atom_class.get(x.atoms[i]) if x.atoms is not None else None

    def resolve(gc: tuple[int, int] | None) -> tuple[int, int] | None:
        while gc is not None and gc in into:
            gc = into[gc]
        return gc

    classes = {}
    for atom, gc in graph.atom_class.items():
        new = resolve(gc)
        if new is not None:
            classes[atom] = new
    return classes
