"""Channel groups: which channels of a network must be kept or removed together.

The model is traced with torch.fx and run once on an example input to record shapes. Every
channel a layer produces becomes an *atom*; operations propagate atoms from their inputs to their
outputs (BN, activations, pooling pass them through; concatenation joins lists; flatten repeats
each channel over the features it becomes) and *tie* atoms that must agree (operands of an
element-wise add or mul, the input and output of a depthwise conv). Tied atoms form a channel
*class*: one unit of pruning. Classes produced by the same layer, or tied across layers, form a
:class:`ChannelGroup`.

The rule that keeps this safe: any operation whose channel semantics are not understood (an
unknown module or function, channel slicing or padding, a reshape that splits the channel axis,
a norm whose statistics mix channels) *fixes* every atom it touches, making those groups
unprunable, with one warning per kind of operation that names it and where it is. The model's
outputs are fixed too. A result is therefore either right or not pruned, never silently wrong.

Example:
    >>> groups = find_channel_groups(create_model("resnet56"), torch.randn(1, 3, 32, 32))
    >>> [g.size for g in groups if g.prunable][:3]
    [16, 16, 16]
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .layers import handler_for

__all__ = ["ChannelGraph", "ChannelGroup", "Member", "find_channel_groups", "trace_channels"]


# ----------------------------------------------------------------------------------------------
# Public result types


@dataclass(frozen=True)
class Member:
    """Where one group's channels sit in one layer.

    Attributes:
        name: module path (or parameter path for ``role`` ``dimK``).
        role: ``"out"`` (channels the layer produces), ``"in"`` (channels it reads), ``"ch"``
            (per-channel parameters of a norm/activation) or ``"dimK"`` (dimension K of a parameter).
        positions: indices along that layer's channel axis that belong to the group.
        classes: ``classes[i]`` is the group channel at ``positions[i]``.
    """

    name: str
    role: str
    positions: tuple[int, ...]
    classes: tuple[int, ...]


@dataclass
class ChannelGroup:
    """A set of channels that are pruned together.

    Attributes:
        id: index in the list :func:`find_channel_groups` returns (stable for an architecture).
        size: number of channels (classes) in the group.
        producers: layers whose outputs create the channels.
        consumers: layers that read them.
        members: per-channel parameters sliced with them (BN, PReLU, layer-scale parameters).
        blocks: channels that can only go together (grouped convs, GroupNorm), or ``None``.
        prunable: whether channels of this group may be removed.
        reason: why not, when ``prunable`` is false.
        min_keep: fewest channels a plan may keep.
        round_to: kept counts must be multiples of this (the block width for grouped convs).
    """

    id: int
    size: int
    producers: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    blocks: list[tuple[int, ...]] | None = None
    prunable: bool = True
    reason: str = ""
    min_keep: int = 1
    round_to: int = 1

    @property
    def name(self) -> str:
        """The first producer's module path, a readable label."""
        return self.producers[0].name if self.producers else f"group{self.id}"


# ----------------------------------------------------------------------------------------------
# Atoms and their bookkeeping


class _DSU:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class TensorInfo:
    """A traced tensor: its shape and, if tracked, its channel dimension and the atom at each index."""

    shape: tuple[int, ...]
    cdim: int | None = None
    atoms: list[int] | None = None


@dataclass
class ParamInfo:
    """A parameter or buffer read with ``get_attr``."""

    path: str
    shape: tuple[int, ...]


class Tracker:
    """The atom bookkeeping the layer handlers use (see :mod:`dais_search.layers`)."""

    def __init__(self) -> None:
        self.classes, self.blocks, self.groups = _DSU(), _DSU(), _DSU()
        self.fixed: dict[int, str] = {}
        self.sites: dict[tuple[str, str], list[int]] = {}

    def fresh(self, n: int, producer: bool = True) -> list[int]:
        """``n`` new atoms; a producer's atoms form one group."""
        atoms = [self.classes.add() for _ in range(n)]
        for _ in range(n):
            self.blocks.add()
            self.groups.add()
        if producer:
            for a in atoms[1:]:
                self.groups.union(atoms[0], a)
        return atoms

    def tie(self, a: list[int], b: list[int]) -> None:
        """Atoms at equal positions are the same channel."""
        for x, y in zip(a, b, strict=True):
            self.classes.union(x, y)
            self.blocks.union(x, y)
            self.groups.union(x, y)

    def block(self, atoms: list[int]) -> None:
        """These atoms can only be removed together."""
        for a in atoms[1:]:
            self.blocks.union(atoms[0], a)
            self.groups.union(atoms[0], a)

    def fix(self, atoms: Iterable[int], reason: str) -> None:
        """These atoms (and so their groups) are never pruned."""
        for a in atoms:
            self.fixed.setdefault(a, reason)

    def site(self, path: str, role: str, atoms: list[int]) -> None:
        """Records a sliceable axis; a second call of the same module ties the two."""
        key = (path, role)
        if key in self.sites:
            self.tie(self.sites[key], atoms)
        else:
            self.sites[key] = list(atoms)

    def consumer_atoms(self, x: TensorInfo, n: int) -> list[int]:
        if x.atoms is not None:
            return x.atoms
        atoms = self.fresh(n, producer=False)
        self.fix(atoms, "reads channels that are not tracked")
        return atoms

    @staticmethod
    def tensor(cdim: int | None, atoms: list[int] | None, shape: tuple[int, ...]) -> TensorInfo:
        if cdim is not None and len(atoms) != shape[cdim]:
            raise AssertionError(f"{len(atoms)} atoms for {shape[cdim]} channels")
        return TensorInfo(tuple(shape), cdim, atoms)

    @staticmethod
    def untracked(shape: tuple[int, ...]) -> TensorInfo:
        return TensorInfo(tuple(shape))

    def flatten(self, x: TensorInfo, start: int, end: int, out_shape: tuple[int, ...]) -> TensorInfo | None:
        """``flatten(start, end)``: channels merged with the dims after them repeat their atom."""
        if x.cdim is None:
            return self.untracked(out_shape)
        nd = len(x.shape)
        start, end = start % nd if nd else 0, end % nd if nd else 0
        if x.cdim < start:
            return self.tensor(x.cdim, x.atoms, out_shape)
        if x.cdim > end:
            return self.tensor(x.cdim - (end - start), x.atoms, out_shape)
        if x.cdim != start:
            return None  # dims before the channels are merged into them: not a channel axis any more
        repeat = prod(x.shape[start + 1 : end + 1])
        return self.tensor(start, [a for a in x.atoms for _ in range(repeat)], out_shape)


# ----------------------------------------------------------------------------------------------
# Tracing


class _Tracer(fx.Tracer):
    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or super().is_leaf_module(m, qualname)


def _trace(root: nn.Module, opaque: set[str], prefix: str = "") -> fx.Graph:
    """One fx trace of ``root``; the tensor constants fx stores on ``root`` are taken off again
    afterwards (the caller's GraphModule keeps its own references), so the model is not modified."""
    before = set(root.__dict__)
    try:
        return _Tracer({p[len(prefix) :] for p in opaque if p.startswith(prefix)}).trace(root)
    finally:
        for name in set(root.__dict__) - before:
            delattr(root, name)


def _find_opaque(module: nn.Module, path: str, opaque: set[str]) -> None:
    """Marks the deepest submodules of ``module`` that fx cannot trace as opaque leaves."""
    prefix = f"{path}." if path else ""
    try:
        _trace(module, opaque, prefix)
        return
    except Exception:  # noqa: BLE001 - any tracing failure: look deeper
        pass
    plain = fx.Tracer()
    for name, child in module.named_children():
        child_path = prefix + name
        if not plain.is_leaf_module(child, child_path):
            _find_opaque(child, child_path, opaque)
    if path:
        try:
            _trace(module, opaque, prefix)
        except Exception:  # noqa: BLE001 - its own forward cannot be traced
            opaque.add(path)


def _symbolic_trace(model: nn.Module) -> tuple[fx.GraphModule, set[str]]:
    """Traces ``model``; the deepest submodules that cannot be traced become opaque leaves."""
    opaque: set[str] = set()
    try:
        return _graph_module(model, opaque), opaque
    except Exception as first_error:  # noqa: BLE001 - any tracing failure sends us to the fallback
        error = first_error
    _find_opaque(model, "", opaque)
    try:
        return _graph_module(model, opaque), opaque
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"{type(model).__name__} cannot be traced by torch.fx even with its untraceable submodules "
            f"({', '.join(sorted(opaque)) or 'none'}) as leaves: {error}"
        ) from exc


def _graph_module(model: nn.Module, opaque: set[str]) -> fx.GraphModule:
    before = set(model.__dict__)
    try:
        graph = _Tracer(opaque).trace(model)
        return fx.GraphModule(model, graph)
    finally:
        for name in set(model.__dict__) - before:
            delattr(model, name)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = _shape_tree(result)
        return result


def _shape_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shape_tree(v) for v in value]
    return None


# ----------------------------------------------------------------------------------------------
# The graph walk


@dataclass
class ChannelGraph:
    """Everything the analysis found: the groups, and what plans, masks and FLOPs models need.

    Attributes:
        groups: the channel groups (see :func:`find_channel_groups`).
        gm: the fx trace of the model (it shares modules with the model).
        sites: sliceable axes, ``(path, role) -> atoms``.
        infos: traced tensors by node name.
        calls: ``(module path, input shape, output shape)`` of every call of a handled module.
        param_sites: parameter paths read by element-wise ops, with their shapes.
        atom_class: ``atom -> (group id, class index)`` for atoms of groups.
    """

    groups: list[ChannelGroup]
    gm: fx.GraphModule
    sites: dict[tuple[str, str], list[int]]
    infos: dict[str, Any]
    calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    param_shapes: dict[str, tuple[int, ...]]
    atom_class: dict[int, tuple[int, int]]


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else "(model)"


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flat(item)]
    return [value]


class _Walker:
    def __init__(
        self, gm: fx.GraphModule, shapes: dict[fx.Node, Any], opaque_modules: set[str], model_tensors: set[str]
    ) -> None:
        self.gm, self.shapes, self.opaque_modules, self.model_tensors = gm, shapes, opaque_modules, model_tensors
        self.tk = Tracker()
        self.info: dict[fx.Node, Any] = {}
        self.calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.unknown: dict[str, list[str]] = defaultdict(list)

    # -- helpers -------------------------------------------------------------------------------
    def value(self, arg: Any) -> Any:
        """The info of an argument: TensorInfo/ParamInfo for tensors, lists for containers, else the constant."""
        if isinstance(arg, fx.Node):
            return self.info.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg) if isinstance(arg, tuple) else [self.value(a) for a in arg]
        if isinstance(arg, slice):
            return slice(self.value(arg.start), self.value(arg.stop), self.value(arg.step))
        return arg

    def opaque(self, node: fx.Node, why: str | None = None) -> Any:
        """Fixes every atom of every input. An output of the same rank as the first tracked input
        gets fixed atoms on the same axis, so that later ops tie to them without another warning."""
        op = why or _op_name(node, self.gm)
        reason = f"{op} at {_where(node)}"
        tracked = [
            a
            for a in _flat([self.value(a) for a in (*node.args, *node.kwargs.values())])
            if isinstance(a, TensorInfo) and a.atoms is not None
        ]
        for arg in tracked:
            self.tk.fix(arg.atoms, reason)
        if tracked:
            self.unknown[op].append(_where(node))
        shape = self.shapes.get(node)
        if tracked and isinstance(shape, tuple) and len(shape) == len(tracked[0].shape):
            atoms = self.tk.fresh(shape[tracked[0].cdim], producer=False)
            self.tk.fix(atoms, reason)
            return TensorInfo(shape, tracked[0].cdim, atoms)
        return self.untracked_like(shape)

    def untracked_like(self, shape: Any) -> Any:
        if isinstance(shape, tuple):
            return TensorInfo(shape)
        if isinstance(shape, list):
            return [self.untracked_like(s) for s in shape]
        return None

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            shape = self.shapes.get(node)
            if node.op == "placeholder":
                if isinstance(shape, tuple) and len(shape) >= 2:
                    atoms = self.tk.fresh(shape[1], producer=False)
                    self.tk.fix(atoms, "model input")
                    self.info[node] = TensorInfo(shape, 1, atoms)
                else:
                    self.info[node] = self.untracked_like(shape)
            elif node.op == "get_attr":
                # A tensor made in forward (fx stores it as a constant, which GraphModule turns into
                # a buffer) is rebuilt at full width on every call, so it cannot be sliced: untracked.
                registered = str(node.target) in self.model_tensors
                info = ParamInfo(str(node.target), shape) if registered else TensorInfo(shape)
                self.info[node] = info if isinstance(shape, tuple) else None
            elif node.op == "call_module":
                self.info[node] = self.call_module(node, shape)
            elif node.op in ("call_function", "call_method"):
                self.info[node] = self.call_function(node, shape)
            elif node.op == "output":
                for arg in _flat(self.value(node.args)):
                    if isinstance(arg, TensorInfo) and arg.atoms is not None:
                        self.tk.fix(arg.atoms, "model output")

    def call_module(self, node: fx.Node, shape: Any) -> Any:
        module = self.gm.get_submodule(node.target)
        handler = None if node.target in self.opaque_modules else handler_for(module)
        args = [self.value(a) for a in node.args]
        tensors = [a for a in _flat(args) + _flat(list(node.kwargs.values())) if isinstance(a, TensorInfo)]
        if handler is None or len(tensors) != 1 or not isinstance(args[0], TensorInfo) or not isinstance(shape, tuple):
            return self.opaque(node)
        out = handler.trace(self.tk, str(node.target), module, args[0], shape)
        if out is None:
            return self.opaque(node)
        self.calls.append((str(node.target), args[0].shape, shape))
        return out

    def call_function(self, node: fx.Node, shape: Any) -> Any:
        target = node.target
        rule = _METHODS.get(target) if node.op == "call_method" else _FUNCTIONS.get(target)
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        has_tensor = any(isinstance(a, (TensorInfo, ParamInfo)) for a in _flat(args) + _flat(list(kwargs.values())))
        if not has_tensor:
            # Shape arithmetic (x.size(1) // 2) or a tensor made from constants: no channels involved.
            return self.untracked_like(shape)
        if rule is None:
            return self.opaque(node)
        out = rule(self, node, args, kwargs, shape)
        return self.opaque(node) if out is _OPAQUE else out


_OPAQUE = object()


# ----------------------------------------------------------------------------------------------
# Rules for functions and methods. Each returns the output info, or _OPAQUE.


def _on_tracked(rule):
    """For rules of ops on one tensor ``args[0]`` with a tensor result: anything else is opaque,
    and an input without tracked channels gives an output without them; ``rule`` sees the rest."""

    @functools.wraps(rule)
    def wrapped(w: _Walker, node, args, kwargs, shape):
        x = args[0] if args else None
        if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
            return _OPAQUE
        if x.cdim is None:
            return w.tk.untracked(shape)
        return rule(w, node, args, kwargs, shape)

    return wrapped


def _arg(args: list, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _unary(w: _Walker, node, args, kwargs, shape):
    tensors = [a for a in _flat(args) + _flat(list(kwargs.values())) if isinstance(a, (TensorInfo, ParamInfo))]
    x = args[0] if args else None
    if len(tensors) != 1 or not isinstance(x, TensorInfo) or not isinstance(shape, tuple) or shape != x.shape:
        return _OPAQUE
    return x


def _binary(w: _Walker, node, args, kwargs, shape):
    """Element-wise ops with broadcasting: channels of two tensors are tied; a parameter with a
    per-channel axis (layer scale, positional embedding) becomes a sliced member."""
    if not isinstance(shape, tuple):
        return _OPAQUE
    operands = [a for a in args[:2] if isinstance(a, (TensorInfo, ParamInfo))]
    if len(operands) != len(_flat([a for a in args if isinstance(a, (TensorInfo, ParamInfo))])):
        return _OPAQUE
    nd = len(shape)
    tracked = [a for a in operands if isinstance(a, TensorInfo) and a.cdim is not None]
    if not tracked:
        return w.untracked_like(shape)
    # The reference operand carries all the output's channels; one with a single channel
    # broadcast over them (a spatial attention map) cannot lose it, so it is fixed.
    tracked.sort(key=lambda a: -len(a.atoms))
    out_cdim = tracked[0].cdim + nd - len(tracked[0].shape)
    channels = shape[out_cdim]
    if len(tracked[0].atoms) != channels:
        return _OPAQUE
    for a in tracked[1:]:
        if a.cdim + nd - len(a.shape) != out_cdim:
            return _OPAQUE
        if len(a.atoms) == 1 and channels > 1:
            w.tk.fix(a.atoms, f"one channel broadcast over {channels} at {_where(node)}")
            continue
        w.tk.tie(tracked[0].atoms, a.atoms)
    for a in operands:
        if isinstance(a, TensorInfo) and a.cdim is not None:
            continue
        dim = out_cdim - (nd - len(a.shape))
        if dim < 0 or a.shape[dim] == 1:
            continue  # broadcast along the channels: nothing to slice
        if isinstance(a, ParamInfo) and a.shape[dim] == channels:
            w.tk.site(a.path, f"dim{dim}", tracked[0].atoms)
            w.param_shapes[a.path] = a.shape
            continue
        return _OPAQUE  # an untracked tensor with a value per channel
    return w.tk.tensor(out_cdim, tracked[0].atoms, shape)


def _cat(w: _Walker, node, args, kwargs, shape):
    tensors = _arg(args, kwargs, 0, "tensors")
    dim = _arg(args, kwargs, 1, "dim", 0)
    if not isinstance(shape, tuple) or not all(isinstance(t, TensorInfo) for t in tensors):
        return _OPAQUE
    dim %= len(shape)
    tracked = [t for t in tensors if t.cdim is not None]
    if not tracked:
        return w.tk.untracked(shape)
    cdim = tracked[0].cdim
    if any(t.cdim != cdim for t in tracked):
        return _OPAQUE
    if dim == cdim:
        atoms: list[int] = []
        for t in tensors:
            atoms += t.atoms if t.atoms is not None else w.tk.consumer_atoms(t, t.shape[dim])
        return w.tk.tensor(cdim, atoms, shape)
    if len(tracked) != len(tensors):
        return _OPAQUE
    for t in tracked[1:]:
        w.tk.tie(tracked[0].atoms, t.atoms)
    return w.tk.tensor(cdim, tracked[0].atoms, shape)


def _flatten(w: _Walker, node, args, kwargs, shape):
    x = args[0]
    if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
        return _OPAQUE
    out = w.tk.flatten(x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1), shape)
    return _OPAQUE if out is None else out


@_on_tracked
def _reshape(w: _Walker, node, args, kwargs, shape):
    """view/reshape: allowed when the channel axis stays whole (or absorbs the dims after it, as a
    flatten) and its new size is computed at run time (-1 or from x.size()), not a constant."""
    x = args[0]
    sizes = (
        node.args[1:] if node.op == "call_method" else (node.args[1] if len(node.args) > 1 else node.kwargs["shape"])
    )
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    if len(sizes) != len(shape):
        return _OPAQUE
    before = prod(x.shape[: x.cdim])
    channels = x.shape[x.cdim]
    # The output axis holding the channels follows dims whose sizes multiply to the same as the
    # dims before the channels (with size-1 dims several axes qualify: the last one that fits).
    for out_dim in reversed(range(len(shape))):
        if prod(shape[:out_dim]) != before:
            continue
        for k in range(x.cdim + 1, len(x.shape) + 1):
            repeat = prod(x.shape[x.cdim + 1 : k])
            if shape[out_dim] == channels * repeat:
                size_arg = sizes[out_dim]
                if isinstance(size_arg, int) and size_arg != -1:
                    return _OPAQUE  # a constant channel count would be wrong after pruning
                return w.tk.tensor(out_dim, [a for a in x.atoms for _ in range(repeat)], shape)
    return _OPAQUE


@_on_tracked
def _permute(w: _Walker, node, args, kwargs, shape):
    x = args[0]
    dims = list(_flat(args[1:])) if len(args) > 1 else list(kwargs["dims"])
    dims = [d % len(x.shape) for d in dims]
    return w.tk.tensor(dims.index(x.cdim), x.atoms, shape)


@_on_tracked
def _transpose(w: _Walker, node, args, kwargs, shape):
    x = args[0]
    a, b = (_arg(args, kwargs, 1, "dim0") % len(x.shape), _arg(args, kwargs, 2, "dim1") % len(x.shape))
    cdim = b if x.cdim == a else a if x.cdim == b else x.cdim
    return w.tk.tensor(cdim, x.atoms, shape)


@_on_tracked
def _reduce(w: _Walker, node, args, kwargs, shape):
    """mean/sum/amax over dims other than the channels."""
    x = args[0]
    dims = _arg(args, kwargs, 1, "dim")
    if dims is None:
        return _OPAQUE
    dims = sorted(d % len(x.shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
    if x.cdim in dims:
        return _OPAQUE
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
    return w.tk.tensor(cdim, x.atoms, shape)


def _spatial(n: int):
    @_on_tracked
    def rule(w: _Walker, node, args, kwargs, shape):
        x = args[0]
        if x.cdim >= len(x.shape) - n:
            return _OPAQUE
        return w.tk.tensor(x.cdim, x.atoms, shape)

    return rule


@_on_tracked
def _interpolate(w: _Walker, node, args, kwargs, shape):
    """Resizing acts on the dims after the first two (N, C, *spatial)."""
    x = args[0]
    if x.cdim != 1 or shape[1] != x.shape[1]:
        return _OPAQUE
    return w.tk.tensor(1, x.atoms, shape)


@_on_tracked
def _pad(w: _Walker, node, args, kwargs, shape):
    x, pad = args[0], _arg(args, kwargs, 1, "pad")
    padded = [len(x.shape) - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]]
    if x.cdim in padded:
        return _OPAQUE  # channel padding: a constant that would be wrong after pruning
    return w.tk.tensor(x.cdim, x.atoms, shape)


@_on_tracked
def _softmax(w: _Walker, node, args, kwargs, shape):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    return _OPAQUE if dim is None or dim % len(x.shape) == x.cdim else x


@_on_tracked
def _layer_norm(w: _Walker, node, args, kwargs, shape):
    x, normalized = args[0], _arg(args, kwargs, 1, "normalized_shape")
    return _OPAQUE if x.cdim >= len(x.shape) - len(normalized) else x


def _getitem(w: _Walker, node, args, kwargs, shape):
    x, index = args
    if isinstance(x, list):
        return x[index] if isinstance(index, int) else _OPAQUE
    if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
        return _OPAQUE
    if x.cdim is None:
        return w.tk.untracked(shape)
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        fill = len(x.shape) - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    in_dim = out_dim = 0
    cdim = None
    for item in index:
        if item is None:
            out_dim += 1
            continue
        if in_dim == x.cdim:
            if item != slice(None):
                return _OPAQUE  # channel selection by constant indices
            cdim = out_dim
        if isinstance(item, slice):
            out_dim += 1
        elif not isinstance(item, int):
            return _OPAQUE  # advanced indexing
        in_dim += 1
    if cdim is None:
        cdim = out_dim + (x.cdim - in_dim)
    return w.tk.tensor(cdim, x.atoms, shape)


def _split(w: _Walker, node, args, kwargs, shape):
    """chunk/split/unbind: along the channels the pieces' sizes are constants -> opaque."""
    x = args[0]
    dim = _arg(args, kwargs, 2, "dim", 0)
    if node.target == "unbind" or getattr(node.target, "__name__", "") == "unbind":
        dim = _arg(args, kwargs, 1, "dim", 0)
    if not isinstance(x, TensorInfo) or not isinstance(shape, list):
        return _OPAQUE
    if x.cdim is None:
        return w.untracked_like(shape)
    if dim % len(x.shape) == x.cdim:
        return _OPAQUE
    return [w.tk.tensor(x.cdim - (len(x.shape) - len(s)), x.atoms, s) for s in shape]


def _no_tensor(w: _Walker, node, args, kwargs, shape):
    return w.untracked_like(shape)


def _stochastic_depth_rule(w, node, args, kwargs, shape):
    return _unary(w, node, args[:1], {}, shape)


_UNARY_FUNCS = [
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp,
    F.sigmoid, F.tanh, operator.neg, torch.square, torch.sqrt,
]  # fmt: skip
_BINARY_FUNCS = [
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
]  # fmt: skip

_FUNCTIONS: dict[Any, Any] = {f: _unary for f in _UNARY_FUNCS}
_FUNCTIONS.update({f: _binary for f in _BINARY_FUNCS})
_FUNCTIONS.update({
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.flatten: _flatten, torch.reshape: _reshape,
    torch.permute: _permute, torch.transpose: _transpose, torch.mean: _reduce, torch.sum: _reduce, torch.amax: _reduce,
    F.pad: _pad, F.interpolate: _interpolate, F.softmax: _softmax, F.log_softmax: _softmax, torch.softmax: _softmax,
    F.layer_norm: _layer_norm,
    operator.getitem: _getitem, torch.chunk: _split, torch.split: _split, torch.unbind: _split, getattr: _no_tensor,
    F.adaptive_avg_pool1d: _spatial(1), F.adaptive_max_pool1d: _spatial(1), F.avg_pool1d: _spatial(1),
    F.max_pool1d: _spatial(1), F.adaptive_avg_pool2d: _spatial(2), F.adaptive_max_pool2d: _spatial(2),
    F.avg_pool2d: _spatial(2), F.max_pool2d: _spatial(2), F.adaptive_avg_pool3d: _spatial(3),
    F.avg_pool3d: _spatial(3), F.max_pool3d: _spatial(3),
})  # fmt: skip
try:  # torchvision's stochastic depth is wrapped for fx; it scales whole samples, so channels pass through
    from torchvision.ops import stochastic_depth as _sd

    _FUNCTIONS[_sd] = _stochastic_depth_rule
except ImportError:  # pragma: no cover
    pass

_METHODS: dict[str, Any] = {
    m: _unary
    for m in (
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "contiguous", "clone",
        "float", "half", "double", "bfloat16", "to", "type_as", "detach", "abs", "neg", "exp", "sqrt", "square",
    )
}  # fmt: skip
_METHODS.update({m: _binary for m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")})
_METHODS.update({
    "view": _reshape, "reshape": _reshape, "flatten": _flatten, "permute": _permute, "transpose": _transpose,
    "mean": _reduce, "sum": _reduce, "amax": _reduce, "softmax": _softmax, "log_softmax": _softmax,
    "chunk": _split, "split": _split, "unbind": _split, "size": _no_tensor, "dim": _no_tensor,
})  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Assembling groups


def trace_channels(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    ignore: Iterable[str | nn.Module] = (),
    warn: bool = True,
) -> ChannelGraph:
    """Runs the channel analysis (see the module docstring) and returns the full result.

    Args:
        model: the dense model (not modified; traced in eval mode).
        example_input: an input (or tuple of inputs) of the shape the model will see.
        ignore: module paths or modules whose output channels must not be pruned.
        warn: warn about operations that block pruning (off when replaying a plan).
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        gm, opaque_modules = _symbolic_trace(model)
        recorder = _ShapeRecorder(gm)
        with torch.no_grad():
            recorder.run(*inputs)
    finally:
        model.train(was_training)
    model_tensors = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    model_tensors |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    walker = _Walker(gm, recorder.shapes, opaque_modules, model_tensors)
    walker.run()
    tk = walker.tk

    names = {m: p for p, m in model.named_modules()}
    for item in ignore:
        path = names.get(item, item) if isinstance(item, nn.Module) else item
        if not any(key[0] == path for key in tk.sites):
            raise ValueError(f"ignore: {path!r} is not a traced layer of {type(model).__name__}")
        for (p, _role), atoms in tk.sites.items():
            if p == path:
                tk.fix(atoms, f"ignored: {path}")

    groups, atom_class = _assemble(tk)
    if warn:
        _warn(walker, groups)
    infos = {n.name: walker.info.get(n) for n in gm.graph.nodes}
    return ChannelGraph(groups, gm, dict(tk.sites), infos, walker.calls, walker.param_shapes, atom_class)


def _assemble(tk: Tracker) -> tuple[list[ChannelGroup], dict[int, tuple[int, int]]]:
    root_of_group: dict[int, int] = {}
    group_classes: dict[int, list[int]] = {}
    for (_path, role), atoms in tk.sites.items():  # sites are in graph order
        if role != "out":
            continue
        for a in atoms:
            g = tk.groups.find(a)
            root_of_group.setdefault(g, len(root_of_group))
            classes = group_classes.setdefault(g, [])
            c = tk.classes.find(a)
            if c not in classes:
                classes.append(c)
    class_index = {g: {c: i for i, c in enumerate(cs)} for g, cs in group_classes.items()}

    # Every atom of a group must be a member class (a class never reached by a producer, e.g. one
    # tied only to an input or a constant, cannot be removed).
    fixed_groups: dict[int, str] = {}
    for a, reason in tk.fixed.items():
        g = tk.groups.find(a)
        if g in root_of_group:
            fixed_groups.setdefault(g, reason)
    members: dict[int, list[tuple[str, str, list[int], list[int]]]] = defaultdict(list)
    for (path, role), atoms in tk.sites.items():
        per_group: dict[int, tuple[list[int], list[int]]] = {}
        for pos, a in enumerate(atoms):
            g = tk.groups.find(a)
            if g not in root_of_group:
                continue
            c = class_index[g].get(tk.classes.find(a))
            if c is None:
                fixed_groups.setdefault(g, f"{path} reads channels no layer produces")
                continue
            positions, classes = per_group.setdefault(g, ([], []))
            positions.append(pos)
            classes.append(c)
        for g, (positions, classes) in per_group.items():
            counts = defaultdict(int)
            for c in classes:
                counts[c] += 1
            if len(counts) != len(group_classes[g]) or len(set(counts.values())) != 1:
                # FLOPs would depend on which channels are kept, not only how many: keep it whole.
                fixed_groups.setdefault(g, f"{path} ({role}) sees only part of the group's channels")
            members[g].append((path, role, positions, classes))

    groups: list[ChannelGroup] = []
    atom_class: dict[int, tuple[int, int]] = {}
    for g, gid in sorted(root_of_group.items(), key=lambda kv: kv[1]):
        size = len(group_classes[g])
        group = ChannelGroup(id=gid, size=size)
        for path, role, positions, classes in members[g]:
            member = Member(path, role, tuple(positions), tuple(classes))
            (group.producers if role == "out" else group.consumers if role == "in" else group.members).append(member)
        block_of: dict[int, list[int]] = defaultdict(list)
        for c_root, i in class_index[g].items():
            block_of[tk.blocks.find(c_root)].append(i)
        blocks = sorted(tuple(sorted(b)) for b in block_of.values())
        if any(len(b) > 1 for b in blocks):
            group.blocks = blocks
            widths = {len(b) for b in blocks}
            if len(widths) != 1:
                fixed_groups.setdefault(g, "blocks of different widths")
            group.round_to = group.min_keep = max(widths)
        if g in fixed_groups:
            group.prunable, group.reason = False, fixed_groups[g]
        groups.append(group)
    for a in range(len(tk.classes.parent)):
        g = tk.groups.find(a)
        if g in root_of_group:
            c = class_index[g].get(tk.classes.find(a))
            if c is not None:
                atom_class[a] = (root_of_group[g], c)
    return groups, atom_class


def _warn(walker: _Walker, groups: list[ChannelGroup]) -> None:
    blocked = {g.reason for g in groups if not g.prunable}
    for op, places in walker.unknown.items():
        if not any(r.startswith(f"{op} at ") for r in blocked):
            continue
        unique = list(dict.fromkeys(places))
        where = ", ".join(unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")
        warnings.warn(
            f"dais_search: cannot follow channels through {op} (at {where}); the channel groups it touches "
            f"are not pruned",
            stacklevel=3,
        )


def find_channel_groups(
    model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], ignore: Iterable[str | nn.Module] = ()
) -> list[ChannelGroup]:
    """The channel groups of ``model``: sets of channels that must be kept or removed together.

    Args:
        model: any ``nn.Module`` (not modified).
        example_input: an input of the shape the model will see (batch size is irrelevant).
        ignore: module paths or modules whose output channels must not be pruned.

    Returns:
        Every group that some conv/linear layer produces, prunable or not (``reason`` says why
        not), in graph order.

    Example:
        >>> groups = find_channel_groups(model, torch.randn(1, 3, 32, 32), ignore=["conv1"])
        >>> [(g.name, g.size) for g in groups if g.prunable]
    """
    return trace_channels(model, example_input, ignore).groups
