"""Channel indicators (DAIS) and keep ratios (DSA) for the prunable groups, and where they act.

:class:`ChannelGates` holds, per prunable group, a vector of indicator logits ``alpha`` (paper
symbols) and a keep-ratio logit ``theta``; both are registered parameters. Its ``forward``
returns one soft mask per group:

* ``dais``: ``m = sigmoid(alpha / T)`` (Guan et al., Eq. 7);
* ``dsa``: ``m = allocate(scores, sigmoid(theta), T)`` with fixed channel scores (log BN |gamma|);
* ``dais+dsa``: ``m = allocate(alpha, sigmoid(theta), T)``: the learned ratio decides how many
  channels a group keeps, the learned indicators decide which.

:class:`GatedModel` applies them to the user's own module, where each group's channels are read
(forward pre-hooks on the reading layers): train and eval mode behave as the model defines, and
at 0/1 masks the gated model is the pruned model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..channels import ChannelGraph, ChannelGroup
from ..channels.blocks import ResidualBlock
from .allocation import allocate, solve_threshold

__all__ = ["ChannelGates", "GatedModel", "ReadingSite", "attach_gates", "reading_sites"]


class ChannelGates(nn.Module):
    """Indicator logits and keep ratios of the prunable groups.

    Args:
        groups: the prunable groups, in the order of :class:`~dais_search.channels.FlopsModel`.
        mode: ``"dais"``, ``"dsa"`` or ``"dais+dsa"``.
        scores: per group, initial channel scores (higher = more important), e.g. log filter
            norms; they initialise ``alpha`` (and are the fixed scores in ``dsa`` mode).
        keep: initial keep ratio of every group.
        temperature: initial temperature.
        blocks: residual blocks searched with the channels (``granularity = ["block", "channel"]``):
            each gets an indicator logit ``beta`` (:meth:`block_masks` = ``sigmoid(beta / T)``),
            started at ``block_keep``.
    """

    def __init__(
        self,
        groups: list[ChannelGroup],
        mode: str = "dais+dsa",
        scores: list[torch.Tensor] | None = None,
        keep: float = 0.9,
        temperature: float = 1.0,
        blocks: int = 0,
        block_keep: float = 0.95,
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
            # Start on the budget like the other modes: shift each group's logits so that its masks
            # sigmoid(alpha / T0) sum to keep x size (DAIS itself has no ratio; theta is unused).
            init = [x - solve_threshold(x, torch.tensor(float(keep)), temperature) for x in init]
        self.alpha = nn.ParameterList([nn.Parameter(x.clone().float()) for x in init])
        self.register_buffer("scores", torch.cat(init).float() if init else torch.zeros(0))
        logit = torch.logit(torch.tensor(min(max(keep, 0.02), 0.98)))
        self.theta = nn.Parameter(torch.full((len(groups),), float(logit)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.sizes = [g.size for g in groups]
        self.fixed_masks: list[torch.Tensor] | None = None  # set by the searcher to reuse one step's masks
        if blocks:
            start = float(temperature) * float(torch.logit(torch.tensor(block_keep)))
            self.beta = nn.Parameter(torch.full((blocks,), start))
        else:
            self.beta = None

    def block_masks(self) -> torch.Tensor | None:
        """Soft keep value of every searched residual block (``sigmoid(beta / T)``), or ``None``."""
        return None if self.beta is None else torch.sigmoid(self.beta / float(self.temperature))

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

    def margins(self) -> list[torch.Tensor]:
        """Per group, each channel's score minus the group's current threshold (``alpha`` itself in
        ``dais`` mode): the mask's logit times the temperature. Unlike the masks, which saturate at
        0 and 1 as T -> 0, it still ranks channels across groups after annealing."""
        t = float(self.temperature)
        if self.mode == "dais":
            return [a.detach() for a in self.alpha]
        keep = self.keep_ratios().detach()
        return [s - solve_threshold(s, keep[i], t) for i, s in enumerate(self.channel_scores())]

    def hard_counts(self, masks: list[torch.Tensor] | None = None) -> list[int]:
        """Channels each group keeps when binarised: ``alpha > 0`` (dais) or the rounded expected width."""
        masks = masks if masks is not None else self()
        if self.mode == "dais":
            return [int((a.detach() > 0).sum()) for a in self.alpha]
        return [int(round(float(m.detach().sum()))) for m in masks]


class GatedModel(nn.Module):
    """The user's model with each group's soft masks applied where its channels are read.

    Every layer that reads channels of a prunable group (the ``"in"`` sites: convolutions and
    linear layers, in training-only branches too) gets a forward pre-hook that multiplies its
    input channels by their masks, so that every path from a producer to a reader is masked
    exactly once: after everything that the cut removes with the channel (its BN, activation,
    pooling, the other operands of a residual sum), before the one op that would read it. A
    depthwise (or block-tied) conv whose outputs are the same group's channels is not a reader:
    the group goes on through it and is masked where it is read next. With 0/1 masks the gated
    model therefore computes what the pruned model computes, in train mode as in eval mode (the
    model's own ``forward`` runs: stochastic depth, auxiliary heads, dropout as it defines them).

    ``gates`` is evaluated once per forward pass (or its ``fixed_masks`` are used). The model is
    shared, not copied; :meth:`remove` takes the hooks off again.

    Args:
        model: the dense model ``graph`` was traced from.
        graph: its :func:`~dais_search.channels.trace_channels` result.
        gates: the indicators of ``graph``'s prunable groups.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, gates: ChannelGates,
                 blocks: list[ResidualBlock] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model, self.gates = model, gates
        self._flat: torch.Tensor | None = None  # [1, masks of group 0, group 1, ...] during a forward pass
        self._blocks: torch.Tensor | None = None  # the block masks during a forward pass
        offset, start = {}, 1
        for gid, size in zip(gates.group_ids, gates.sizes, strict=True):
            offset[gid], start = start, start + size
        blocks = blocks or []
        # A searched chain layer's output group is masked where the layer's output is mixed with its
        # input (below), not again where it is read.
        mixed = {graph.atom_class[graph.infos[b.node].atoms[0]][0] for b in blocks if b.kind == "layer"}
        self._handles = []
        self.readers: list[str] = []
        for site in reading_sites(model, graph, gates.group_ids):
            index = [offset[gc[0]] + gc[1] if gc is not None and gc[0] not in mixed else 0 for gc in site.channels]
            name = f"_index_{len(self.readers)}"
            self.register_buffer(name, torch.tensor(index, device=gates.temperature.device), persistent=False)
            module = model.get_submodule(site.path)
            self._handles.append(module.register_forward_pre_hook(self._masker(name, site.dim)))
            self.readers.append(site.path)
        self._inputs: dict[int, torch.Tensor] = {}  # each chain layer's (masked) input during a forward pass
        for k, block in enumerate(blocks):
            if block.kind == "layer":  # g * output * its masks + (1 - g) * the input, masked as read
                index = []
                for atom in graph.infos[block.node].atoms:
                    gid, c = graph.atom_class[atom]
                    index.append(offset[gid] + c if gid in offset else 0)
                name = f"_layer_index_{k}"
                self.register_buffer(name, torch.tensor(index, device=gates.temperature.device), persistent=False)
                first = model.get_submodule(block.modules[0])
                self._handles.append(first.register_forward_pre_hook(self._input_keeper(k)))
                mixer = self._layer_mixer(k, name, graph.infos[block.node].cdim)
                self._handles.append(model.get_submodule(block.output).register_forward_hook(mixer))
            else:  # the branch's output times its block's mask
                self._handles.append(model.get_submodule(block.output).register_forward_hook(self._block_scaler(k)))

    def _block_scaler(self, k: int):
        def scale_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._blocks is None:
                return None
            return output * self._blocks[k].to(output.dtype)

        return scale_output

    def _input_keeper(self, k: int):
        def keep_input(module: nn.Module, inputs: tuple) -> None:
            if self._blocks is not None:
                self._inputs[k] = inputs[0]  # after the layer's own masker (registered first)

        return keep_input

    def _layer_mixer(self, k: int, index_name: str, dim: int):
        def mix_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._blocks is None:
                return None
            shape = [1] * output.dim()
            shape[dim] = -1
            masks = 1.0 if self._flat is None else self._flat[getattr(self, index_name)].view(shape).to(output.dtype)
            g = self._blocks[k].to(output.dtype)
            return g * output * masks + (1 - g) * self._inputs.pop(k)

        return mix_output

    def _masker(self, index_name: str, dim: int):
        def mask_input(module: nn.Module, inputs: tuple) -> tuple | None:
            if self._flat is None:
                return None  # the model called on its own, outside this wrapper: ungated
            x = inputs[0]
            shape = [1] * x.dim()
            shape[dim] = -1
            return (x * self._flat[getattr(self, index_name)].view(shape).to(x.dtype), *inputs[1:])

        return mask_input

    def forward(self, *args, **kwargs):
        masks = self.gates()
        self._flat = torch.cat([self.gates.temperature.new_ones(1), *masks]) if masks else None
        self._blocks = self.gates.block_masks()
        try:
            return self.model(*args, **kwargs)
        finally:
            self._flat = self._blocks = None
            self._inputs.clear()

    def remove(self) -> None:
        """Takes the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass(frozen=True)
class ReadingSite:
    """A layer that reads channels of prunable groups: where a group's channels are masked (and
    where data-driven importance criteria observe them).

    Attributes:
        path: the layer's module path.
        dim: its input's channel axis (1 for convolutions, -1 for linear layers).
        channels: per input channel, ``(group id, channel of the group)`` or ``None`` (not of a
            searched group).
    """

    path: str
    dim: int
    channels: tuple[tuple[int, int] | None, ...]


def reading_sites(model: nn.Module, graph: ChannelGraph, group_ids: Iterable[int]) -> list[ReadingSite]:
    """The layers whose inputs carry channels of the groups ``group_ids``, in graph order.

    Each path from a producer to a reader passes exactly one of them: after everything the cut
    removes with the channel (its BN, activation, pooling, the other operands of a residual sum),
    before the one op that would read it. Depthwise (block-tied) convs that pass a group on are
    not readers (:func:`_carries_group`).
    """
    wanted = set(group_ids)
    sites = []
    for (path, role), atoms in graph.sites.items():
        if role != "in" or _carries_group(graph, model, path):
            continue
        channels = []
        for atom in atoms:
            gc = graph.atom_class.get(atom)
            channels.append((gc[0], gc[1]) if gc is not None and gc[0] in wanted else None)
        if any(c is not None for c in channels):
            dim = -1 if isinstance(model.get_submodule(path), nn.Linear) else 1
            sites.append(ReadingSite(path, dim, tuple(channels)))
    return sites


def _carries_group(graph: ChannelGraph, model: nn.Module, path: str) -> bool:
    """Whether the layer at ``path`` outputs, channel for channel, the group channels it reads
    (depthwise and block-tied grouped convs): then its input is not where the group is read.

    Only a grouped conv can: a dense layer mixes its input channels, so it reads them even when a
    residual add makes its outputs the same group, channel for channel, as its inputs (a 1x1
    projection inside a residual whose stream a depthwise conv ties to its own outputs)."""
    if getattr(model.get_submodule(path), "groups", 1) == 1:
        return False
    reads, writes = graph.sites.get((path, "in")), graph.sites.get((path, "out"))
    if reads is None or writes is None or len(reads) != len(writes):
        return False
    classes = [(graph.atom_class.get(a), graph.atom_class.get(b)) for a, b in zip(reads, writes, strict=True)]
    return any(r is not None for r, _ in classes) and all(r == w for r, w in classes)


def attach_gates(model: nn.Module, graph: ChannelGraph, gates: ChannelGates,
                 blocks: list[ResidualBlock] | None = None) -> GatedModel:  # fmt: skip
    """``GatedModel(model, graph, gates, blocks)``: the model with the gates' masks where its groups
    are read, and each searched block's branch output scaled by its block mask."""
    return GatedModel(model, graph, gates, blocks)
