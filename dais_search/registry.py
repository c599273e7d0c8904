"""A small registry: names (or objects) mapped to what users plug in, duplicates refused (fvcore style).

Example:
    >>> SCHEDULES = Registry("temperature schedule")
    >>> @SCHEDULES.register("linear")
    ... def linear(p, start, end): return start + (end - start) * p
    >>> SCHEDULES.get("linear") is linear
    True
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from .errors import UserError

__all__ = ["Registry"]

T = TypeVar("T")


def _label(key: Hashable) -> str:
    return repr(key) if isinstance(key, str) else getattr(key, "__name__", repr(key))


class Registry(Generic[T]):
    """Keys -> entries. ``what`` names the kind of entry in messages ("temperature schedule")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[Hashable, T] = {}

    def register(self, *keys: Hashable) -> Callable[[T], T]:
        """Decorator registering its argument under every key; if any key is taken, it registers
        none and raises ``ValueError`` (a programming error, not a user's)."""

        def wrap(entry: T) -> T:
            self.check_free(*keys)
            for key in keys:
                self._entries[key] = entry
            return entry

        return wrap

    def check_free(self, *keys: Hashable) -> None:
        """``ValueError`` naming the first key that is taken, if any."""
        taken = [key for key in keys if key in self._entries]
        if taken:
            raise ValueError(f"a {self.what} for {_label(taken[0])} is already registered")

    def unregister(self, *keys: Hashable) -> None:
        """Removes keys (missing ones are ignored): for tests and plugins that clean up."""
        for key in keys:
            self._entries.pop(key, None)

    def lookup(self, key: Hashable) -> T | None:
        """The entry of ``key``, or ``None``."""
        return self._entries.get(key)

    def get(self, key: Hashable) -> T:
        """The entry of ``key``.

        Raises:
            UserError: an unknown key; the message lists the registered names.
        """
        if key not in self._entries:
            raise UserError(f"unknown {self.what} {_label(key)!r}; registered: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        """The registered keys' names, sorted."""
        return sorted(k if isinstance(k, str) else _label(k) for k in self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)
