"""Channel importance criteria, shared by the search (initial indicators) and the baselines.

A criterion scores every channel of a :class:`~dais_search.channels.ChannelGroup`, from all of its
producers (weight criteria) or from what the network computes on held-out batches where the
group's channels are read (data criteria): ``criterion(model, group, evidence) -> (size,)``
tensor, higher = more important.

========== ================================================================================
``l1``     L1 norm of the producing filters (Li et al. 2017), summed over the producers
``l2``     L2 norm of the producing filters, over all producers together
``fpgm``   distance from the other filters of the layer (FPGM, He et al. 2019): filters near
           the geometric median are replaceable by the others and score low
``bn``     |gamma| of the group's BN layers (network slimming, Liu et al. 2017)
``taylor`` first-order Taylor estimate of the loss change when the channel is removed:
           per held-out batch the squared gradient of a gate on the channel, averaged over
           batches (Molchanov et al. 2019, the gate placed where the channel is read)
``apoz``   1 - average percentage of zeros where the channel is read, i.e. after its
           activation (Hu et al. 2016; meaningful after a ReLU)
``entropy`` entropy of the channel's global-average-pooled activation over held-out images
           (Luo & Wu 2017), in 32 equal-width bins
``random`` uniform random scores from the evidence's seed (a control)
========== ================================================================================

Data criteria declare a :class:`Probe`: what to record per image and channel at the layers that
read the group (:func:`~.gates.reading_sites`), and whether that needs the loss gradient;
:func:`score_groups` runs the held-out batches once for all groups and hands each criterion its
group's records. Add your own with::

    @register_importance("my-score")                       # from the weights
    def my_score(model, group, evidence=None): ...

    @register_importance("mean-act", probe=Probe(lambda x, grad: x.mean(2)))   # from data
    def mean_act(model, group, evidence): return torch.cat(evidence.records[group.id]).mean(0)

and name it where a criterion is asked for (``dais-search baseline --method my-score-uniform``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from ..channels import ChannelGraph, ChannelGroup
from ..errors import UserError
from ..registry import Registry
from ..train import to_model
from .gates import reading_sites

__all__ = [
    "CRITERIA",
    "Criterion",
    "Evidence",
    "Probe",
    "bn_scale",
    "fpgm",
    "get_importance",
    "l1_norm",
    "l2_norm",
    "list_importance",
    "log_importance",
    "record_channels",
    "register_importance",
    "score_groups",
]

Score = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """What a data criterion records where a group's channels are read, per held-out batch.

    Attributes:
        record: ``(x, grad) -> (B, C)``: from a reading layer's input ``x`` of shape (B, C, S)
            (channels on axis 1, every other axis flattened into S) and, when ``gradients``, the
            loss gradient with respect to it (else ``None``), one value per image and channel.
        gradients: whether the batches are also run backward (cross-entropy on their labels).
    """

    record: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    gradients: bool = False


@dataclass(frozen=True)
class Evidence:
    """What a criterion may use besides the weights.

    Attributes:
        records: group id -> one (B, size) tensor per held-out batch: the criterion's probe,
            averaged over the places the group's channels are read (empty for weight criteria).
        seed: for criteria that draw random numbers.
    """

    records: Mapping[int, list[torch.Tensor]] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its scoring function and, for a data criterion, its probe."""

    name: str
    score: Score
    probe: Probe | None = None

    @property
    def needs_data(self) -> bool:
        return self.probe is not None

    def __call__(self, model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
        return self.score(model, group, evidence)


CRITERIA: Registry[Criterion] = Registry("importance criterion")


def register_importance(name: str, probe: Probe | None = None) -> Callable[[Score], Score]:
    """Decorator registering ``score(model, group, evidence=None)`` as criterion ``name`` (with a
    :class:`Probe` when it scores from data); refuses a name that is taken. Returns ``score``."""
    CRITERIA.check_free(name)

    def wrap(score: Score) -> Score:
        CRITERIA.register(name)(Criterion(name, score, probe))
        return score

    return wrap


def get_importance(name: str) -> Criterion:
    """The criterion registered as ``name``.

    Raises:
        UserError: an unknown name (the message lists the registered ones).
    """
    return CRITERIA.get(name)


def list_importance() -> list[str]:
    """The registered criteria, sorted."""
    return CRITERIA.names()


# -- from the weights --------------------------------------------------------------------------


def _filters(model: nn.Module, group: ChannelGroup):
    """Per producer: its (out, fan-in) weight rows as float on the CPU, and the member."""
    for member in group.producers:
        weight = model.get_submodule(member.name).weight.detach().float().cpu()
        yield weight.flatten(1), member


def _per_channel(group: ChannelGroup, values: Iterable[tuple[torch.Tensor, object]]) -> torch.Tensor:
    """Sums per-producer-output values into the group's channels (through positions -> classes)."""
    score = torch.zeros(group.size)
    for value, member in values:
        score.index_add_(0, torch.tensor(member.classes), value[list(member.positions)])
    return score


@register_importance("l1")
def l1_norm(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """L1 norm of each channel's producing filters, summed over the group's producers."""
    return _per_channel(group, ((w.abs().sum(1), m) for w, m in _filters(model, group)))


@register_importance("l2")
def l2_norm(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """L2 norm of each channel's producing filters, taken over all producers together."""
    return _per_channel(group, ((w.square().sum(1), m) for w, m in _filters(model, group))).sqrt()


@register_importance("fpgm")
def fpgm(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """Sum of Euclidean distances from each filter to the other filters of its layer, summed over
    the producers: a filter close to the layer's geometric median is what the others already
    express, and scores low (FPGM keeps the filters farthest from it)."""
    return _per_channel(group, ((torch.cdist(w, w).sum(1), m) for w, m in _filters(model, group)))


@register_importance("bn")
def bn_scale(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """|gamma| of the BN layers on the group's channels (network slimming; DSA's base importance),
    summed over them; the L1 filter norm for a group without BN."""
    score = torch.zeros(group.size)
    found = False
    for member in group.members:
        module = model.get_submodule(member.name) if member.role == "ch" else None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            weight = module.weight.detach().abs().float().cpu()
            score.index_add_(0, torch.tensor(member.classes), weight[list(member.positions)])
            found = True
    return score if found else l1_norm(model, group)


@register_importance("random")
def random_scores(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """Uniform random scores, drawn from ``evidence.seed`` and the group id (reproducible)."""
    seed = evidence.seed if evidence is not None else 0
    return torch.rand(group.size, generator=torch.Generator().manual_seed(1_000_003 * seed + group.id))


# -- from data ---------------------------------------------------------------------------------


def _records(evidence: Evidence | None, group: ChannelGroup, name: str) -> list[torch.Tensor]:
    records = evidence.records.get(group.id) if evidence is not None else None
    if not records:
        raise UserError(f"importance criterion {name!r} scores channels from held-out batches, and got none for "
                        f"group {group.id} ({group.name}); score through score_groups(..., batches=...)")  # fmt: skip
    return records


@register_importance("taylor", probe=Probe(lambda x, grad: (x * grad).sum(2), gradients=True))
def taylor(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """Mean over held-out batches of the squared batch gradient of a gate on the channel (a factor
    1 where the channel is read): ``(sum_images sum_positions x * dL/dx)^2``."""
    return torch.stack([r.sum(0).square() for r in _records(evidence, group, "taylor")]).mean(0)


@register_importance("apoz", probe=Probe(lambda x, grad: (x == 0).float().mean(2)))
def apoz(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """1 - the average percentage of zeros of the channel where it is read (after its activation)."""
    return 1 - torch.cat(_records(evidence, group, "apoz")).mean(0)


ENTROPY_BINS = 32


@register_importance("entropy", probe=Probe(lambda x, grad: x.mean(2)))
def entropy(model: nn.Module, group: ChannelGroup, evidence: Evidence | None = None) -> torch.Tensor:
    """Entropy (nats) of the channel's global-average-pooled values over the held-out images, in
    ``ENTROPY_BINS`` equal-width bins between its minimum and maximum; 0 for a constant channel."""
    pooled = torch.cat(_records(evidence, group, "entropy")).double()  # (N, size)
    low, high = pooled.min(0).values, pooled.max(0).values
    width = (high - low).clamp(min=1e-30)
    bins = ((pooled - low) / width * ENTROPY_BINS).long().clamp(0, ENTROPY_BINS - 1)
    counts = torch.zeros(ENTROPY_BINS, pooled.shape[1], dtype=torch.float64).scatter_add_(
        0, bins, torch.ones_like(pooled))
    p = counts / counts.sum(0)
    h = -(p * p.clamp(min=1e-300).log()).sum(0)
    return torch.where(high > low, h, torch.zeros_like(h)).float()


def _channels_first(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, ..., C, ...) -> (B, C, S) in float: the channel axis second, the others flattened."""
    x = x.movedim(dim, 1)
    return x.reshape(x.shape[0], x.shape[1], -1).float()


def record_channels(
    model: nn.Module,
    graph: ChannelGraph,
    groups: Sequence[ChannelGroup],
    probe: Probe,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_batches: int | None = None,
) -> dict[int, list[torch.Tensor]]:
    """Runs ``batches`` through ``model`` (eval mode, weights untouched, no ``.grad`` written) and
    returns, per group, one (B, size) tensor of ``probe.record`` per batch, averaged over every
    layer input and position where the group's channel is read."""
    ids = [g.id for g in groups]
    sizes = {g.id: g.size for g in groups}
    sites = reading_sites(model, graph, ids)
    missing = set(ids) - {gc[0] for s in sites for gc in s.channels if gc is not None}
    if missing:
        raise ValueError(f"groups {sorted(missing)} are read nowhere; they cannot be scored from data")
    seen: list[tuple[int, torch.Tensor]] = []  # (site index, input) of the current batch

    def hook(i: int):
        def keep(module: nn.Module, inputs: tuple) -> None:
            seen.append((i, inputs[0]))

        return keep

    handles = [model.get_submodule(s.path).register_forward_pre_hook(hook(i)) for i, s in enumerate(sites)]
    out: dict[int, list[torch.Tensor]] = {gid: [] for gid in ids}
    mode = model.training
    model.eval()
    try:
        for x, y in islice(batches, max_batches):
            x, y = to_model(x, y, model)
            seen.clear()
            with torch.set_grad_enabled(probe.gradients):
                if probe.gradients:
                    x = x.detach().requires_grad_(True)  # gradients reach every activation, frozen weights or not
                logits = model(x)
                grads = (torch.autograd.grad(F.cross_entropy(logits, y), [t for _, t in seen], allow_unused=True)
                         if probe.gradients else [None] * len(seen))  # fmt: skip
            sums = {gid: torch.zeros(len(y), sizes[gid]) for gid in ids}
            counts = {gid: torch.zeros(sizes[gid]) for gid in ids}
            for (i, t), g in zip(seen, grads, strict=True):
                site = sites[i]
                flat = _channels_first(t.detach(), site.dim)
                grad = _channels_first(g.detach(), site.dim) if g is not None else None
                if probe.gradients and grad is None:
                    grad = torch.zeros_like(flat)
                values = probe.record(flat, grad).cpu()  # (B, C)
                for pos, gc in enumerate(site.channels):
                    if gc is not None:
                        sums[gc[0]][:, gc[1]] += values[:, pos]
                        counts[gc[0]][gc[1]] += 1
            for gid in ids:
                out[gid].append(sums[gid] / counts[gid].clamp(min=1))
    finally:
        for handle in handles:
            handle.remove()
        model.train(mode)
    return out


def score_groups(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: str,
    groups: Sequence[ChannelGroup] | None = None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Scores of every channel of ``groups`` (default: the prunable groups of ``graph``) by the
    criterion registered as ``criterion``; a data criterion runs ``batches`` (at most
    ``max_batches``) once for all groups.

    Raises:
        UserError: an unknown criterion, or a data criterion without batches.
    """
    entry = get_importance(criterion)
    groups = list(groups) if groups is not None else [g for g in graph.groups if g.prunable]
    records: dict[int, list[torch.Tensor]] = {}
    if entry.probe is not None:
        if batches is None:
            raise UserError(f"importance criterion {criterion!r} scores channels from held-out batches; give it "
                            "batches (the baseline command uses the budget's held-out split)")  # fmt: skip
        records = record_channels(model, graph, groups, entry.probe, batches, max_batches)
    evidence = Evidence(records, seed)
    return {g.id: entry.score(model, g, evidence).float() for g in groups}


def log_importance(name: str, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """``log`` of a weight criterion (clamped at 1e-12): the scale the indicator logits live on."""
    entry = get_importance(name)
    if entry.needs_data:
        raise UserError(f"importance criterion {name!r} needs held-out batches; use score_groups")
    return entry.score(model, group).clamp(min=1e-12).log()
