"""Residual blocks that can be removed whole: ``out = skip + branch(skip)``, found in the trace.

A block is an addition one of whose operands (the *skip*) is the block's input itself and whose
other operand (the *branch*) is computed from the skip alone, by layers nothing else reads; the
three shapes match. Removing the branch then leaves a valid network: the addition becomes its
skip operand (what follows the addition in the block, e.g. a ReLU, stays). Found from the traced
graph, not from module names, so it works on any model fx can trace: the identity blocks of
CIFAR and torchvision ResNets, MobileNetV2's and EfficientNet's inverted residuals (stochastic
depth sits in the branch). Blocks whose shortcut computes something (a projection, option A's
channel pad) are not removable: their output would change.

A pruned model loses a block physically: the module whose ``forward`` makes the addition is
traced alone (as for :mod:`.index_ops`) and rewritten so that the addition's users read the skip,
and the branch's layers are dropped from it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .index_ops import index_target, owner_of, owner_problem
from .trace import symbolic_trace

__all__ = ["ResidualBlock", "find_blocks", "remove_blocks"]

_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


@dataclass(frozen=True)
class ResidualBlock:
    """One removable residual branch.

    Attributes:
        name: the owner's path (with ``#k`` when its forward makes several such additions).
        owner: path of the module whose ``forward`` makes the addition.
        target: :func:`~.index_ops.index_target` of the addition.
        occurrence: how many calls of ``target`` the owner's forward made before this one.
        skip: which operand (0 or 1) is the skip.
        node: the addition's node name in the model's trace (for masked copies).
        modules: the module paths the branch calls (in the model).
        output: the module whose output is the branch operand of the addition ("" when a function
            computes it): where a search scales the branch by its block indicator.
        kind: ``"residual"``, or ``"layer"`` for a layer of a plain chain (:mod:`.chain`): then
            ``node`` is the segment's output, ``source`` its input (node names in the model's trace),
            ``modules`` the segment's modules in call order, and removal replaces the output by the input.
        source: the segment's input node (kind ``"layer"``).
    """

    name: str
    owner: str
    target: str
    occurrence: int
    skip: int
    node: str
    modules: tuple[str, ...]
    output: str = ""
    kind: str = "residual"
    source: str = ""


def _is_add(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method") or node.target not in _ADDS:
        return False
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    return len(node.args) == 2 and len(tensors) == 2 and not node.kwargs


def _identity_chain(node: fx.Node, gm: fx.GraphModule) -> set[fx.Node]:
    """``node`` and, through ``nn.Identity`` calls, the tensors it is the same as."""
    chain = {node}
    while node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Identity):
        node = node.args[0]
        chain.add(node)
    return chain


def _branch(branch: fx.Node, skip: fx.Node, add: fx.Node, gm: fx.GraphModule) -> set[fx.Node] | None:
    """The nodes computing ``branch`` from ``skip`` alone (parameters aside; ``skip`` may be an
    ``nn.Identity`` of the block input), when nothing but them and ``add`` reads them; ``None``
    otherwise."""
    stops = _identity_chain(skip, gm)
    if branch in stops:
        return None
    nodes, todo = set(), [branch]
    while todo:
        node = todo.pop()
        if node in stops or node in nodes:
            continue
        if node.op == "placeholder":
            return None  # the branch reads something other than the block's input
        nodes.add(node)
        todo.extend(node.all_input_nodes)
    for node in nodes:
        if any(user not in nodes and user is not add for user in node.users):
            return None
    return nodes


def find_blocks(model: nn.Module, gm: fx.GraphModule, infos: dict) -> list[ResidualBlock]:
    """The removable residual blocks of ``model``, in graph order (see the module docstring).

    Args:
        model: the model ``gm`` traces.
        gm, infos: its trace and traced tensors by node name (a :class:`~.groups.ChannelGraph`'s).
    """
    found: list[tuple[fx.Node, str, int]] = []
    for add in gm.graph.nodes:
        if not _is_add(add):
            continue
        for skip_index in (0, 1):
            skip, branch = add.args[skip_index], add.args[1 - skip_index]
            shapes = [getattr(infos.get(n.name), "shape", None) for n in (skip, branch, add)]
            if shapes[0] is None or len(set(shapes)) != 1:
                continue
            nodes = _branch(branch, skip, add, gm)
            if nodes is None or not any(n.op == "call_module" for n in nodes):
                continue
            owner = owner_of(add)
            inside = all((n.target if n.op == "call_module" else owner_of(n)).startswith(owner + ".")
                         or owner_of(n) == owner for n in nodes if n.op != "get_attr")  # fmt: skip
            if owner and inside:
                found.append((add, owner, skip_index))
                break
    by_owner: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method") and owner_of(node):
            by_owner.setdefault(owner_of(node), []).append(node)
    candidates = []
    for add, owner, skip_index in found:
        target = index_target(add)
        occurrence = [n for n in by_owner[owner] if index_target(n) == target].index(add)
        nodes = _branch(add.args[1 - skip_index], add.args[skip_index], add, gm) or set()
        modules = tuple(sorted(str(n.target) for n in nodes if n.op == "call_module"))
        several = sum(1 for _, o, _ in found if o == owner) > 1
        branch = add.args[1 - skip_index]
        calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == branch.target)
        output = str(branch.target) if branch.op == "call_module" and calls == 1 else ""
        candidates.append(ResidualBlock(f"{owner}#{occurrence}" if several else owner, owner, target, occurrence,
                                        skip_index, add.name, modules, output))  # fmt: skip
    ok = {}
    for owner in dict.fromkeys(b.owner for b in candidates):
        mine = [b for b in candidates if b.owner == owner]
        ok[owner] = not _owner_problem(model, owner, mine) and not _called_twice(model, owner, by_owner[owner])
    return [b for b in candidates if ok[b.owner]]


def _remove_in(gm: fx.GraphModule, blocks: Sequence[ResidualBlock]) -> None:
    """Removes ``blocks`` (all of one owner) from ``gm``, a trace of that owner alone."""
    adds = {}
    prefix = len(blocks[0].owner) + 1
    by_target = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    for block in blocks:
        if block.kind == "layer":  # the segment's output is replaced by its input
            by_target[block.output[prefix:]].replace_all_uses_with(by_target[block.modules[0][prefix:]].args[0])
            continue
        calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method") and not owner_of(n)
                 and index_target(n) == block.target]  # fmt: skip
        adds[calls[block.occurrence]] = block.skip
    for add, skip in adds.items():
        add.replace_all_uses_with(add.args[skip])
        gm.graph.erase_node(add)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()


def _owner_problem(model: nn.Module, owner: str, blocks: Sequence[ResidualBlock]) -> str:
    """Why the owner's blocks cannot be removed (empty when they can). Code that differs between
    train and eval mode is fine when it is all inside the branches (stochastic depth)."""
    problem = owner_problem(model, owner)
    if not problem.endswith("runs other code in training"):
        return problem
    module = model.get_submodule(owner)
    mode, codes = module.training, []
    try:
        for training in (False, True):
            module.train(training)
            gm, _ = symbolic_trace(module)
            _remove_in(gm, blocks)
            gm.recompile()
            codes.append(gm.code)
    finally:
        module.train(mode)
    return problem if codes[0] != codes[1] else ""


def _called_twice(model: nn.Module, owner: str, calls: list[fx.Node]) -> bool:
    """Whether the model's trace attributes more calls to the owner than its own trace makes (a
    module called twice would lose its block in both calls)."""
    own, _ = symbolic_trace(model.get_submodule(owner))
    mine = [n for n in own.graph.nodes if n.op in ("call_function", "call_method") and not owner_of(n)]
    return len(mine) != len(calls)


def remove_blocks(model: nn.Module, blocks: Sequence[ResidualBlock]) -> nn.Module:
    """Rewrites, in ``model`` (a copy being pruned), each owner so that the removed blocks' additions
    become their skip operands and their branches are gone; returns ``model``."""
    by_owner: dict[str, list[ResidualBlock]] = {}
    for block in blocks:
        by_owner.setdefault(block.owner, []).append(block)
    for owner, removed in by_owner.items():
        module = model.get_submodule(owner)
        gm, _ = symbolic_trace(module)
        _remove_in(gm, removed)
        for node in gm.graph.nodes:
            node.type = None  # as in index_ops: annotations TorchScript cannot resolve
        gm.recompile()
        gm.train(module.training)
        parent, _, name = owner.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, gm)
    return model
