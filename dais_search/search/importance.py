"""Channel importance criteria, shared by the search (initial indicators) and the baselines.

A criterion scores every channel of a :class:`~dais_search.channels.ChannelGroup` from all of its
producers (or, for BN scale, the norms on its channels): ``criterion(model, group) -> (size,)``
tensor, higher = more important. Criteria live in a registry; add your own with::

    @register_importance("my-score")
    def my_score(model, group): ...

and name it where a criterion is asked for (:func:`get_importance`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..channels import ChannelGroup
from ..registry import Registry

__all__ = [
    "CRITERIA",
    "Importance",
    "bn_scale",
    "get_importance",
    "l1_norm",
    "list_importance",
    "log_importance",
    "register_importance",
]

Importance = Callable[[nn.Module, ChannelGroup], torch.Tensor]
CRITERIA: Registry[Importance] = Registry("importance criterion")


def register_importance(name: str) -> Callable[[Importance], Importance]:
    """Decorator registering a criterion under ``name``; refuses a name that is taken."""
    return CRITERIA.register(name)


def get_importance(name: str) -> Importance:
    """The criterion registered as ``name``.

    Raises:
        UserError: an unknown name (the message lists the registered ones).
    """
    return CRITERIA.get(name)


def list_importance() -> list[str]:
    """The registered criteria, sorted."""
    return CRITERIA.names()


@register_importance("l1")
def l1_norm(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of each channel's producing filters, summed over the group's producers."""
    score = torch.zeros(group.size)
    for member in group.producers:
        weight = model.get_submodule(member.name).weight.detach().float().cpu()
        norms = weight.abs().flatten(1).sum(1)
        score.index_add_(0, torch.tensor(member.classes), norms[list(member.positions)])
    return score


@register_importance("bn")
def bn_scale(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
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


def log_importance(name: str, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """``log`` of a criterion (clamped at 1e-12): the scale the indicator logits live on."""
    return get_importance(name)(model, group).clamp(min=1e-12).log()
