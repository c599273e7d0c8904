"""Plain-text tables for the command line."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy
import torch
import torchvision

from ._version import __version__

__all__ = ["format_table", "human", "library_versions", "machine"]


def human(n: float) -> str:
    """``250971392 -> '250.97M'``: a short form for tables (exact counts stay in JSON)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A Markdown-compatible table: right-aligned numbers, left-aligned text.

    Example:
        >>> print(format_table([["resnet56", "93.39"]], ["model", "top-1 %"]))
        | model    | top-1 % |
        |:---------|--------:|
        | resnet56 |   93.39 |
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [
        bool(cells)
        and all(r[i].replace(",", "").replace(".", "").replace("%", "").lstrip("-").isdigit() for r in cells)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
            + " |"
        )

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1)) for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def library_versions() -> dict[str, str]:
    """Versions of what produced an output, recorded beside it."""
    return {
        "dais_search": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def machine() -> dict[str, object]:
    """The CPU a measurement ran on, recorded beside it: timings, and even a search's outcome (float
    rounding differs between CPU kinds), compare only within one machine."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
