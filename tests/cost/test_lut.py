"""Latency lookup tables: grids, bilinear interpolation (values and gradients), the on-disk cache."""

from __future__ import annotations

import torch

from dais_search.cost import lut
from dais_search.cost.lut import LatencyCache, LayerSpec, LayerTable, grid, interpolate, measure_table


def test_grids_are_the_multiples_of_round_to_when_few_else_even_steps():
    assert grid(64, step=8) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    assert grid(20, step=8) == [1, 8, 16, 20]
    assert grid(16) == [1, 2, 4, 6, 8, 10, 12, 14, 16]
    assert grid(512, step=8, points=9) == [1, 64, 128, 192, 256, 320, 384, 448, 512]  # 63 multiples: too many
    assert grid(3) == [1, 2, 3]


def test_interpolation_is_exact_on_the_grid_and_bilinear_between():
    table = LayerTable([1, 3], [2, 4, 8], [[1.0, 2.0, 6.0], [3.0, 5.0, 7.0]])
    cin, cout = torch.tensor([1.0, 3.0, 3.0, 2.0, 2.0, 9.0]), torch.tensor([2.0, 4.0, 8.0, 3.0, 6.0, 0.0])
    got = interpolate(table, cin.double(), cout.double())
    # (2, 3): halfway in both: mean of 1, 2, 3, 5; (2, 6): mean of 2, 6, 5, 7; clamped (9, 0) -> (3, 2).
    assert torch.allclose(got, torch.tensor([1.0, 5.0, 7.0, 2.75, 5.0, 3.0], dtype=torch.float64))
    w = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    interpolate(table, w[0], w[1]).backward()
    # d/d cin at (2, 3) = (mean(3, 5) - mean(1, 2)) / 2; d/d cout = (mean(2, 5) - mean(1, 3)) / 2
    assert torch.allclose(w.grad, torch.tensor([(4.0 - 1.5) / 2, (3.5 - 2.0) / 2], dtype=torch.float64))
    # A depthwise table (NaN off the diagonal) follows its diagonal in the output width.
    dw = LayerTable([1, 4], [1, 4], [[1.0, float("nan")], [float("nan"), 4.0]])
    assert float(interpolate(dw, torch.tensor(2.5).double(), torch.tensor(2.5).double())) == 2.5


def test_a_table_measures_every_grid_point_and_the_cache_measures_each_layer_once(tmp_path, monkeypatch):
    calls = []

    def fake_time(module, x, repeats, warmup):
        conv = module[0]
        calls.append((conv.in_channels, conv.out_channels))
        return 1e-6 * conv.in_channels * conv.out_channels

    monkeypatch.setattr(lut, "_time", fake_time)
    spec = LayerSpec("conv", (2, 8, 6, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    table = measure_table(spec, [1, 8], [1, 2, 4])
    assert table.seconds == [[1e-6 * i * o for o in (1, 2, 4)] for i in (1, 8)]
    cache = LatencyCache(tmp_path, device="cpu")
    cache.get([spec, spec], [([1, 8], [1, 4]), ([1, 8], [1, 4])])
    assert cache.measured == 1 and len(calls) == 6 + 4
    again = LatencyCache(tmp_path, device="cpu")  # a new process on the same machine reads the file
    (read,) = again.get([spec], [([1, 8], [1, 4])])
    assert again.measured == 0 and read.seconds == [[1e-6, 4e-6], [8e-6, 32e-6]]
    depthwise = LayerSpec("conv", (2, 8, 6, 6), 8, (3, 3), (1, 1), (1, 1), (1, 1), 8)
    dw = measure_table(depthwise, [1, 8], [1, 4, 8])
    assert dw.in_grid == dw.out_grid == [1, 4, 8] and all(
        (v == v) == (i == j) for i, row in enumerate(dw.seconds) for j, v in enumerate(row)
    )  # only the diagonal is measured (NaN elsewhere)


def test_a_real_layer_takes_longer_at_full_width_than_at_one_channel():
    spec = LayerSpec("conv", (8, 64, 16, 16), 64, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    for _ in range(3):  # 1 channel vs 64 x 64: ~4000x the FLOPs; a shared CI machine may stall one timing
        table = measure_table(spec, [1, 64], [1, 64], repeats=5)
        if table.seconds[1][1] > table.seconds[0][0]:
            break
    assert table.seconds[1][1] > table.seconds[0][0]
