"""The fx trace under the channel analysis, with its fallback for code fx cannot trace.

:func:`trace_with_shapes` traces a model with torch.fx and runs the trace once on an example input
to record every node's output shape. When the whole model cannot be traced, the deepest submodules
that fail become opaque leaves (the analysis then fixes the channels they touch) and the rest is
traced. The model is not modified: constants fx stores on it are taken off again.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["ShapeRecorder", "flat", "op_name", "symbolic_trace", "trace_with_shapes", "where"]


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


def symbolic_trace(model: nn.Module) -> tuple[fx.GraphModule, set[str]]:
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


class ShapeRecorder(fx.Interpreter):
    """Runs a trace and keeps the shape (tree) of every node's result."""

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


def op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    """A readable name of what ``node`` calls: a module type, ``Tensor.method`` or a function name."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def where(node: fx.Node) -> str:
    """The module path a node belongs to, for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else "(model)"


def flat(value: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts."""
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in flat(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in flat(item)]
    return [value]


def trace_with_shapes(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], training: bool = False
) -> tuple[fx.GraphModule, set[str], dict]:
    r"""(trace, opaque module paths, node -> output shape) of ``model`` on ``inputs``.

    ``training`` picks the control flow that is traced: the model's ``self.training`` branches
    (auxiliary heads, stochastic depth) are Python ``if``\ s that fx resolves while tracing. The
    shapes are always recorded with every module in eval mode (BN with running statistics, so
    a batch of one works and no statistic changes). The model's mode is restored afterwards.
    """
    was_training = model.training
    model.train(training)
    try:
        gm, opaque = symbolic_trace(model)
        model.eval()
        recorder = ShapeRecorder(gm)
        with torch.no_grad():
            recorder.run(*inputs)
    finally:
        model.train(was_training)
    return gm, opaque, recorder.shapes
