"""Checkpoints: written atomically, carrying what is needed to rebuild the model, read with clear errors.

Our checkpoints are dicts::

    {"format": "dais_search.checkpoint", "version": 1,
     "model": {"name": "resnet56", "num_classes": 10, "kwargs": {}},
     "normalize": "imagenet", "state_dict": {...}, ...extra (epoch, metrics, args)}

Foreign checkpoints are read too: a bare state dict, or a dict with ``state_dict`` / ``model`` /
``model_state_dict`` (e.g. akamaster's ``{"best_prec1", "state_dict"}``); DataParallel's
``module.`` prefix is stripped.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import signal
import threading
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import any_true
from .errors import UserError
from .files import atomic_torch_save
from .models import create_model

__all__ = [
    "get_rng_state",
    "load_checkpoint",
    "load_state_dict_strict",
    "model_from_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "stop_requests",
]

FORMAT = "dais_search.checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    num_classes: int,
    model_kwargs: dict[str, Any] | None = None,
    normalize: str = "imagenet",
    **extra: Any,
) -> None:
    """Saves ``model``'s weights with its registry name, atomically.

    The file is written to a temporary file in the same folder, flushed to disk and moved over
    ``path`` with ``os.replace``, so a crash or a full disk never leaves a truncated checkpoint.

    Args:
        path: destination file; its folder is created if needed.
        model: the model to save (unwrapped from DataParallel/DDP if needed).
        model_name: the registry name that rebuilds it (``create_model(model_name, ...)``).
        num_classes: classifier size to rebuild with.
        model_kwargs: other builder arguments.
        normalize: the input normalisation the weights expect.
        **extra: anything else worth keeping (epoch, metrics, optimizer state, args).
    """
    model = getattr(model, "module", model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "num_classes": num_classes, "kwargs": dict(model_kwargs or {})},
        "normalize": normalize,
        "state_dict": model.state_dict(),
        **extra,
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint and returns ``{"state_dict": ..., "model": ... or None, ...}``.

    Raises:
        UserError: when the file is missing, unreadable (truncated, not a torch file) or holds no
            state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist; check the --checkpoint path")
    try:
        # weights_only=False: foreign checkpoints (akamaster's) pickle plain Python values beside
        # the tensors. Only load checkpoints you trust, as with any pickle.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(
            f"checkpoint {path!r} could not be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"the file is truncated or is not a PyTorch checkpoint. Re-download or re-save it."
        ) from exc
    if isinstance(obj, nn.Module):
        obj = {"state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict or a dict with one")
    state = None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict) and obj[key] and all(torch.is_tensor(v) for v in obj[key].values()):
            state = obj[key]
            break
    if state is None and obj and all(torch.is_tensor(v) for v in obj.values()):
        state, obj = obj, {}
    if state is None:
        raise UserError(
            f"checkpoint {path!r} has no state dict (keys: {', '.join(map(str, list(obj)[:10]))}); "
            f"expected a state dict or a dict with 'state_dict'"
        )
    out = dict(obj) if obj.get("format") == FORMAT else {k: v for k, v in obj.items() if k != "model"}
    out["state_dict"] = _strip_prefix(state)
    out.setdefault("model", None)
    return out


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Loads ``state`` into ``model`` only if keys and shapes match exactly.

    Raises:
        UserError: naming the first missing, unexpected and shape-mismatched keys, with shapes.
    """
    expected = model.state_dict()
    # BN's num_batches_tracked counter (PyTorch >= 0.4.1) is absent from older checkpoints, such as
    # the shared CIFAR teachers; it only matters for momentum=None BN, so the model's own is kept.
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches, first: {'; '.join(shapes[:3])}")
        if missing:
            parts.append(f"{len(missing)} keys missing from the {source}, first: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys in the {source}, first: {', '.join(unexpected[:3])}")
        raise UserError(
            f"the {source} does not fit the {type(model).__name__} model: {' | '.join(parts)}. "
            f"Check that --model (and --num-classes) name the architecture the checkpoint was saved from."
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    ckpt: dict[str, Any], model_name: str | None = None, num_classes: int | None = None, source: str = "checkpoint"
) -> tuple[nn.Module, str]:
    """Builds the model a loaded checkpoint describes (or ``model_name``) and loads its weights.

    Returns:
        (model, model name).

    Raises:
        UserError: when the architecture is unknown, unnamed, or does not fit the weights.
    """
    meta = ckpt.get("model") or {}
    name = model_name or meta.get("name")
    if name is None:
        raise UserError(f"the {source} does not say which architecture it holds; pass --model NAME")
    if num_classes is None:
        num_classes = meta.get("num_classes") or _infer_num_classes(ckpt["state_dict"]) or 10
    kwargs = meta.get("kwargs", {}) if meta.get("name") == name else {}
    model = create_model(name, num_classes=num_classes, **kwargs)
    load_state_dict_strict(model, ckpt["state_dict"], source)
    return model, name


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    # The last 1-D tensor named like a classifier bias gives the class count of foreign checkpoints.
    biases = [v for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    return int(biases[-1].shape[0]) if biases else None


# -- resuming exactly ------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Every random number generator a run draws from: torch (CPU and each CUDA device), NumPy, Python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts back what :func:`get_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """While open, SIGTERM and SIGINT (Ctrl-C) do not kill the process but set a flag, which the
    yielded function reads: a training loop checks it after each step, saves its state and stops
    with a hint to resume. A second Ctrl-C interrupts at once. Outside the main thread it does
    nothing (signals can only be handled there).

    Under ``torchrun`` the yielded function is a collective: it is true on every process once any
    process got the signal, so that all stop after the same step (every process must call it
    equally often, as the training loops do)."""
    requested = threading.Event()

    def agreed() -> bool:
        return any_true(requested.is_set())

    if threading.current_thread() is not threading.main_thread():
        yield agreed
        return

    def handle(signum, frame) -> None:
        if requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield agreed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
