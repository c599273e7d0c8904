"""Model registry: every network the library can build, by name.

Built-in CIFAR networks are registered below; every torchvision classification model is available
as ``tv:NAME`` (e.g. ``tv:resnet50``) and, with the optional timm package
(``pip install 'dais-search[timm]'``), every timm model as ``timm:NAME`` (e.g. ``timm:resnet18``;
random weights, nothing downloaded). Users add their own with :func:`register_model`::

    @register_model("mynet", input_size=(3, 32, 32))
    def mynet(num_classes: int = 10) -> nn.Module: ...

Example:
    >>> model = create_model("resnet56", num_classes=10)
    >>> input_size("resnet56")
    (3, 32, 32)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from ..errors import UserError
from .cifar_mobilenetv2 import CifarMobileNetV2
from .cifar_resnet import CifarResNet, cifar_resnet
from .cifar_vgg import CifarVGG, cifar_vgg
from .timm_models import TIMM_PREFIX, create_timm_model, timm_input_size, timm_model_names

__all__ = [
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarVGG",
    "TIMM_PREFIX",
    "TV_PREFIX",
    "create_model",
    "input_size",
    "list_models",
    "register_model",
]

TV_PREFIX = "tv:"


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, input_size: tuple[int, int, int] = (3, 32, 32), description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers ``builder(num_classes=..., **kwargs) -> nn.Module`` under ``name``.

    Args:
        name: registry key; must be new and must not start with ``tv:`` or ``timm:``.
        input_size: the (C, H, W) the model is meant for; the default input of ``flops``.
        description: one line for ``dais-search flops --list``.

    Raises:
        ValueError: if the name is taken or reserved.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if name.startswith(TV_PREFIX):
        raise ValueError(f"names starting with {TV_PREFIX!r} are reserved for torchvision models")
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"names starting with {TIMM_PREFIX!r} are reserved for timm models")

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = _Entry(builder, tuple(input_size), description)
        return builder

    return wrap


for _depth in (8, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", description=f"CIFAR ResNet-{_depth}, option-A (zero-pad) shortcuts")(
        partial(cifar_resnet, _depth, option="A")
    )
    register_model(f"resnet{_depth}_b", description=f"CIFAR ResNet-{_depth}, option-B (1x1 conv) shortcuts")(
        partial(cifar_resnet, _depth, option="B")
    )
for _depth in (11, 13, 16, 19):
    register_model(f"vgg{_depth}", description=f"CIFAR VGG-{_depth} with batch norm")(partial(cifar_vgg, _depth))
register_model("mobilenetv2", description="CIFAR MobileNetV2 (stride 1 stem and stage 2)")(CifarMobileNetV2)


def _torchvision_classification_models() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models(include_torchvision: bool = False, include_timm: bool = False) -> list[str]:
    """Names :func:`create_model` accepts; with ``include_torchvision``, also every ``tv:NAME``; with
    ``include_timm``, also every ``timm:NAME`` (needs timm: a :class:`UserError` without it)."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += [TV_PREFIX + n for n in _torchvision_classification_models()]
    if include_timm:
        names += [TIMM_PREFIX + n for n in timm_model_names()]
    return names


def _unknown(name: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UserError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(known)}; "
        f"and every torchvision classification model as 'tv:NAME' (e.g. tv:resnet50), "
        f"every timm model as 'timm:NAME' (e.g. timm:resnet18; pip install 'dais-search[timm]')."
    )


def _tv_name(name: str) -> str:
    tv = name[len(TV_PREFIX) :]
    known = _torchvision_classification_models()
    if tv not in known:
        close = difflib.get_close_matches(tv, known, n=3)
        hint = f" Did you mean {', '.join(TV_PREFIX + c for c in close)}?" if close else ""
        raise UserError(
            f"unknown torchvision model {name!r}.{hint} torchvision classification models: {', '.join(known)}"
        )
    return tv


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Builds a freshly initialised model by registry name, ``tv:NAME`` or ``timm:NAME``.

    Args:
        name: a name from :func:`list_models`, ``tv:`` + a torchvision classification model, or
            ``timm:`` + a timm model (optionally with its pretrained tag, ``timm:resnet18.a1_in1k``).
        num_classes: size of the classifier output.
        **kwargs: passed to the builder (for ``tv:`` models, to ``torchvision.models.get_model``,
            e.g. ``weights="DEFAULT"``, which downloads the ImageNet weights; for ``timm:`` models,
            to ``timm.create_model``, which gets ``pretrained=False`` unless ``pretrained=True`` is
            passed, which downloads the weights).

    Raises:
        UserError: for an unknown name (the message lists the known ones, or the closest timm
            names), or a ``timm:`` name without timm installed.
    """
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name, num_classes=num_classes, **kwargs)
    if name.startswith(TV_PREFIX):
        import torchvision.models

        return torchvision.models.get_model(_tv_name(name), num_classes=num_classes, **kwargs)
    if name not in _REGISTRY:
        raise _unknown(name, list_models())
    return _REGISTRY[name].builder(num_classes=num_classes, **kwargs)


def input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a model is meant for: 32x32 for CIFAR models, the weights' crop for ``tv:``,
    the pretrained config's ``input_size`` for ``timm:`` (no network)."""
    if name.startswith(TIMM_PREFIX):
        return timm_input_size(name)
    if name.startswith(TV_PREFIX):
        import torchvision.models

        # The smallest crop any published weights use: models built without weights take their
        # default resolution (vit_h_14: 224, though its SWAG weights need 518).
        weights = torchvision.models.get_model_weights(_tv_name(name))
        crop = min((w.transforms().crop_size[0] for w in weights), default=224)
        return (3, crop, crop)
    if name not in _REGISTRY:
        raise _unknown(name, list_models())
    return _REGISTRY[name].input_size


def describe(name: str) -> str:
    """One-line description of a registered model."""
    return _REGISTRY[name].description
