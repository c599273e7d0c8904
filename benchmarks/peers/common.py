"""What the peer adapters share: which layers they may cut, our groups' producers, the output check of a
peer's model against our plan replayed, and the ``--flops`` argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dais_search.channels import ChannelGraph, trace_channels
from dais_search.errors import UserError

__all__ = ["PRUNABLE", "output_difference", "parse_flops", "peer_graph", "producers"]

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def peer_graph(dense: nn.Module, example: torch.Tensor, ignore: Sequence[str]) -> ChannelGraph:
    """Our channel analysis of ``dense`` as the peers can prune it: groups whose channels pass a channel pad,
    slice or split (an option-A shortcut's residual stream) stay whole, as they did before we followed those
    ops; neither peer prunes through them (BENCH.md reports stream pruning as a separate row)."""
    graph = trace_channels(dense, example, ignore, warn=False)
    atoms = {a for op in graph.index_ops for a in (*op.in_atoms, *(x for piece in op.pieces for x in piece))}
    touched = {graph.atom_class[a][0] for a in atoms if a in graph.atom_class}
    for g in graph.groups:
        if g.id in touched and g.prunable:
            g.prunable, g.reason = False, "a channel pad, slice or split the peers cannot prune through"
    return graph


def producers(graph: ChannelGraph, dense: nn.Module, peer: str) -> dict[int, list]:
    """Prunable group id -> its producer members (conv/linear outputs); a UserError naming ``peer`` and the
    layers to ignore for a group produced by anything else (peers cut conv/linear outputs only)."""
    out = {}
    for g in graph.groups:
        if not g.prunable:
            continue
        members = [p for p in g.producers if p.role == "out"]
        bad = [p.name for p in g.producers if p.role != "out" or not isinstance(dense.get_submodule(p.name), PRUNABLE)]
        if bad or not members:
            raise UserError(
                f"the {peer} peer maps groups produced by conv/linear layers; group {g.id} ({g.name}) is "
                f"produced by {bad or 'nothing'}: pass those layers in --ignore"
            )
        out[g.id] = members
    return out


def output_difference(a: nn.Module, b: nn.Module, input_shape: Sequence[int], seed: int = 0) -> float:
    """max |a(x) - b(x)| in eval mode on a seeded standard-normal ``x`` (batch of 2 at ``input_shape``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *tuple(input_shape)[1:]), generator=gen)
    modes = a.training, b.training
    a.eval()
    b.eval()
    try:
        with torch.no_grad():
            ya, yb = a(x.to(next(a.parameters()).device)), b(x.to(next(b.parameters()).device))
    finally:
        a.train(modes[0])
        b.train(modes[1])
    if ya.shape != yb.shape:
        return float("inf")
    return float((ya.float().cpu() - yb.float().cpu()).abs().max())


def parse_flops(text: str, dense_flops: int) -> float:
    """``"50%"`` or ``"0.5"``: that fraction of ``dense_flops``; a number above 1: absolute FLOPs."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise UserError(f"--flops {text!r}: use a percentage (50%), a fraction (0.5) or a FLOPs count") from exc
    if not value > 0:
        raise UserError(f"--flops {text!r} must be positive")
    if text.endswith("%") or value <= 1:
        return value * dense_flops
    return value
