"""``dais-search plot RUN_DIR``: a finished (or running) search's figures as PNG files.

Reads the run's TensorBoard events (``RUN_DIR/tb``, or ``RUN_DIR`` itself) and its indicator
snapshots (``indicators.npz`` beside the events) and writes, into ``RUN_DIR/plots`` by default:

    indicators.png   the final indicator heatmap (one row per group, channels sorted)
    keep_ratios.png  every group's soft keep ratio against search progress, one panel per stage
    cost.png         soft FLOPs (or latency) over the target against progress, with the temperature
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write
from .figures import cost_figure, heatmap_figure, keep_ratio_figure
from .snapshots import FILENAME, IndicatorHistory

__all__ = ["event_dir", "plot_run", "read_scalars"]


def event_dir(run_dir: str | os.PathLike) -> Path:
    """The folder holding the run's event files: ``RUN_DIR/tb`` or ``RUN_DIR``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"plot: {run} is not a folder; pass the output folder of `dais-search search` or `run` "
                        "(the one holding tb/)")  # fmt: skip
    for candidate in (run / "tb", run):
        if any(candidate.glob("events.out.tfevents.*")):
            return candidate
    raise UserError(f"plot: no TensorBoard events in {run} or {run / 'tb'}; pass the output folder of "
                    "`dais-search search` or `run` (the one holding tb/)")  # fmt: skip


def read_scalars(logdir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the event files in ``logdir``: ``{tag: (steps, values)}``, all points kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 1, "images": 1, "tensors": 1})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def _progress_of(scalars, steps: np.ndarray) -> np.ndarray:
    """Search progress at these steps (interpolated from ``search/progress``; steps if absent)."""
    if "search/progress" not in scalars:
        return steps.astype(float)
    at, value = scalars["search/progress"]
    return np.interp(steps, at, value)


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Writes the run's PNG figures; returns their paths (the heatmap is left out, with a note on
    stderr, for runs made before snapshots were saved)."""
    logdir = event_dir(run_dir)
    scalars = read_scalars(logdir)
    cost_tag = next((t for t in ("search/flops_ratio", "search/latency_ratio") if t in scalars), None)
    if cost_tag is None:
        raise UserError(f"plot: the events in {logdir} have no search/flops_ratio; they are not a search's "
                        "(a fine-tune's or a baseline's run has no indicator curves)")  # fmt: skip
    out_dir = Path(out) if out is not None else Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    cost_name = cost_tag.split("/")[1].removesuffix("_ratio")
    written = []

    steps, ratio = scalars[cost_tag]
    temp = scalars.get("search/temperature")
    temperature = np.interp(steps, *temp) if temp is not None else None
    figure = cost_figure(_progress_of(scalars, steps), ratio, temperature, cost_name)
    written.append(_save(figure, out_dir / "cost.png"))

    keep_tags = [t for t in scalars if t.startswith("keep/")]
    history = IndicatorHistory.load(logdir / FILENAME) if (logdir / FILENAME).is_file() else None
    if history is not None:  # trace order, as the search names them
        order = {f"keep/{n}": i for i, n in enumerate(history.names)}
        keep_tags.sort(key=lambda t: order.get(t, len(order)))
    if keep_tags:
        progress = {t[5:]: _progress_of(scalars, scalars[t][0]) for t in keep_tags}
        keep = {t[5:]: scalars[t][1] for t in keep_tags}
        written.append(_save(keep_ratio_figure(progress, keep), out_dir / "keep_ratios.png"))

    if history is not None and history.rows:
        title = (f"channel indicators at the end of the search (step {history.steps[-1]}, progress "
                 f"{history.progress[-1]:.2f}, T = {history.temperature[-1]:.3g})")  # fmt: skip
        written.append(_save(heatmap_figure(history.names, history.masks(), title), out_dir / "indicators.png"))
    else:
        print(f"plot: no {FILENAME} in {logdir} (a run made by an older dais_search); no heatmap written",
              file=sys.stderr)  # fmt: skip
    return written
