"""Channel atoms: the bookkeeping under the channel analysis.

Every channel a layer produces is an *atom*. Three union-find structures over the atoms record what
the analysis learns: ``classes`` (atoms that are the same channel, e.g. both operands of a residual
add), ``blocks`` (channels that can only go together, e.g. one group of a grouped conv) and
``groups`` (everything pruned as one unit). Atoms that an operation does not understand are
*fixed*, with the reason, which makes their group unprunable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

__all__ = ["DisjointSets", "ParamInfo", "TensorInfo", "Tracker", "untracked_like"]


class DisjointSets:
    """Union-find over integers 0..n-1 with path halving; the smaller root wins."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class TensorInfo:
    """A traced tensor: its shape and, if tracked, its channel dimension and the atom at each index."""

    shape: tuple[int, ...]
    cdim: int | None = None
    atoms: list[int] | None = None


@dataclass
class ParamInfo:
    """A parameter or buffer read with ``get_attr``."""

    path: str
    shape: tuple[int, ...]


class Tracker:
    """The atom bookkeeping that layer handlers and op rules use (see :mod:`.layers`, :mod:`.rules`)."""

    def __init__(self) -> None:
        self.classes, self.blocks, self.groups = DisjointSets(), DisjointSets(), DisjointSets()
        self.fixed: dict[int, str] = {}
        self.sites: dict[tuple[str, str], list[int]] = {}

    def fresh(self, n: int, producer: bool = True) -> list[int]:
        """``n`` new atoms; a producer's atoms form one group."""
        atoms = [self.classes.add() for _ in range(n)]
        for _ in range(n):
            self.blocks.add()
            self.groups.add()
        if producer:
            for a in atoms[1:]:
                self.groups.union(atoms[0], a)
        return atoms

    def tie(self, a: list[int], b: list[int]) -> None:
        """Atoms at equal positions are the same channel."""
        for x, y in zip(a, b, strict=True):
            self.classes.union(x, y)
            self.blocks.union(x, y)
            self.groups.union(x, y)

    def block(self, atoms: list[int]) -> None:
        """These atoms can only be removed together."""
        for a in atoms[1:]:
            self.blocks.union(atoms[0], a)
            self.groups.union(atoms[0], a)

    def fix(self, atoms: Iterable[int], reason: str) -> None:
        """These atoms (and so their groups) are never pruned."""
        for a in atoms:
            self.fixed.setdefault(a, reason)

    def site(self, path: str, role: str, atoms: list[int]) -> None:
        """Records a sliceable axis; a second call of the same module ties the two."""
        key = (path, role)
        if key in self.sites:
            self.tie(self.sites[key], atoms)
        else:
            self.sites[key] = list(atoms)

    def consumer_atoms(self, x: TensorInfo, n: int) -> list[int]:
        if x.atoms is not None:
            return x.atoms
        atoms = self.fresh(n, producer=False)
        self.fix(atoms, "reads channels that are not tracked")
        return atoms

    @staticmethod
    def tensor(cdim: int | None, atoms: list[int] | None, shape: tuple[int, ...]) -> TensorInfo:
        if cdim is not None and len(atoms) != shape[cdim]:
            raise AssertionError(f"{len(atoms)} atoms for {shape[cdim]} channels")
        return TensorInfo(tuple(shape), cdim, atoms)

    @staticmethod
    def untracked(shape: tuple[int, ...]) -> TensorInfo:
        return TensorInfo(tuple(shape))

    def flatten(self, x: TensorInfo, start: int, end: int, out_shape: tuple[int, ...]) -> TensorInfo | None:
        """``flatten(start, end)``: channels merged with the dims after them repeat their atom."""
        if x.cdim is None:
            return self.untracked(out_shape)
        nd = len(x.shape)
        start, end = start % nd if nd else 0, end % nd if nd else 0
        if x.cdim < start:
            return self.tensor(x.cdim, x.atoms, out_shape)
        if x.cdim > end:
            return self.tensor(x.cdim - (end - start), x.atoms, out_shape)
        if x.cdim != start:
            return None  # dims before the channels are merged into them: not a channel axis any more
        repeat = prod(x.shape[start + 1 : end + 1])
        return self.tensor(start, [a for a in x.atoms for _ in range(repeat)], out_shape)


def untracked_like(shape: object) -> TensorInfo | list | None:
    """Info of an op's result without tracked channels: a tensor shape, or a list of them."""
    if isinstance(shape, tuple):
        return TensorInfo(shape)
    if isinstance(shape, list):
        return [untracked_like(s) for s in shape]
    return None
