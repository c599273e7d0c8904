"""Which widths a group may keep: whole blocks of grouped convs, at least ``min_keep``, and
multiples of the budget's ``round_to`` (hardware-friendly widths) or the full width.

The search's binarisation, the budget repair, every baseline allocation and the feasibility
check all move widths on this one lattice, so a plan made under ``round_to = 8`` keeps 8, 16,
24 ... channels of every group (or all of them) whichever way it was made.

Example:
    >>> lattice = Granularity(fm.groups, min_keep=1, round_to=8)
    >>> lattice.widths[g.id]             # e.g. (8, 16, 20) for a group of 20 channels
    >>> lattice.down(g.id, 13), lattice.up(g.id, 13), lattice.nearest(g.id, 13)
    (8, 16, 16)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch

from ..channels import ChannelGroup

__all__ = ["Granularity", "unit_width", "whole_units"]


def unit_width(group: ChannelGroup) -> int:
    """Channels that go together in ``group``: the block width of a grouped conv, else 1."""
    return len(group.blocks[0]) if group.blocks else group.round_to


class Granularity:
    """The allowed kept widths of every group, sorted ascending (the full width always included).

    A group of ``C`` channels with unit ``u`` (:func:`unit_width`) may keep ``k * lcm(u, round_to)``
    channels for every ``k`` with ``min_keep <= k * lcm(u, round_to) < C``, or all ``C``.

    Raises:
        ValueError: ``round_to`` or ``min_keep`` below 1.
    """

    def __init__(self, groups: Sequence[ChannelGroup], min_keep: int = 1, round_to: int = 1) -> None:
        if round_to < 1 or min_keep < 1:
            raise ValueError(f"round_to and min_keep must be at least 1, got {round_to} and {min_keep}")
        self.round_to, self.min_keep = round_to, min_keep
        self.widths: dict[int, tuple[int, ...]] = {}
        for g in groups:
            step = math.lcm(unit_width(g), round_to)
            least = max(g.min_keep, min_keep)
            self.widths[g.id] = (*(w for w in range(step, g.size, step) if w >= least), g.size)

    def floor(self) -> dict[int, int]:
        """The fewest channels each group may keep."""
        return {gid: ws[0] for gid, ws in self.widths.items()}

    def allows(self, gid: int, n: int) -> bool:
        return n in self.widths[gid]

    def down(self, gid: int, n: float) -> int:
        """The largest allowed width at most ``n`` (the smallest allowed one when ``n`` is below it)."""
        ws = self.widths[gid]
        return ws[max(bisect.bisect_right(ws, n) - 1, 0)]

    def up(self, gid: int, n: float) -> int:
        """The smallest allowed width at least ``n`` (the full width when ``n`` is above it)."""
        ws = self.widths[gid]
        return ws[min(bisect.bisect_left(ws, n), len(ws) - 1)]

    def nearest(self, gid: int, n: float) -> int:
        """The allowed width closest to ``n`` (the smaller one on a tie)."""
        lo, hi = self.down(gid, n), self.up(gid, n)
        return hi if abs(hi - n) < abs(n - lo) else lo

    def next_up(self, gid: int, n: int) -> int | None:
        """The next allowed width above ``n``; ``None`` at the full width."""
        ws = self.widths[gid]
        i = bisect.bisect_right(ws, n)
        return ws[i] if i < len(ws) else None

    def next_down(self, gid: int, n: int) -> int | None:
        """The next allowed width below ``n``; ``None`` at the floor."""
        ws = self.widths[gid]
        i = bisect.bisect_left(ws, n) - 1
        return ws[i] if i >= 0 else None


def whole_units(group: ChannelGroup, order: torch.Tensor, count: int) -> list[int]:
    """The first ``count`` channels of ``order``, extended to whole blocks of a grouped conv."""
    if not group.blocks:
        return sorted(order[: min(count, group.size)].tolist())
    block_of = {c: b for b in group.blocks for c in b}
    chosen: list[int] = []
    seen = set()
    for c in order.tolist():
        b = block_of[c]
        if b not in seen:
            seen.add(b)
            chosen += list(b)
        if len(chosen) >= count:
            break
    return sorted(chosen)
