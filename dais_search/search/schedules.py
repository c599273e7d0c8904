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

from ..registry import Registry

__all__ = ["SCHEDULES", "Schedule", "get_schedule", "list_schedules", "register_schedule", "temperature_at"]

Schedule = Callable[[float, float, float], float]
SCHEDULES: Registry[Schedule] = Registry("temperature schedule (search.temperature_schedule)")


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Decorator registering a schedule under ``name``; refuses a name that is taken."""
    return SCHEDULES.register(name)


def get_schedule(name: str) -> Schedule:
    """The schedule registered as ``name``.

    Raises:
        UserError: an unknown name (the message lists the registered ones).
    """
    return SCHEDULES.get(name)


def list_schedules() -> list[str]:
    """The registered schedules, sorted."""
    return SCHEDULES.names()


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
