"""Watching a search: points per curve, snapshots, the custom-scalars layout, figures, ``plot``."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dais_search as ds
from dais_search.cli import main
from dais_search.errors import UserError
from dais_search.monitor import (
    SNAPSHOTS_FILE,
    IndicatorHistory,
    custom_scalars_layout,
    heatmap_figure,
    read_scalars,
    stages,
)


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    return EventAccumulator(str(logdir), size_guidance=guidance).Reload()


def _search(tmp_path, steps: int, epochs: int = 1, monitor: ds.MonitorSpec | None = None, **kw):
    gen = torch.Generator().manual_seed(0)
    train = [(torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 10, (2,), generator=gen))
             for _ in range(steps)]  # fmt: skip
    held = train[:4]
    budget = ds.Budget(search=ds.SearchSpec(epochs=epochs, gate_every=2, recalibrate_batches=1),
                       monitor=monitor or ds.MonitorSpec())  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.search(ds.create_model("resnet8"), budget, train, held, torch.zeros(1, 3, 32, 32), progress=False,
                         log_dir=tmp_path / "tb", **kw)  # fmt: skip


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 16-step, 1-epoch search: every step a point (16 // 200 < 1), a snapshot every 16 // 10 = 1."""
    tmp = tmp_path_factory.mktemp("monitor")
    result = _search(tmp, steps=16)
    return tmp, result


def test_every_curve_has_a_point_per_step_and_snapshots_the_masks(searched):
    tmp, result = searched
    events = _events(tmp / "tb")
    keep_tags = [t for t in events.Tags()["scalars"] if t.startswith("keep/")]
    assert len(keep_tags) == len(result.plan.kept) > 3
    for tag in ["search/temperature", "search/progress", "search/flops_ratio", "search/lambda",
                "search/binarization_gap", "search/task_loss", *keep_tags]:  # fmt: skip
        assert [e.step for e in events.Scalars(tag)] == list(range(1, 17)), tag
    # The held-out loss: a point where a gate step happened since the last one (every 2nd step).
    assert [e.step for e in events.Scalars("search/val_loss")] == list(range(2, 17, 2))
    # The temperature anneals from start to end: the first and last points are the schedule's ends.
    temps = [e.value for e in events.Scalars("search/temperature")]
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.02) and temps == sorted(temps)[::-1]
    # Snapshots: 16 // 10 = 1 step apart, so one per step, each a histogram per group and a heatmap.
    hist_tag = "mask/" + keep_tags[0][5:]
    assert [e.step for e in events.Histograms(hist_tag)] == list(range(1, 17))
    assert [e.step for e in events.Images("search/indicators")] == list(range(1, 17))
    history = IndicatorHistory.load(tmp / "tb" / SNAPSHOTS_FILE)
    assert history.steps == list(range(1, 17)) and history.names == [t[5:] for t in keep_tags]
    # The last snapshot's masks are the keep ratios of the last point.
    last_keep = {t[5:]: events.Scalars(t)[-1].value for t in keep_tags}
    for name, mask in zip(history.names, history.masks(), strict=True):
        assert float(mask.sum()) / len(mask) == pytest.approx(last_keep[name], abs=1e-5)
    # Epoch means, once per epoch, at the epoch's last step.
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [16]


@pytest.mark.parametrize("total", [1, 99, 100, 199, 200, 401, 1000, 78_200, 2_000_003])
def test_default_every_gives_at_least_100_points_per_curve(total):
    from dais_search.search.monitoring import POINTS, default_every

    every = default_every(total)
    points = len(range(every, total + 1, every)) + (total % every != 0)  # the last step is written at the end
    assert points >= min(100, total) and points <= max(2 * POINTS, total)


def test_default_every_and_snapshots_on_a_search(tmp_path, monkeypatch):
    """every = 0 with POINTS = 20 on a 2 x 30-step search: a point every 60 // 20 = 3 steps, a
    snapshot every 60 // 10 = 6 (10 of them, the last at the final step)."""
    import importlib

    monkeypatch.setattr(importlib.import_module("dais_search.search.monitoring"), "POINTS", 20)
    result = _search(tmp_path, steps=30, epochs=2, monitor=ds.MonitorSpec())
    steps, _ = read_scalars(tmp_path / "tb")["search/flops_ratio"]
    assert list(steps) == list(range(3, 61, 3))
    assert result.metrics["history"][-1]["epoch"] == 2
    history = IndicatorHistory.load(tmp_path / "tb" / SNAPSHOTS_FILE)
    assert history.steps == list(range(6, 61, 6))


def test_monitor_every_and_snapshots_are_honoured(tmp_path):
    _search(tmp_path, steps=16, monitor=ds.MonitorSpec(every=5, snapshots=2))
    steps, _ = read_scalars(tmp_path / "tb")["search/temperature"]
    assert list(steps) == [5, 10, 15, 16]  # and the last step, written at the end
    assert IndicatorHistory.load(tmp_path / "tb" / SNAPSHOTS_FILE).steps == [8, 16]


def test_a_resumed_search_has_one_point_per_step(tmp_path):
    """Interrupted after epoch 1 (its state saved), then resumed: events the dead run wrote after its
    saved state are purged, and the curves have each step once."""
    state = tmp_path / "state.pt"
    first = _search(tmp_path, steps=6, epochs=1, state_path=state)
    assert first.metrics["history"][-1]["epoch"] == 1
    _search(tmp_path, steps=6, epochs=2, state_path=state, resume=True)
    steps, _ = read_scalars(tmp_path / "tb")["search/temperature"]
    assert sorted(steps) == list(range(1, 13)) and len(set(steps)) == len(steps)
    assert IndicatorHistory.load(tmp_path / "tb" / SNAPSHOTS_FILE).steps == list(range(1, 13))


def test_custom_scalars_layout_puts_every_group_in_one_chart_per_stage():
    names = ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.conv2"]
    layout = custom_scalars_layout(names)
    keep = layout["keep ratio per stage"]
    assert list(keep) == ["stem", "layer1", "layer2"]
    tags = [f"keep/{n}" for n in names] + ["keep/layer1.0.conv10", "keep/layer1x0.conv1"]
    matched = {stage: [t for t in tags if any(re.search(r, t) for r in chart[1])] for stage, chart in keep.items()}
    assert matched == {"stem": ["keep/conv1"], "layer1": ["keep/layer1.0.conv1", "keep/layer1.1.conv1"],
                       "layer2": ["keep/layer2.0.conv1", "keep/layer2.0.conv2"]}  # fmt: skip
    assert "soft FLOPs / target" in layout["search"]


def test_a_crowded_stage_is_cut_into_charts_of_at_most_16():
    names = [f"features.{i}.conv" for i in range(40)]
    charts = stages(names)
    assert list(charts) == ["features (1/3)", "features (2/3)", "features (3/3)"]
    assert [len(v) for v in charts.values()] == [14, 14, 12]
    assert sum(charts.values(), []) == names


def test_heatmap_is_wide_labelled_and_sorted(tmp_path):
    masks = [np.array([0.0, 1.0, 0.2, 1.0]), np.array([1.0, 0.0])]
    fig = heatmap_figure(["layer1.conv", "layer2.conv"], masks, "T = 0.5")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["layer1.conv  2/4", "layer2.conv  1/2"]
    grid = ax.images[0].get_array()
    assert np.allclose(grid[0], [1.0, 1.0, 0.2, 0.0])  # sorted, most kept first
    assert np.allclose(grid[1, :2], [1.0, 0.0]) and grid.mask[1, 2:].all()  # narrower group: blank (grey)
    assert ax.get_title() == "T = 0.5" and len(fig.axes) == 2  # the image and its colour bar
    fig.savefig(tmp_path / "h.png")
    assert Image.open(tmp_path / "h.png").size[0] >= 800


def test_plot_command_writes_the_three_figures(searched, tmp_path, capsys):
    run, _ = searched
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in printed) == ["cost.png", "indicators.png", "keep_ratios.png"]
    for name in ("cost.png", "indicators.png", "keep_ratios.png"):
        image = Image.open(tmp_path / "png" / name)
        assert image.size[0] >= 800 and image.size[1] >= 300, name


def test_plot_refuses_a_folder_without_a_search(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "no TensorBoard events" in capsys.readouterr().err
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "tb") as w:  # a fine-tune's events: no search curves
        w.add_scalar("finetune/loss", 1.0, 1)
    with pytest.raises(UserError, match="not a search's"):
        from dais_search.monitor import plot_run

        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()  # nothing written before the check
