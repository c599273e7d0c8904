"""The fx trace under the channel analysis, with its fallback for code fx cannot trace.

:func:`trace_with_shapes` traces a model with torch.fx and runs the trace once on an example input
to record every node's output shape. When the whole model cannot be traced, the deepest submodules
that fail become opaque leaves (the analysis then fixes the channels they touch) and the rest is
traced (module containers, ``nn.ModuleList`` and ``nn.ModuleDict``, are searched too: they are never
called, their members are). The functions a library registered as untraceable (timm's
``register_notrace_function``, when timm is loaded) are kept whole as calls, which the analysis treats as
opaque, in every trace (a module traced on its own, to be rewritten, matches its part of the model's).
The model's optional forward arguments beyond its example inputs (an attention mask, a flag) are traced
at their defaults. The model is not modified: constants fx stores on it are taken off again.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["ShapeRecorder", "flat", "op_name", "symbolic_trace", "trace_with_shapes", "where"]


_CONTAINERS = (nn.ModuleList, nn.ModuleDict)  # fx's default takes them for leaves; only their members run


class _Tracer(fx.Tracer):
    def __init__(self, opaque: set[str], wrapped: tuple[Callable, ...] = (), concrete: dict | None = None) -> None:
        super().__init__(autowrap_functions=wrapped)
        self.opaque = opaque
        self.concrete = concrete  # fixed values of the root's optional forward arguments

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or super().is_leaf_module(m, qualname)

    def trace(self, root, concrete_args=None) -> fx.Graph:
        return super().trace(root, concrete_args if concrete_args is not None else self.concrete)


def _defaults_after(model: nn.Module, n_inputs: int) -> dict[str, Any] | None:
    """The forward's optional parameters after its first ``n_inputs``, at their defaults: the analysis
    runs the model on its example inputs alone, and an optional mask traced as a tensor would take the
    branch that uses it (timm's Hiera and NaFlexViT then fail to run their own trace)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[n_inputs:]
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    fixed = {p.name: p.default for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty}
    return fixed or None


def _notrace_functions() -> tuple[Callable, ...]:
    """The functions a loaded library registered as untraceable by fx (timm's
    ``register_notrace_function``); the library is never imported here."""
    timm_fx = sys.modules.get("timm.layers._fx")
    get = getattr(timm_fx, "get_notrace_functions", None)
    return tuple(get()) if callable(get) else ()


def _trace(
    root: nn.Module,
    opaque: set[str],
    prefix: str = "",
    wrapped: tuple[Callable, ...] = (),
    concrete: dict | None = None,
) -> fx.Graph:
    """One fx trace of ``root``; the tensor constants fx stores on ``root`` are taken off again
    afterwards (the caller's GraphModule keeps its own references), so the model is not modified."""
    before = set(root.__dict__)
    try:
        return _Tracer({p[len(prefix) :] for p in opaque if p.startswith(prefix)}, wrapped, concrete).trace(root)
    finally:
        for name in set(root.__dict__) - before:
            delattr(root, name)


def _find_opaque(
    module: nn.Module, path: str, opaque: set[str], wrapped: tuple[Callable, ...] = (), concrete: dict | None = None
) -> None:
    """Marks the deepest submodules of ``module`` that fx cannot trace as opaque leaves (``concrete``:
    the fixed optional arguments of the root, ``path`` "")."""
    prefix = f"{path}." if path else ""
    try:
        _trace(module, opaque, prefix, wrapped, concrete)
        return
    except Exception:  # noqa: BLE001 - any tracing failure: look deeper
        pass
    plain = fx.Tracer()
    for name, child in module.named_children():
        child_path = prefix + name
        if isinstance(child, _CONTAINERS) or not plain.is_leaf_module(child, child_path):
            _find_opaque(child, child_path, opaque, wrapped)
    if path and not isinstance(module, _CONTAINERS):
        try:
            _trace(module, opaque, prefix, wrapped)
        except Exception:  # noqa: BLE001 - its own forward cannot be traced
            opaque.add(path)


def symbolic_trace(model: nn.Module, n_inputs: int | None = None) -> tuple[fx.GraphModule, set[str]]:
    """Traces ``model``; the deepest submodules that cannot be traced become opaque leaves, and the
    functions its library marks untraceable stay whole. With ``n_inputs``, the forward's optional
    arguments after them are traced at their defaults (the trace then runs on ``n_inputs`` inputs only)."""
    concrete = _defaults_after(model, n_inputs) if n_inputs is not None else None
    return _symbolic_trace(model, _notrace_functions(), concrete)


def _symbolic_trace(
    model: nn.Module, wrapped: tuple[Callable, ...], concrete: dict | None
) -> tuple[fx.GraphModule, set[str]]:
    opaque: set[str] = set()
    try:
        return _graph_module(model, opaque, wrapped, concrete), opaque
    except Exception as first_error:  # noqa: BLE001 - any tracing failure sends us to the fallback
        error = first_error
    _find_opaque(model, "", opaque, wrapped, concrete)
    try:
        return _graph_module(model, opaque, wrapped, concrete), opaque
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"{type(model).__name__} cannot be traced by torch.fx even with its untraceable submodules "
            f"({', '.join(sorted(opaque)) or 'none'}) as leaves: {error}"
        ) from exc


def _graph_module(
    model: nn.Module, opaque: set[str], wrapped: tuple[Callable, ...] = (), concrete: dict | None = None
) -> fx.GraphModule:
    before = set(model.__dict__)
    try:
        graph = _Tracer(opaque, wrapped, concrete).trace(model)
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
        gm, opaque = symbolic_trace(model, len(inputs))
        model.eval()
        recorder = ShapeRecorder(gm)
        with torch.no_grad():
            recorder.run(*inputs)
    finally:
        model.train(was_training)
    return gm, opaque, recorder.shapes
