"""Layer handlers: what each module type does to channels, how to slice it, what it costs.

One registry maps a module type to a :class:`LayerHandler`. The channel analysis
(:mod:`.walk`) asks a handler how a call maps input channels to output channels;
:meth:`ChannelPlan.apply <.plan.ChannelPlan.apply>` asks it to slice the module in
place; :class:`~.flops_model.FlopsModel` asks it for FLOPs and parameter terms.

A handler applies only to modules whose ``forward`` is the registered type's own: a subclass
that overrides ``forward`` may do anything, so the analysis traces through it (or treats it as
opaque) instead. Register your own with::

    @register_layer(MyConv)
    class MyConvHandler(LayerHandler): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from .atoms import TensorInfo, Tracker

__all__ = ["LayerHandler", "Term", "handler_for", "register_layer"]


@dataclass(frozen=True)
class Term:
    """``coef * prod(kept count of each site role)``: one monomial of a FLOPs or params polynomial."""

    coef: float
    roles: tuple[str, ...]


class LayerHandler:
    """Base handler. Subclasses override what their layer type needs.

    ``trace`` returns the output's channel info, or ``None`` when the call is not understood
    (the analysis then marks it opaque). Sites are named by role: ``"in"``, ``"out"`` or, for
    per-channel normalisation and activation parameters, ``"ch"``.
    """

    def trace(self, tk: Tracker, path: str, module: nn.Module, x: TensorInfo, out_shape) -> TensorInfo | None:
        raise NotImplementedError

    def slice(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        """Slices ``module`` in place to the kept positions of each of its roles."""

    def flops(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[Term]:
        """FLOPs of one call, as counted by ``FlopCounterMode``."""
        return []

    def params(self, module: nn.Module) -> list[Term]:
        """Parameters of the module."""
        return []


_REGISTRY: dict[type, LayerHandler] = {}


def register_layer(*types: type) -> Callable[[type[LayerHandler]], type[LayerHandler]]:
    """Class decorator registering a handler for module ``types``; refuses duplicates."""

    def wrap(cls: type[LayerHandler]) -> type[LayerHandler]:
        for t in types:
            if t in _REGISTRY:
                raise ValueError(f"a layer handler for {t.__name__} is already registered")
            _REGISTRY[t] = cls()
        return cls

    return wrap


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler of ``module``'s type (or of a base type whose ``forward`` it keeps)."""
    for t in type(module).__mro__:
        if t in _REGISTRY:
            return _REGISTRY[t] if type(module).forward is t.forward else None
    return None


def _param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.clone())


# ----------------------------------------------------------------------------------------------


@register_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvHandler(LayerHandler):
    """Convolutions produce channels. Depthwise convs (and grouped convs with equal per-group
    input and output widths) tie input channel i to output channel i, and keep or remove whole
    groups; other grouped convs are not pruned."""

    def trace(self, tk, path, module, x, out_shape):
        if x.cdim is not None and x.cdim != 1:
            return None
        in_atoms = tk.consumer_atoms(x, module.in_channels)
        out_atoms = tk.fresh(module.out_channels)
        g = module.groups
        if g > 1:
            if module.in_channels // g == module.out_channels // g:
                width = module.in_channels // g
                tk.tie(in_atoms, out_atoms)
                if width > 1:
                    for i in range(g):
                        tk.block(in_atoms[i * width : (i + 1) * width])
            else:
                reason = f"grouped conv {path} with different input and output widths per group"
                tk.fix(in_atoms, reason)
                tk.fix(out_atoms, reason)
        tk.site(path, "in", in_atoms)
        tk.site(path, "out", out_atoms)
        return tk.tensor(1, out_atoms, out_shape)

    def slice(self, module, keep):
        out_idx, in_idx = keep["out"], keep["in"]
        g = module.groups
        weight = module.weight[out_idx]
        if g == 1:
            weight = weight[:, in_idx]
        else:
            # Whole groups are kept (blocks), so the per-group input width is unchanged.
            per_group_out = module.out_channels // g
            g = len(out_idx) // per_group_out
        _param(module, "weight", weight)
        if module.bias is not None:
            _param(module, "bias", module.bias[out_idx])
        module.in_channels, module.out_channels, module.groups = len(in_idx), len(out_idx), g

    def flops(self, module, in_shape, out_shape):
        kernel = prod(module.kernel_size)
        per_out = 2 * out_shape[0] * prod(out_shape[2:]) * kernel
        if module.groups == 1:
            return [Term(per_out, ("in", "out"))]
        return [Term(per_out * (module.in_channels // module.groups), ("out",))]

    def params(self, module):
        kernel = prod(module.kernel_size)
        terms = (
            [Term(kernel, ("in", "out"))]
            if module.groups == 1
            else [Term(kernel * (module.in_channels // module.groups), ("out",))]
        )
        if module.bias is not None:
            terms.append(Term(1, ("out",)))
        return terms


@register_layer(nn.Linear)
class LinearHandler(LayerHandler):
    """Linear layers produce features on the last dimension."""

    def trace(self, tk, path, module, x, out_shape):
        if x.cdim is not None and x.cdim != len(x.shape) - 1:
            return None
        in_atoms = tk.consumer_atoms(x, module.in_features)
        out_atoms = tk.fresh(module.out_features)
        tk.site(path, "in", in_atoms)
        tk.site(path, "out", out_atoms)
        return tk.tensor(len(out_shape) - 1, out_atoms, out_shape)

    def slice(self, module, keep):
        _param(module, "weight", module.weight[keep["out"]][:, keep["in"]])
        if module.bias is not None:
            _param(module, "bias", module.bias[keep["out"]])
        module.in_features, module.out_features = len(keep["in"]), len(keep["out"])

    def flops(self, module, in_shape, out_shape):
        return [Term(2 * prod(in_shape[:-1]), ("in", "out"))]

    def params(self, module):
        return [Term(1, ("in", "out"))] + ([Term(1, ("out",))] if module.bias is not None else [])


class _PerChannel(LayerHandler):
    """Modules with per-channel parameters or statistics on dimension 1 (BN, affine InstanceNorm, PReLU)."""

    tensors: tuple[str, ...] = ()
    count_attr: str = ""

    def trace(self, tk, path, module, x, out_shape):
        if x.cdim != 1:
            return None
        tk.site(path, "ch", x.atoms)
        return x

    def slice(self, module, keep):
        idx = keep["ch"]
        for name in self.tensors:
            if getattr(module, name, None) is not None:
                _param(module, name, getattr(module, name)[idx])
        setattr(module, self.count_attr, len(idx))

    def params(self, module):
        n = sum(1 for name in self.tensors if isinstance(getattr(module, name, None), nn.Parameter))
        return [Term(n, ("ch",))] if n else []


@register_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNormHandler(_PerChannel):
    tensors = ("weight", "bias", "running_mean", "running_var")
    count_attr = "num_features"


@register_layer(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormHandler(_PerChannel):
    tensors = ("weight", "bias", "running_mean", "running_var")
    count_attr = "num_features"


@register_layer(nn.PReLU)
class PReLUHandler(_PerChannel):
    tensors = ("weight",)
    count_attr = "num_parameters"

    def trace(self, tk, path, module, x, out_shape):
        return x if module.num_parameters == 1 else super().trace(tk, path, module, x, out_shape)

    def slice(self, module, keep):
        if module.num_parameters > 1:
            super().slice(module, keep)

    def params(self, module):
        return [Term(1, ("ch",))] if module.num_parameters > 1 else []


@register_layer(nn.GroupNorm)
class GroupNormHandler(_PerChannel):
    """GroupNorm's statistics mix the channels of a norm group: only whole norm groups go."""

    tensors = ("weight", "bias")
    count_attr = "num_channels"

    def trace(self, tk, path, module, x, out_shape):
        if x.cdim != 1:
            return None
        width = module.num_channels // module.num_groups
        if width > 1:
            for i in range(module.num_groups):
                tk.block(x.atoms[i * width : (i + 1) * width])
        tk.site(path, "ch", x.atoms)
        return x

    def slice(self, module, keep):
        width = module.num_channels // module.num_groups
        super().slice(module, keep)
        module.num_groups = len(keep["ch"]) // width


@register_layer(nn.LayerNorm)
class LayerNormHandler(LayerHandler):
    """LayerNorm over the channel dimension mixes all channels in its statistics: removing one
    changes the others, so such a call is opaque. Over other dimensions it passes channels."""

    def trace(self, tk, path, module, x, out_shape):
        normalized = range(len(x.shape) - len(module.normalized_shape), len(x.shape))
        return None if x.cdim is None or x.cdim in normalized else x

    def params(self, module):
        return []  # constant: never sliced


# Element-wise or spatial modules: channels pass through unchanged.
_PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)  # fmt: skip
_POOLS = {
    nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveMaxPool1d: 1,
    nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool2d: 2,
    nn.MaxPool3d: 3, nn.AvgPool3d: 3, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool3d: 3,
}  # fmt: skip


@register_layer(*_PASS_THROUGH)
class PassThroughHandler(LayerHandler):
    def trace(self, tk, path, module, x, out_shape):
        return tk.tensor(x.cdim, x.atoms, out_shape) if x.cdim is not None else tk.untracked(out_shape)


@register_layer(*_POOLS)
class PoolHandler(LayerHandler):
    """Pooling acts on the trailing spatial dimensions; channels must lie before them."""

    def trace(self, tk, path, module, x, out_shape):
        spatial = _POOLS[next(t for t in type(module).__mro__ if t in _POOLS)]
        if x.cdim is None:
            return tk.untracked(out_shape)
        if x.cdim >= len(x.shape) - spatial:
            return None
        return tk.tensor(x.cdim, x.atoms, out_shape)


@register_layer(nn.Flatten)
class FlattenHandler(LayerHandler):
    def trace(self, tk, path, module, x, out_shape):
        return tk.flatten(x, module.start_dim, module.end_dim, out_shape)


@register_layer(nn.Softmax, nn.LogSoftmax)
class SoftmaxHandler(LayerHandler):
    def trace(self, tk, path, module, x, out_shape):
        if x.cdim is None:
            return tk.untracked(out_shape)
        dim = module.dim if module.dim is not None else -1
        return None if dim % len(x.shape) == x.cdim else x
