"""Matplotlib figures of a search: the indicator heatmap, keep ratios and the soft cost over time.

The same functions draw TensorBoard's images (``add_figure``) and ``dais-search plot``'s PNGs.
They take plain arrays, so that they draw a live search and a finished run's files alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .layout import COST_LABELS, stages

__all__ = ["cost_figure", "heatmap_figure", "keep_ratio_figure"]

WIDTH_INCHES, DPI = 10.0, 100  # 1000 pixels wide


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # no screen needed; never opens a window
    import matplotlib.pyplot as plt

    return plt


def heatmap_figure(names: Sequence[str], masks: Sequence[np.ndarray], title: str = ""):
    """One row per group (labelled ``name  kept/width``), its soft masks sorted from most to least
    kept; narrower groups end in grey. Yellow is 1 (kept), dark blue 0: a converged search shows
    each row as a yellow block then a blue one, an early one as smooth gradients."""
    plt = _pyplot()
    width = max((len(m) for m in masks), default=1)
    grid = np.full((len(masks), width), np.nan)
    for row, m in zip(grid, masks, strict=True):
        row[: len(m)] = np.sort(np.asarray(m, dtype=np.float64))[::-1]
    height = max(3.0, 1.4 + 0.2 * len(masks))
    fig, ax = plt.subplots(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(masks)))
    labels = [f"{n}  {float(np.sum(m)):.0f}/{len(m)}" for n, m in zip(names, masks, strict=True)]
    ax.set_yticklabels(labels, fontsize=8 if len(masks) <= 40 else 6)
    ax.set_xlabel("channels of the group, sorted by indicator (grey: the group is narrower)")
    ax.set_title(title or "channel indicators", fontsize=11)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    bar.set_label("soft mask (1 kept, 0 pruned)")
    return fig


def keep_ratio_figure(progress: dict[str, np.ndarray], keep: dict[str, np.ndarray], title: str = ""):
    """Each group's soft keep ratio against search progress (0 to 1), one panel per stage.

    ``progress[name]`` and ``keep[name]`` are the x and y of group ``name``'s curve."""
    plt = _pyplot()
    panels = stages(list(keep))
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_INCHES, 0.5 + 3.0 * rows), dpi=DPI, squeeze=False,
                             layout="constrained", sharex=True)  # fmt: skip
    for ax, (stage, names) in zip(axes.flat, panels.items(), strict=False):
        for name in names:
            ax.plot(progress[name], keep[name], linewidth=1.2, label=name)
        ax.set_title(stage, fontsize=10)
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.set_ylabel("soft keep ratio")
        ax.legend(fontsize=6, ncol=2 if len(names) > 6 else 1, loc="lower left")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("search progress")
    fig.suptitle(title or "keep ratio of every group", fontsize=11)
    return fig


def cost_figure(progress: np.ndarray, ratio: np.ndarray, temperature: np.ndarray | None = None,
                cost_name: str = "flops", title: str = ""):  # fmt: skip
    """Soft cost over its target against search progress (the budget is the line at 1), with the
    temperature on a second, logarithmic axis."""
    plt = _pyplot()
    cost_name = COST_LABELS.get(cost_name, cost_name)
    fig, ax = plt.subplots(figsize=(WIDTH_INCHES, 4.0), dpi=DPI, layout="constrained")
    ax.plot(progress, ratio, color="tab:blue", linewidth=1.5, label=f"soft {cost_name} / target")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("search progress")
    ax.set_ylabel(f"soft {cost_name} / target")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if temperature is not None and len(temperature):
        twin = ax.twinx()
        twin.plot(progress, temperature, color="tab:orange", linewidth=1, label="temperature")
        twin.set_yscale("log")
        twin.set_ylabel("temperature")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title or f"soft {cost_name} against the budget", fontsize=11)
    return fig
