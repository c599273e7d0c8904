"""Temperature schedules of the search, a registry (fvcore-style: a function of progress in [0, 1]).

``schedule(progress, start, end) -> temperature``, with ``schedule(0) == start`` and
``schedule(1) == end``. Budget files name one in ``search.temperature_schedule``; add your own with::

    @register_schedule("linear")
    def linear(p, start, end):
        return start + (end - start) * p
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import UserError

__all__ = ["Schedule", "get_schedule", "list_schedules", "register_schedule", "temperature_at"]

Schedule = Callable[[float, float, float], float]
_SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Decorator registering a schedule under ``name``; refuses a name that is taken."""

    def wrap(fn: Schedule) -> Schedule:
        if name in _SCHEDULES:
            raise ValueError(f"a temperature schedule named {name!r} is already registered")
        _SCHEDULES[name] = fn
        return fn

    return wrap


def get_schedule(name: str) -> Schedule:
    """The schedule registered as ``name``.

    Raises:
        UserError: an unknown name (the message lists the registered ones).
    """
    if name not in _SCHEDULES:
        raise UserError(
            f"search.temperature_schedule = {name!r} is not a registered schedule; choose "
            f"{' or '.join(list_schedules())}"
        )
    return _SCHEDULES[name]


def list_schedules() -> list[str]:
    """The registered schedules, sorted."""
    return sorted(_SCHEDULES)


@register_schedule("exponential")
def exponential(p: float, start: float, end: float) -> float:
    """Geometric interpolation: the temperature falls by the same factor every step."""
    return start * (end / start) ** p


@register_schedule("cosine")
def cosine(p: float, start: float, end: float) -> float:
    """Half a cosine from ``start`` to ``end``: slow at both ends."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * p))


def temperature_at(progress: float, start: float, end: float, schedule: str = "exponential") -> float:
    """The annealed temperature at ``progress`` (clamped to [0, 1]) under the named schedule."""
    return get_schedule(schedule)(min(max(progress, 0.0), 1.0), start, end)
