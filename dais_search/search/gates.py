"""Channel indicators (DAIS) and keep ratios (DSA) for the prunable groups, and where they act.

:class:`ChannelGates` holds, per prunable group, a vector of indicator logits ``alpha`` (paper
symbols) and a keep-ratio logit ``theta``; both are registered parameters. Its ``forward``
returns one soft mask per group:

* ``dais``: ``m = sigmoid(alpha / T)`` (Guan et al., Eq. 7);
* ``dsa``: ``m = allocate(scores, sigmoid(theta), T)`` with fixed channel scores (log BN |gamma|);
* ``dais+dsa``: ``m = allocate(alpha, sigmoid(theta), T)``: the learned ratio decides how many
  channels a group keeps, the learned indicators decide which.

:func:`attach_gates` rewrites the traced model so that each group's mask multiplies the output of
each of its producers once, after the producer's BN (before the activation), as DSA places it.
The gated model shares its weights with the dense model.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from ..channels import ChannelGraph, ChannelGroup
from .allocation import allocate

__all__ = ["ChannelGates", "attach_gates"]


class ChannelGates(nn.Module):
    """Indicator logits and keep ratios of the prunable groups.

    Args:
        groups: the prunable groups, in the order of :class:`~dais_search.channels.FlopsModel`.
        mode: ``"dais"``, ``"dsa"`` or ``"dais+dsa"``.
        scores: per group, initial channel scores (higher = more important), e.g. log filter
            norms; they initialise ``alpha`` (and are the fixed scores in ``dsa`` mode).
        keep: initial keep ratio of every group.
        temperature: initial temperature.
    """

    def __init__(
        self,
        groups: list[ChannelGroup],
        mode: str = "dais+dsa",
        scores: list[torch.Tensor] | None = None,
        keep: float = 0.9,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in ("dais", "dsa", "dais+dsa"):
            raise ValueError(f"unknown gate mode {mode!r}")
        self.mode = mode
        self.group_ids = [g.id for g in groups]
        self.names = [g.name for g in groups]
        scores = scores or [torch.zeros(g.size) for g in groups]
        # Standardised scores, so that one temperature suits every group.
        init = [(s - s.mean()) / s.std().clamp(min=1e-6) if s.numel() > 1 else s * 0 for s in scores]
        if mode == "dais":
            init = [x + 2.0 for x in init]  # start with most channels on: sigmoid(alpha / T0) near 1
        self.alpha = nn.ParameterList([nn.Parameter(x.clone().float()) for x in init])
        self.register_buffer("scores", torch.cat(init).float() if init else torch.zeros(0))
        logit = torch.logit(torch.tensor(min(max(keep, 0.02), 0.98)))
        self.theta = nn.Parameter(torch.full((len(groups),), float(logit)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.sizes = [g.size for g in groups]
        self.fixed_masks: list[torch.Tensor] | None = None  # set by the searcher to reuse one step's masks

    def keep_ratios(self) -> torch.Tensor:
        """DSA keep ratio of every group (``sigmoid(theta)``)."""
        return torch.sigmoid(self.theta)

    def forward(self) -> list[torch.Tensor]:
        """Soft masks, one (size,) tensor per group."""
        if self.fixed_masks is not None:
            return self.fixed_masks
        t = float(self.temperature)
        if self.mode == "dais":
            return [torch.sigmoid(a / t) for a in self.alpha]
        keep = self.keep_ratios()
        fixed = self.scores.split(self.sizes) if self.mode == "dsa" else None
        return [allocate(fixed[i] if fixed is not None else a, keep[i], t) for i, a in enumerate(self.alpha)]

    def expected_width(self, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Expected kept channels of every group (a (G,) tensor): the sums of the soft masks."""
        masks = masks if masks is not None else self()
        return torch.stack([m.sum() for m in masks]) if masks else torch.zeros(0)

    def binarization_gap(self, masks: list[torch.Tensor] | None = None) -> float:
        """``mean(min(m, 1 - m))`` over all channels: 0 when every mask is 0 or 1."""
        masks = masks if masks is not None else self()
        if not masks:
            return 0.0
        m = torch.cat([x.detach() for x in masks])
        return float(torch.minimum(m, 1 - m).mean())

    def channel_scores(self) -> list[torch.Tensor]:
        """What ranks channels inside a group when binarising."""
        if self.mode == "dsa":
            return [s.detach() for s in self.scores.split(self.sizes)]
        return [a.detach() for a in self.alpha]

    def hard_mask(self) -> list[torch.Tensor]:
        """The binarised masks: per group, its :meth:`hard_counts` top channels by :meth:`channel_scores`."""
        masks = []
        for scores, n in zip(self.channel_scores(), self.hard_counts(), strict=True):
            keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            keep[torch.argsort(scores, descending=True)[:n]] = True
            masks.append(keep)
        return masks

    def hard_counts(self, masks: list[torch.Tensor] | None = None) -> list[int]:
        """Channels each group keeps when binarised: ``alpha > 0`` (dais) or the rounded expected width."""
        masks = masks if masks is not None else self()
        if self.mode == "dais":
            return [int((a.detach() > 0).sum()) for a in self.alpha]
        return [int(round(float(m.detach().sum()))) for m in masks]


class _GateMul(nn.Module):
    """``x * mask[index]`` broadcast over the channel axis ``dim``."""

    def __init__(self, index: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("index", index)
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x * mask[self.index].view(shape).to(x.dtype)


def attach_gates(graph: ChannelGraph, gates: ChannelGates) -> fx.GraphModule:
    """The traced model with each group's masks applied after each producer (and its BN).

    The returned module shares parameters with the model ``graph`` was traced from; ``gates``
    becomes its submodule ``dais_gates`` and is evaluated once per forward pass.
    """
    copied = fx.Graph()
    copied.output(copied.graph_copy(graph.gm.graph, {}))  # the analysis keeps its own graph
    gm = fx.GraphModule(graph.gm, copied)  # shares the model's modules and parameters
    gm.add_submodule("dais_gates", gates)
    position = {gid: i for i, gid in enumerate(gates.group_ids)}
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first):
        masks_node = gm.graph.call_module("dais_gates")
    count = 0
    for group in graph.groups:
        if group.id not in position:
            continue
        for member in group.producers:
            node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == member.name), None)
            if node is None:
                continue
            info = graph.infos[node.name]
            # After the producer's BN when the BN is its only user: masking before a BN would be undone by its shift.
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(gm.get_submodule(users[0].target), nn.modules.batchnorm._BatchNorm)
            ):
                node = users[0]
                info = graph.infos[node.name]
            if list(member.positions) != list(range(len(info.atoms))):  # pragma: no cover - producers own their outputs
                raise AssertionError(f"{member.name} produces channels of several groups")
            index = torch.tensor(member.classes)
            name = f"dais_gate_{count}"
            count += 1
            gm.add_submodule(name, _GateMul(index, info.cdim))
            with gm.graph.inserting_after(node):
                pick = gm.graph.call_function(_pick, (masks_node, position[group.id]))
            with gm.graph.inserting_after(pick):
                gated = gm.graph.call_module(name, (node, pick))
            node.replace_all_uses_with(gated, delete_user_cb=lambda user, g=gated: user is not g)
    gm.graph.lint()
    gm.recompile()
    return gm


def _pick(masks: list[torch.Tensor], i: int) -> torch.Tensor:
    return masks[i]
