"""The walk over a traced model: every node's channels, from the layer handlers and op rules.

Placeholders get fixed atoms (the model input is never pruned), modules go to their
:mod:`.layers` handler, functions and methods to their :mod:`.rules` rule, and whatever has
neither is *opaque*: every channel it touches is fixed, and the op is remembered for one warning.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch.fx as fx

from .atoms import ParamInfo, TensorInfo, Tracker, untracked_like
from .index_ops import IndexOp, index_target, owner_of
from .layers import handler_for
from .rules import OPAQUE, rule_for
from .trace import flat, op_name, where

__all__ = ["Walker"]


class Walker:
    """Walks ``gm`` once (:meth:`run`), filling ``tk``, ``info``, ``calls``, ``param_shapes`` and ``unknown``."""

    def __init__(
        self,
        gm: fx.GraphModule,
        shapes: dict[fx.Node, Any],
        opaque_modules: set[str],
        model_tensors: set[str],
        tk: Tracker | None = None,
    ) -> None:
        self.gm, self.shapes, self.opaque_modules, self.model_tensors = gm, shapes, opaque_modules, model_tensors
        self.tk = tk if tk is not None else Tracker()  # a shared tracker merges several walks
        self.info: dict[fx.Node, Any] = {}
        self.calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.unknown: dict[str, list[str]] = defaultdict(list)
        self.index_ops: list[IndexOp] = []  # channel pads, slices, splits followed (see .index_ops)
        self._calls_in: dict[tuple[str, str], int] = defaultdict(int)  # calls of an op per owning module
        self.occurrence: dict[fx.Node, tuple[str, int]] = {}  # node -> (owner, earlier calls of its op there)

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
        op = why or op_name(node, self.gm)
        reason = f"{op} at {where(node)}"
        tracked = [
            a
            for a in flat([self.value(a) for a in (*node.args, *node.kwargs.values())])
            if isinstance(a, TensorInfo) and a.atoms is not None
        ]
        for arg in tracked:
            self.tk.fix(arg.atoms, reason)
        if tracked:
            self.unknown[op].append(where(node))
        shape = self.shapes.get(node)
        if tracked and isinstance(shape, tuple) and len(shape) == len(tracked[0].shape):
            atoms = self.tk.fresh(shape[tracked[0].cdim], producer=False)
            self.tk.fix(atoms, reason)
            return TensorInfo(shape, tracked[0].cdim, atoms)
        return untracked_like(shape)

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
                    self.info[node] = untracked_like(shape)
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
                for arg in flat(self.value(node.args)):
                    if isinstance(arg, TensorInfo) and arg.atoms is not None:
                        self.tk.fix(arg.atoms, "model output")

    def call_module(self, node: fx.Node, shape: Any) -> Any:
        module = self.gm.get_submodule(node.target)
        handler = None if node.target in self.opaque_modules else handler_for(module)
        args = [self.value(a) for a in node.args]
        tensors = [a for a in flat(args) + flat(list(node.kwargs.values())) if isinstance(a, TensorInfo)]
        if handler is None or len(tensors) != 1 or not isinstance(args[0], TensorInfo) or not isinstance(shape, tuple):
            return self.opaque(node)
        out = handler.trace(self.tk, str(node.target), module, args[0], shape)
        if out is None:
            return self.opaque(node)
        self.calls.append((str(node.target), args[0].shape, shape))
        return out

    def call_function(self, node: fx.Node, shape: Any) -> Any:
        key = (owner_of(node), index_target(node))
        self.occurrence[node] = (key[0], self._calls_in[key])
        self._calls_in[key] += 1
        rule = rule_for(node)
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if isinstance(node.target, type) and issubclass(node.target, tuple) and not kwargs:
            return list(args)  # a (named) tuple of outputs, e.g. torchvision's GoogLeNetOutputs: a container
        has_tensor = any(isinstance(a, (TensorInfo, ParamInfo)) for a in flat(args) + flat(list(kwargs.values())))
        if not has_tensor:
            # Shape arithmetic (x.size(1) // 2) or a tensor made from constants: no channels involved.
            return untracked_like(shape)
        if rule is None:
            return self.opaque(node)
        out = rule(self, node, args, kwargs, shape)
        return self.opaque(node) if out is OPAQUE else out
