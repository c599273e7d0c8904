"""Atomic file writes: readers see the old file or the new one, never a part-written one.

Every file a run writes (checkpoints, plans, metrics, configs) goes through :func:`atomic_write`:
a temporary file beside the target, flushed and fsynced, then ``os.replace``d over it. Under
``torchrun`` only rank 0 writes: on the other processes these functions do nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

import torch

from .distributed import is_main

__all__ = ["atomic_torch_save", "atomic_write", "write_json"]

_UMASK = os.umask(0o022)  # os.umask can only be read by setting it: read once, at import ...
os.umask(_UMASK)  # ... and put back at once


def _file_mode() -> int:
    """``0666`` less the process's umask (read without changing it where Linux shows it)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = _UMASK
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, fsyncs it and moves it over
    ``path``; the folder is created if needed, and the file gets the permissions ``open()`` would
    give it (``0666`` less the umask: a bundle others may read). On any error the target is left as it was. Only rank 0
    of a ``torchrun`` job writes (the others return at once)."""
    if not is_main():
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; a file written with open() gets 0666 less the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, strict JSON through :func:`atomic_write` (encoded before anything is
    written). NaN and infinities are not JSON: they raise ``ValueError`` and nothing is written."""
    try:
        text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: not written, it would hold a NaN or an infinity ({exc})") from None
    atomic_write(path, lambda f: f.write(text.encode()))
