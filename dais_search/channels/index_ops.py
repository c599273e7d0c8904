"""Index ops: channel padding, slicing, narrowing and splitting, followed channel by channel.

``F.pad`` on the channel axis (the option-A shortcut of CIFAR ResNets), ``x[:, a:b]``,
``x.narrow(1, a, n)`` and ``split``/``chunk`` along the channels do not mix channels: each output
channel is an input channel at an offset, or (padding) a constant. The analysis maps atoms through
them (the padded positions get atoms of their own, which a residual add ties to the channels of the
branch it is added to) and records each call as an :class:`IndexOp`. A pruned network needs the same
op with other constants (fewer padded channels, a shorter slice, smaller pieces):
:func:`rewrite_index_ops` recomputes them from a plan and rewrites the op in the module whose
``forward`` calls it, by an fx trace of that module alone (a plain ``GraphModule`` put in its place;
TorchScript- and export-friendly).

An op can be followed only when the module that calls it is a submodule (not the model's own
``forward``), traces the same in train and eval mode, and its constants are plain integers; otherwise
the channels it touches are fixed, as for any op the analysis does not understand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .trace import symbolic_trace

__all__ = ["IndexOp", "check_owners", "index_target", "keep_of", "new_params", "owner_of", "owner_problem",
           "rewrite_index_ops"]


@dataclass(frozen=True)
class IndexOp:
    """One traced call of a channel index op.

    Attributes:
        kind: ``"pad"``, ``"slice"``, ``"narrow"`` or ``"split"``.
        owner: path of the module whose ``forward`` makes the call.
        target: :func:`index_target` of the call (matches it in a trace of ``owner`` alone).
        occurrence: how many calls of ``target`` ``owner``'s ``forward`` made before this one.
        dim: the channel axis of the input.
        in_atoms: the input's channel atoms.
        pieces: the output's atoms (one list; for ``split``, one per piece).
        params: the constants: ``(front, back)`` padding, ``(start, stop)`` of a slice or narrow,
            the piece sizes of a split.
        position: where the channel constants sit in the call: the pair index in ``F.pad``'s list,
            the item of the index tuple of a slice (0 otherwise).
    """

    kind: str
    owner: str
    target: str
    occurrence: int
    dim: int
    in_atoms: tuple[int, ...]
    pieces: tuple[tuple[int, ...], ...]
    params: tuple[int, ...]
    position: int = 0


def index_target(node: fx.Node) -> str:
    """A name for what ``node`` calls that is the same in every trace: ``method:narrow``, ``torch.split``..."""
    if node.op == "call_method":
        return f"method:{node.target}"
    return f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"


def owner_of(node: fx.Node) -> str:
    """The path of the innermost module whose ``forward`` made the call (``""``: the model's own)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    value = next(reversed(stack.values()))
    return value[0] if isinstance(value, tuple) else str(next(reversed(stack.keys())))


def owner_problem(model: nn.Module, owner: str) -> str:
    """Why calls in ``owner``'s forward cannot be rewritten (empty when they can): it is the model
    itself, or a module that fx cannot trace alone or whose trace differs between train and eval mode."""
    if not owner:
        return "an op in the model's own forward (move it into a submodule to prune through it)"
    module = model.get_submodule(owner)
    mode = module.training
    try:
        codes = []
        for training in (False, True):
            module.train(training)
            codes.append(symbolic_trace(module)[0].code)
    except Exception as exc:  # noqa: BLE001 - any failure: not rewritable
        return f"{owner} cannot be traced alone ({type(exc).__name__})"
    finally:
        module.train(mode)
    return f"{owner} runs other code in training" if codes[0] != codes[1] else ""


def check_owners(model: nn.Module, ops: Sequence[IndexOp]) -> dict[str, str]:
    """Owners whose calls cannot be rewritten, with the reason (:func:`owner_problem`)."""
    bad = {owner: owner_problem(model, owner) for owner in dict.fromkeys(op.owner for op in ops)}
    return {k: v.replace("an op in", "a channel index op in") for k, v in bad.items() if v}


def new_params(op: IndexOp, keep: Callable[[int], bool]) -> tuple[int, ...]:
    """The op's constants in the network that keeps the atoms ``keep`` is true for."""
    count = lambda atoms: sum(1 for a in atoms if keep(a))  # noqa: E731
    if op.kind == "pad":
        out = op.pieces[0]
        front, back = op.params
        return (count(out[:front]), count(out[len(out) - back :]))
    if op.kind in ("slice", "narrow"):
        start, stop = op.params
        first = count(op.in_atoms[:start])
        return (first, first + count(op.in_atoms[start:stop]))
    return tuple(count(piece) for piece in op.pieces)


def _nodes_of(gm: fx.GraphModule, target: str) -> list[fx.Node]:
    """Calls of ``target`` made by the traced module's own forward, in order."""
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method") and not owner_of(n)
            and index_target(n) == target]  # fmt: skip


def _rewrite(node: fx.Node, op: IndexOp, params: tuple[int, ...]) -> None:
    if op.kind == "pad":
        pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        pad[2 * op.position], pad[2 * op.position + 1] = params
        if len(node.args) > 1:
            node.args = (node.args[0], tuple(pad), *node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "pad": tuple(pad)}
    elif op.kind == "slice":
        x, index = node.args
        items = list(index) if isinstance(index, tuple) else [index]
        items[op.position] = slice(params[0], params[1], None)
        node.args = (x, tuple(items) if isinstance(index, tuple) else items[0])
    elif op.kind == "narrow":
        node.op, node.target = "call_function", torch.narrow
        node.args, node.kwargs = (node.args[0], op.dim, params[0], params[1] - params[0]), {}
    else:  # split / chunk: torch.split with the new piece sizes
        x = node.args[0] if node.args else node.kwargs["input"]
        node.op, node.target = "call_function", torch.split
        node.args, node.kwargs = (x, list(params)), {"dim": op.dim}


def rewrite_index_ops(model: nn.Module, ops: Sequence[IndexOp], keep: Callable[[int], bool]) -> nn.Module:
    """Rewrites, in ``model`` (a copy being pruned), the modules whose index ops get other constants
    under ``keep``; returns ``model``.

    Raises:
        ValueError: two calls of one op (a module called twice) would need different constants.
    """
    wanted: dict[tuple[str, str, int], tuple[IndexOp, tuple[int, ...]]] = {}
    for op in ops:
        params = new_params(op, keep)
        key = (op.owner, op.target, op.occurrence)
        if key in wanted and wanted[key][1] != params:
            raise ValueError(f"{op.owner} is called more than once and its {op.kind} would need other constants "
                             f"in each call ({wanted[key][1]} and {params}): prune it as a whole")  # fmt: skip
        wanted[key] = (op, params)
    by_owner: dict[str, list[tuple[IndexOp, tuple[int, ...]]]] = {}
    for (owner, _, _), (op, params) in wanted.items():
        if params != op.params:
            by_owner.setdefault(owner, []).append((op, params))
    for owner, changes in by_owner.items():
        module = model.get_submodule(owner)
        gm, _ = symbolic_trace(module)  # untraceable children become leaves, as in the model's trace
        for op, params in changes:
            nodes = _nodes_of(gm, op.target)
            if op.occurrence >= len(nodes):  # pragma: no cover - the analysis traced the same code
                raise AssertionError(f"{owner}: call {op.occurrence} of {op.target} not found in its trace")
            _rewrite(nodes[op.occurrence], op, params)
        for node in gm.graph.nodes:
            node.type = None  # fx's annotations (``x: _torch_Tensor_``) are names TorchScript cannot resolve
        gm.recompile()
        gm.train(module.training)
        parent, _, name = owner.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, gm)
    return model


def keep_of(atom_class: Mapping[int, tuple[int, int]], kept: Mapping[int, Sequence[int]]) -> Callable[[int], bool]:
    """``keep(atom)``: whether a plan keeping ``kept`` (group id -> classes) keeps the atom."""
    kept_sets = {g: set(v) for g, v in kept.items()}

    def keep(atom: int) -> bool:
        gc = atom_class.get(atom)
        return gc is None or gc[0] not in kept_sets or gc[1] in kept_sets[gc[0]]

    return keep

