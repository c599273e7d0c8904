"""Linear over-parameterisation (LOP): expand layers for fine-tuning, fold them back exactly.

``expand(model, ratio)`` replaces every ``nn.Conv2d`` with ``groups == 1`` by an
:class:`ExpandedConv2d` and every ``nn.Linear`` by an :class:`ExpandedLinear`, under the same
module paths (so distillation can match layers by name). Depthwise and other grouped convs stay
as they are: they hold few parameters, and a per-group expansion would multiply the cost of the
layers that are already the cheapest. ``fold(model)`` replaces every expanded block by its single
folded layer, giving back the original shapes (parameter count and FLOPs of the pruned net).

Example:
    >>> student = expand(pruned, ratio=4)      # same function, more trainable parameters
    >>> ...fine-tune student...
    >>> deployed = fold(student)               # plain Conv2d/Linear again
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .blocks import ExpandedConv2d, ExpandedLinear

__all__ = ["ExpandedConv2d", "ExpandedLinear", "Foldable", "expand", "fold"]


@runtime_checkable
class Foldable(Protocol):
    def fold(self) -> nn.Module: ...


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    owner, _, name = path.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, name, module)


def expand(model: nn.Module, ratio: int = 4, skip: tuple[str, ...] = (), seed: int = 0) -> nn.Module:
    """An over-parameterised copy of ``model`` computing the same function (``model`` untouched).

    Args:
        model: the (pruned) model.
        ratio: expansion ratio ``r`` of every expanded layer (>= 1).
        skip: module paths to leave as they are.
        seed: seeds the orthonormal factors.
    """
    if ratio < 1:
        raise ValueError(f"expansion ratio must be at least 1, got {ratio}")
    expanded = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for path, module in list(expanded.named_modules()):
        if path in skip or not path:
            continue
        if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
            _replace(expanded, path, ExpandedConv2d(module, ratio, generator))
        elif type(module) is nn.Linear:
            _replace(expanded, path, ExpandedLinear(module, ratio, generator))
    return expanded


def fold(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`Foldable` block replaced by its folded layer.

    The copy carries no forward hooks: those of training helpers (a :class:`DistillTask`'s
    feature hooks, gates) would otherwise come along with ``deepcopy`` and keep running.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    for path, module in list(folded.named_modules()):
        if path and isinstance(module, Foldable) and not isinstance(module, nn.Sequential):
            _replace(folded, path, module.fold())
    was_training = model.training
    return folded.train(was_training)
