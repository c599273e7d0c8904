"""TensorBoard events: a thin wrapper of ``torch.utils.tensorboard.SummaryWriter``."""

from __future__ import annotations

import torch

__all__ = ["MetricWriter"]


class MetricWriter:
    """Scalars, histograms, figures, a custom-scalars layout and text for TensorBoard, under ``logdir``.

    ``purge_step``: when a run resumes at step N, the events it had written at steps >= N (after
    its last saved state) are dropped, so that every curve has one point per step.
    """

    def __init__(self, logdir: str, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir, purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure as an image (the figure is closed)."""
        self.writer.add_figure(tag, figure, step, close=True)

    def layout(self, layout: dict[str, dict[str, list]]) -> None:
        """The custom-scalars dashboard: ``{category: {chart: ["Multiline", [tag regexes]]}}``."""
        self.writer.add_custom_scalars(layout)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
