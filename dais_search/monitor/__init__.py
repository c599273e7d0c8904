"""Watching a search: TensorBoard events, readable figures, and the ``plot`` command's PNGs.

- :class:`MetricWriter` writes the events (scalars, histograms, figures, a custom-scalars layout).
- :mod:`.figures` draws the indicator heatmap, the keep ratios and the soft cost over time.
- :class:`IndicatorHistory` keeps every channel's soft mask at the heatmap snapshots.
- :func:`plot_run` turns a run's events and snapshots into PNG files.
"""

from .figures import cost_figure, heatmap_figure, keep_ratio_figure
from .layout import custom_scalars_layout, stages
from .plot import event_dir, plot_run, read_scalars
from .snapshots import FILENAME as SNAPSHOTS_FILE
from .snapshots import IndicatorHistory
from .writer import MetricWriter

__all__ = [
    "SNAPSHOTS_FILE",
    "IndicatorHistory",
    "MetricWriter",
    "cost_figure",
    "custom_scalars_layout",
    "event_dir",
    "heatmap_figure",
    "keep_ratio_figure",
    "plot_run",
    "read_scalars",
    "stages",
]
