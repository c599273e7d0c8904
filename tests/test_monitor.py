"""Monitoring images: the indicator heatmap."""

from __future__ import annotations

import torch


def test_indicator_heatmap_shows_masks_sorted_per_group():
    from dais_search.monitor import indicator_heatmap

    image = indicator_heatmap([torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0])], row_height=2, max_width=8)
    assert image.shape == (3, 6, 8) and image.dtype.name == "uint8"  # 2 bands of 2 rows + 2 separator rows
    yellow, blue, grey = [253, 231, 37], [68, 1, 84], [128, 128, 128]
    band1, band2 = image[:, 0].T.tolist(), image[:, 3].T.tolist()
    assert band1 == [yellow] * 4 + [blue] * 4  # sorted: kept channels first, each stretched 2x
    assert band2 == [yellow] * 2 + [blue] * 2 + [grey] * 4  # a narrower group is padded grey
