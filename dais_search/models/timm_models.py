"""``timm:NAME`` models: every timm architecture, built with random weights, timm imported lazily.

timm is an optional dependency (``pip install 'dais-search[timm]'``): it is imported only when a
``timm:`` name is used. Models are built with ``pretrained=False``, so nothing is downloaded unless
the caller passes ``pretrained=True`` (which fetches the weights from the Hugging Face Hub). A name
may carry a pretrained tag (``timm:resnet18.a1_in1k``): the tag picks the input size and, with
``pretrained=True``, the weights.
"""

from __future__ import annotations

import difflib
from types import ModuleType

from torch import nn

from ..errors import UserError

__all__ = ["TIMM_PREFIX", "create_timm_model", "timm_input_size", "timm_model_names"]

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'dais-search[timm]'"


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError as exc:
        raise UserError(f"timm models need the optional timm package: {INSTALL_HINT} (or pip install timm)") from exc
    return timm


def timm_model_names() -> list[str]:
    """Every timm architecture name (without ``timm:``), sorted."""
    return sorted(_timm().list_models())


def _timm_name(name: str) -> str:
    """``timm:NAME`` -> ``NAME``, checked against timm's registry (a ``.tag`` suffix allowed)."""
    timm = _timm()
    bare = name[len(TIMM_PREFIX) :]
    if not timm.is_model(bare):
        known = timm_model_names()
        close = difflib.get_close_matches(bare.split(".")[0], known, n=3)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise UserError(
            f"unknown timm model {name!r}.{hint} See timm.list_models() for the {len(known)} timm architectures."
        )
    return bare


def create_timm_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=num_classes, **kwargs)`` for ``timm:NAME``;
    ``pretrained=True`` in ``kwargs`` downloads the weights."""
    bare = _timm_name(name)
    kwargs.setdefault("pretrained", False)
    return _timm().create_model(bare, num_classes=num_classes, **kwargs)


def timm_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) of the model's pretrained config (its default tag's, or the named tag's); no network."""
    cfg = _timm().models.get_pretrained_cfg(_timm_name(name))
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return tuple(size) if size else (3, 224, 224)
