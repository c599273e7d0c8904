"""Op rules: what a function or Tensor method call does to channels, in a registry.

A rule is called for every traced call of its target with the walker's context ``w`` (its
:class:`~.atoms.Tracker` ``w.tk``), the fx node, the call's arguments as infos
(:class:`~.atoms.TensorInfo` for tensors, :class:`~.atoms.ParamInfo` for registered parameters,
constants as they are) and the shape of the result. It returns the result's info, or
:data:`OPAQUE` when it does not understand the call: the analysis then fixes every channel the
call touches and warns once, naming the op.

Register a rule for your own function (or, by name, a Tensor method) with::

    torch.fx.wrap("my_gate")    # at module level, beside my_gate: fx keeps the call whole

    @register_function(my_gate, "my_method")
    def my_rule(w, node, args, kwargs, shape):
        return args[0]          # channels pass through unchanged

Targets are unique: registering one twice is an error, as for :func:`~.layers.register_layer`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from math import prod
from typing import Any, Protocol

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..registry import Registry
from .atoms import ParamInfo, TensorInfo, Tracker, untracked_like
from .index_ops import IndexOp, index_target
from .trace import flat, where

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "OPAQUE",
    "Rule",
    "RuleContext",
    "on_tracked",
    "register_function",
    "rule_for",
]

OPAQUE = object()
"""Returned by a rule that does not understand a call."""


class RuleContext(Protocol):
    """What a rule may use of the walker."""

    tk: Tracker
    param_shapes: dict[str, tuple[int, ...]]
    index_ops: list[IndexOp]
    occurrence: dict[fx.Node, tuple[str, int]]


Rule = Callable[[RuleContext, fx.Node, list, dict, Any], Any]

FUNCTION_RULES: Registry[Rule] = Registry("channel rule")
METHOD_RULES: Registry[Rule] = Registry("channel rule")


def register_function(*targets: Callable | str) -> Callable[[Rule], Rule]:
    """Decorator registering a rule for functions (``torch.cat``, ``operator.add``, ...) or, given
    as strings, Tensor methods (``"view"``); if any target already has a rule, it registers none
    and raises ``ValueError``.

    fx traces *into* plain Python functions, so a function of your own reaches the analysis as
    one call only when fx keeps it whole: mark it with ``torch.fx.wrap("my_fn")`` at module level.
    """
    functions = tuple(t for t in targets if not isinstance(t, str))
    methods = tuple(t for t in targets if isinstance(t, str))

    def wrap(rule: Rule) -> Rule:
        FUNCTION_RULES.check_free(*functions)  # both checked before either table changes
        METHOD_RULES.check_free(*methods)
        FUNCTION_RULES.register(*functions)(rule)
        METHOD_RULES.register(*methods)(rule)
        return rule

    return wrap


def rule_for(node: fx.Node) -> Rule | None:
    """The rule of a ``call_function`` or ``call_method`` node, or ``None``."""
    return METHOD_RULES.lookup(node.target) if node.op == "call_method" else FUNCTION_RULES.lookup(node.target)


def on_tracked(rule: Rule) -> Rule:
    """For rules of ops on one tensor ``args[0]`` with a tensor result: anything else is opaque,
    and an input without tracked channels gives an output without them; ``rule`` sees the rest."""

    @functools.wraps(rule)
    def wrapped(w: RuleContext, node: fx.Node, args: list, kwargs: dict, shape: Any) -> Any:
        x = args[0] if args else None
        if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
            return OPAQUE
        if x.cdim is None:
            return w.tk.untracked(shape)
        return rule(w, node, args, kwargs, shape)

    return wrapped


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record(w: RuleContext, node: fx.Node, kind: str, x: TensorInfo, pieces: list[list[int]], params,
            position: int = 0) -> bool:  # fmt: skip
    """Records a channel index op (see :mod:`.index_ops`); False when the model's own forward calls it
    (it could not be rewritten: the caller treats the op as opaque)."""
    owner, occurrence = w.occurrence[node]
    if not owner:
        return False
    w.index_ops.append(IndexOp(kind, owner, index_target(node), occurrence, x.cdim, tuple(x.atoms),
                               tuple(tuple(p) for p in pieces), tuple(params), position))  # fmt: skip
    return True


def _arg(args: list, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _unary(w: RuleContext, node, args, kwargs, shape):
    tensors = [a for a in flat(args) + flat(list(kwargs.values())) if isinstance(a, (TensorInfo, ParamInfo))]
    x = args[0] if args else None
    if len(tensors) != 1 or not isinstance(x, TensorInfo) or not isinstance(shape, tuple) or shape != x.shape:
        return OPAQUE
    return x


def _binary(w: RuleContext, node, args, kwargs, shape):
    """Element-wise ops with broadcasting: channels of two tensors are tied; a parameter with a
    per-channel axis (layer scale, positional embedding) becomes a sliced member."""
    if not isinstance(shape, tuple):
        return OPAQUE
    operands = [a for a in args[:2] if isinstance(a, (TensorInfo, ParamInfo))]
    if len(operands) != len(flat([a for a in args if isinstance(a, (TensorInfo, ParamInfo))])):
        return OPAQUE
    nd = len(shape)
    tracked = [a for a in operands if isinstance(a, TensorInfo) and a.cdim is not None]
    if not tracked:
        return untracked_like(shape)
    # The reference operand carries all the output's channels; one with a single channel
    # broadcast over them (a spatial attention map) cannot lose it, so it is fixed.
    tracked.sort(key=lambda a: -len(a.atoms))
    out_cdim = tracked[0].cdim + nd - len(tracked[0].shape)
    channels = shape[out_cdim]
    if len(tracked[0].atoms) != channels:
        return OPAQUE
    for a in tracked[1:]:
        if a.cdim + nd - len(a.shape) != out_cdim:
            return OPAQUE
        if len(a.atoms) == 1 and channels > 1:
            w.tk.fix(a.atoms, f"one channel broadcast over {channels} at {where(node)}")
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
        return OPAQUE  # an untracked tensor with a value per channel
    return w.tk.tensor(out_cdim, tracked[0].atoms, shape)


def _cat(w: RuleContext, node, args, kwargs, shape):
    tensors = _arg(args, kwargs, 0, "tensors")
    dim = _arg(args, kwargs, 1, "dim", 0)
    if not isinstance(shape, tuple) or not all(isinstance(t, TensorInfo) for t in tensors):
        return OPAQUE
    dim %= len(shape)
    tracked = [t for t in tensors if t.cdim is not None]
    if not tracked:
        return w.tk.untracked(shape)
    cdim = tracked[0].cdim
    if any(t.cdim != cdim for t in tracked):
        return OPAQUE
    if dim == cdim:
        atoms: list[int] = []
        for t in tensors:
            atoms += t.atoms if t.atoms is not None else w.tk.consumer_atoms(t, t.shape[dim])
        return w.tk.tensor(cdim, atoms, shape)
    if len(tracked) != len(tensors):
        return OPAQUE
    for t in tracked[1:]:
        w.tk.tie(tracked[0].atoms, t.atoms)
    return w.tk.tensor(cdim, tracked[0].atoms, shape)


def _flatten(w: RuleContext, node, args, kwargs, shape):
    x = args[0]
    if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
        return OPAQUE
    out = w.tk.flatten(x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1), shape)
    return OPAQUE if out is None else out


@on_tracked
def _reshape(w: RuleContext, node, args, kwargs, shape):
    """view/reshape: allowed when the channel axis stays whole (or absorbs the dims after it, as a
    flatten) and its new size is computed at run time (-1 or from x.size()), not a constant."""
    x = args[0]
    sizes = (
        node.args[1:] if node.op == "call_method" else (node.args[1] if len(node.args) > 1 else node.kwargs["shape"])
    )
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    if len(sizes) != len(shape):
        return OPAQUE
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
                    return OPAQUE  # a constant channel count would be wrong after pruning
                return w.tk.tensor(out_dim, [a for a in x.atoms for _ in range(repeat)], shape)
    return OPAQUE


@on_tracked
def _permute(w: RuleContext, node, args, kwargs, shape):
    x = args[0]
    dims = list(flat(args[1:])) if len(args) > 1 else list(kwargs["dims"])
    dims = [d % len(x.shape) for d in dims]
    return w.tk.tensor(dims.index(x.cdim), x.atoms, shape)


@on_tracked
def _transpose(w: RuleContext, node, args, kwargs, shape):
    x = args[0]
    a, b = (_arg(args, kwargs, 1, "dim0") % len(x.shape), _arg(args, kwargs, 2, "dim1") % len(x.shape))
    cdim = b if x.cdim == a else a if x.cdim == b else x.cdim
    return w.tk.tensor(cdim, x.atoms, shape)


@on_tracked
def _reduce(w: RuleContext, node, args, kwargs, shape):
    """mean/sum/amax over dims other than the channels."""
    x = args[0]
    dims = _arg(args, kwargs, 1, "dim")
    if dims is None:
        return OPAQUE
    dims = sorted(d % len(x.shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
    if x.cdim in dims:
        return OPAQUE
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
    return w.tk.tensor(cdim, x.atoms, shape)


def _spatial(n: int):
    @on_tracked
    def rule(w: RuleContext, node, args, kwargs, shape):
        x = args[0]
        if x.cdim >= len(x.shape) - n:
            return OPAQUE
        return w.tk.tensor(x.cdim, x.atoms, shape)

    return rule


@on_tracked
def _interpolate(w: RuleContext, node, args, kwargs, shape):
    """Resizing acts on the dims after the first two (N, C, *spatial)."""
    x = args[0]
    if x.cdim != 1 or shape[1] != x.shape[1]:
        return OPAQUE
    return w.tk.tensor(1, x.atoms, shape)


@on_tracked
def _pad(w: RuleContext, node, args, kwargs, shape):
    """Spatial padding passes channels on. Constant padding of the channels (option-A shortcuts)
    puts atoms of its own before and after the input's: an index op (:mod:`.index_ops`)."""
    x, pad = args[0], _arg(args, kwargs, 1, "pad")
    padded = [len(x.shape) - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]]
    if x.cdim not in padded:
        return w.tk.tensor(x.cdim, x.atoms, shape)
    pair = len(x.shape) - 1 - x.cdim
    front, back = pad[2 * pair], pad[2 * pair + 1]
    if _arg(args, kwargs, 2, "mode", "constant") != "constant" or not all(_is_int(v) and v >= 0 for v in (front, back)):
        return OPAQUE  # copies of channels (reflect, replicate), crops, or run-time amounts
    atoms = w.tk.fresh(front, producer=False) + x.atoms + w.tk.fresh(back, producer=False)
    if not _record(w, node, "pad", x, [atoms], (front, back), pair):
        return OPAQUE
    return w.tk.tensor(x.cdim, atoms, shape)


@on_tracked
def _narrow(w: RuleContext, node, args, kwargs, shape):
    x, dim, start, length = args[0], _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "start"), \
        _arg(args, kwargs, 3, "length")  # fmt: skip
    if not all(_is_int(v) for v in (dim, start, length)):
        return OPAQUE
    if dim % len(x.shape) != x.cdim:
        return w.tk.tensor(x.cdim, x.atoms, shape)
    start %= len(x.atoms)
    if not _record(w, node, "narrow", x, [x.atoms[start : start + length]], (start, start + length)):
        return OPAQUE
    return w.tk.tensor(x.cdim, x.atoms[start : start + length], shape)


@on_tracked
def _softmax(w: RuleContext, node, args, kwargs, shape):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    return OPAQUE if dim is None or dim % len(x.shape) == x.cdim else x


@on_tracked
def _layer_norm(w: RuleContext, node, args, kwargs, shape):
    x, normalized = args[0], _arg(args, kwargs, 1, "normalized_shape")
    return OPAQUE if x.cdim >= len(x.shape) - len(normalized) else x


def _batch_norm(w: RuleContext, node, args, kwargs, shape):
    """``F.batch_norm`` called by a module's own forward (timm's BatchNormAct2d, frozen BN): statistics
    and affine parameters are per channel on dim 1, so the channels pass through and each registered
    statistic or parameter becomes a sliced member; any other per-channel tensor is opaque."""
    x = args[0] if args else None
    if not isinstance(x, TensorInfo) or not isinstance(shape, tuple) or shape != x.shape:
        return OPAQUE
    names = ("running_mean", "running_var", "weight", "bias")
    per_channel = [_arg(args, kwargs, i, name) for i, name in enumerate(names, start=1)]
    tensors = [a for a in flat(args[1:]) + flat(list(kwargs.values())) if isinstance(a, (TensorInfo, ParamInfo))]
    if len(tensors) != sum(p is not None for p in per_channel):
        return OPAQUE  # a tensor where a constant (training, momentum, eps) belongs
    if x.cdim is None:
        return w.tk.untracked(shape)
    if x.cdim != 1 or len(x.shape) < 2:
        return OPAQUE
    channels = x.shape[1]
    if not all(p is None or (isinstance(p, ParamInfo) and p.shape == (channels,)) for p in per_channel):
        return OPAQUE  # statistics made in forward cannot be sliced
    for p in per_channel:
        if p is not None:
            w.tk.site(p.path, "dim0", x.atoms)
            w.param_shapes[p.path] = p.shape
    return x


def _getitem(w: RuleContext, node, args, kwargs, shape):
    x, index = args
    if isinstance(x, list):
        return x[index] if isinstance(index, int) else OPAQUE
    if not isinstance(x, TensorInfo) or not isinstance(shape, tuple):
        return OPAQUE
    if x.cdim is None:
        return w.tk.untracked(shape)
    index = index if isinstance(index, tuple) else (index,)
    ellipsis = any(i is Ellipsis for i in index)
    if ellipsis:
        at = index.index(Ellipsis)
        fill = len(x.shape) - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    in_dim = out_dim = 0
    cdim = None
    atoms = x.atoms
    for position, item in enumerate(index):
        if item is None:
            out_dim += 1
            continue
        if in_dim == x.cdim:
            if item != slice(None):
                # A range of channels with constant bounds is an index op; anything else (an index, a
                # step, a list) selects channels by constants that pruning would make wrong.
                if ellipsis or not isinstance(item, slice) or item.step not in (None, 1) \
                        or not all(v is None or _is_int(v) for v in (item.start, item.stop)):  # fmt: skip
                    return OPAQUE
                start, stop, _ = item.indices(len(x.atoms))
                atoms = x.atoms[start:stop] if stop > start else []
                if not atoms or not _record(w, node, "slice", x, [atoms], (start, start + len(atoms)), position):
                    return OPAQUE
            cdim = out_dim
        if isinstance(item, slice):
            out_dim += 1
        elif not isinstance(item, int):
            return OPAQUE  # advanced indexing
        in_dim += 1
    if cdim is None:
        cdim = out_dim + (x.cdim - in_dim)
    return w.tk.tensor(cdim, atoms, shape)


def _split(w: RuleContext, node, args, kwargs, shape):
    """chunk/split/unbind: along other axes the channels pass on to every piece; chunk/split along
    the channels cut them into consecutive pieces (an index op); unbind along them is opaque."""
    x = args[0]
    dim = _arg(args, kwargs, 2, "dim", 0)
    if node.target == "unbind" or getattr(node.target, "__name__", "") == "unbind":
        dim = _arg(args, kwargs, 1, "dim", 0)
    if not isinstance(x, TensorInfo) or not isinstance(shape, list):
        return OPAQUE
    if x.cdim is None:
        return untracked_like(shape)
    if dim % len(x.shape) == x.cdim:
        if not _is_int(dim) or any(len(s) != len(x.shape) for s in shape):
            return OPAQUE  # unbind: the channel axis goes
        pieces, start = [], 0
        for s in shape:
            pieces.append(x.atoms[start : start + s[x.cdim]])
            start += s[x.cdim]
        if start != len(x.atoms) or not all(pieces) or not _record(w, node, "split", x, pieces,
                                                                    [len(p) for p in pieces]):  # fmt: skip
            return OPAQUE
        return [w.tk.tensor(x.cdim, p, s) for p, s in zip(pieces, shape, strict=True)]
    return [w.tk.tensor(x.cdim - (len(x.shape) - len(s)), x.atoms, s) for s in shape]


def _no_tensor(w: RuleContext, node, args, kwargs, shape):
    return untracked_like(shape)


def _stochastic_depth_rule(w, node, args, kwargs, shape):
    return _unary(w, node, args[:1], {}, shape)


register_function(
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp,
    F.sigmoid, F.tanh, operator.neg, torch.square, torch.sqrt, operator.pow, torch.pow,
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "contiguous", "clone",
    "float", "half", "double", "bfloat16", "to", "type_as", "detach", "abs", "neg", "exp", "sqrt", "square", "pow",
)(_unary)  # fmt: skip
register_function(
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
)(_binary)  # fmt: skip
register_function(torch.cat, torch.concat, torch.concatenate)(_cat)
register_function(torch.flatten, "flatten")(_flatten)
register_function(torch.reshape, "view", "reshape")(_reshape)
register_function(torch.permute, "permute")(_permute)
register_function(torch.transpose, "transpose")(_transpose)
register_function(torch.mean, torch.sum, torch.amax, "mean", "sum", "amax")(_reduce)
register_function(F.pad)(_pad)
register_function(torch.narrow, "narrow")(_narrow)
register_function(F.interpolate)(_interpolate)
register_function(F.softmax, F.log_softmax, torch.softmax, "softmax", "log_softmax")(_softmax)
register_function(F.layer_norm)(_layer_norm)
register_function(F.batch_norm)(_batch_norm)
register_function(operator.getitem)(_getitem)
register_function(torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind")(_split)
register_function(getattr, "size", "dim")(_no_tensor)
register_function(F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.avg_pool1d, F.max_pool1d)(_spatial(1))
register_function(F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d)(_spatial(2))
register_function(F.adaptive_avg_pool3d, F.avg_pool3d, F.max_pool3d)(_spatial(3))
try:  # torchvision's stochastic depth is wrapped for fx; it scales whole samples, so channels pass through
    from torchvision.ops import stochastic_depth as _sd

    register_function(_sd)(_stochastic_depth_rule)
except ImportError:  # pragma: no cover
    pass
