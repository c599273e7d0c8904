"""BatchNorm folding for deployment: every eval-mode BatchNorm2d right after a Conv2d merged into it.

``fold_batchnorm(model)`` returns a copy in which each such BatchNorm is an ``nn.Identity`` and its
conv carries the scale and shift (``W * s``, ``(b - mean) * s + beta`` with ``s = gamma / sqrt(var +
eps)``, per output channel, so grouped and depthwise convs fold the same way). The pairs are found
on a ``torch.fx`` trace of the model: the BatchNorm's only input is the conv's output, which has no
other user, and each module is called once. BatchNorms not fed by a conv are left as they are.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

__all__ = ["fold_batchnorm", "foldable_pairs"]


def _is_plain(module: nn.Module, kind: type[nn.Module]) -> bool:
    """An instance of ``kind`` whose forward is ``kind``'s own (a subclass with its own forward is not folded)."""
    return isinstance(module, kind) and type(module).forward is kind.forward


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The ``(conv name, batchnorm name)`` pairs that :func:`fold_batchnorm` would fold, in graph order.

    Raises ``ValueError`` when ``model`` cannot be traced by ``torch.fx``."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError ... on data-dependent code
        raise ValueError(f"fold_batchnorm: torch.fx cannot trace {type(model).__name__} ({exc}); "
                         "export it without BatchNorm folding") from exc  # fmt: skip
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_plain(modules[str(node.target)], nn.BatchNorm2d):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or not _is_plain(modules[str(src.target)], nn.Conv2d) or len(src.users) != 1:
            continue
        if calls[str(src.target)] != 1 or calls[str(node.target)] != 1:
            continue  # a module called twice: folding it would change its other calls
        bn = modules[str(node.target)]
        if bn.running_mean is None or bn.running_var is None:
            continue  # track_running_stats=False: it normalises by batch statistics even in eval mode
        pairs.append((str(src.target), str(node.target)))
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d``
    folded into that conv's weight and bias and replaced by ``nn.Identity`` (``model`` is unchanged).

    The result computes the same function in eval mode (to float rounding); it is for deployment
    only: training it would no longer normalise. Raises ``ValueError`` when a BatchNorm to fold is
    in training mode (its output then depends on the batch: call ``model.eval()`` first) or when
    ``torch.fx`` cannot trace the model.
    """
    pairs = foldable_pairs(model)
    training = [bn for _, bn in pairs if model.get_submodule(bn).training]
    if training:
        raise ValueError(f"fold_batchnorm: {', '.join(training[:3])}{' ...' if len(training) > 3 else ''} "
                         "in training mode (batch statistics cannot be folded); call model.eval() first")  # fmt: skip
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        w = conv.weight.double()
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        conv.weight = nn.Parameter((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        _set_module(folded, bn_name, nn.Identity())
    return folded
