"""TensorBoard logging of a search, and the indicator heatmap image.

:class:`MetricWriter` wraps ``torch.utils.tensorboard.SummaryWriter``. :func:`indicator_heatmap`
renders the soft masks as an image (one band per group, channels sorted from most to least kept,
yellow = 1, dark blue = 0, grey = no channel), so that convergence to 0/1 shows at a glance:
early the bands are a smooth gradient, at the end each band is a yellow block then a blue one.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MetricWriter", "indicator_heatmap"]

# Three anchor colours of a viridis-like map (dark blue -> teal -> yellow), RGB.
_ANCHORS = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)


def _colour(values: np.ndarray) -> np.ndarray:
    v = np.clip(values, 0.0, 1.0) * 2
    lo = np.floor(v).clip(0, 1).astype(int)
    frac = (v - lo)[..., None]
    return _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac


def indicator_heatmap(masks: list[torch.Tensor], row_height: int = 10, max_width: int = 512) -> np.ndarray:
    """A (3, H, W) uint8 image of the masks: groups as bands, channels sorted (descending).

    Groups wider than ``max_width`` are resampled to it (sorted values keep their shape); narrow
    ones are stretched so that the image is about ``max_width`` pixels wide.
    """
    if not masks:
        return np.zeros((3, 1, 1), dtype=np.uint8)
    width = min(max(m.numel() for m in masks), max_width)
    rows = []
    for m in masks:
        values = np.sort(m.detach().float().cpu().numpy())[::-1]
        if len(values) > width:
            values = values[np.linspace(0, len(values) - 1, width).round().astype(int)]
        row = np.full((width, 3), 128.0)
        row[: len(values)] = _colour(values)
        rows.append(np.repeat(row[None], row_height, axis=0))
        rows.append(np.full((1, width, 3), 255.0))  # a white line between groups
    image = np.concatenate(rows, axis=0)
    image = np.repeat(image, max(1, max_width // width), axis=1)
    return image.round().astype(np.uint8).transpose(2, 0, 1)


class MetricWriter:
    """Scalars, histograms, images and text for TensorBoard, under ``logdir``."""

    def __init__(self, logdir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
