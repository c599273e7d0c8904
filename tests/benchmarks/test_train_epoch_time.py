"""The epoch-time benchmark: an epoch is the median timed step times the steps of one epoch, and a
bad data spec fails before anything is timed."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_epoch_time  # noqa: E402


def test_epoch_time_is_the_median_step_times_the_steps_of_an_epoch(tmp_path):
    out = tmp_path / "t.json"
    argv = ["--models", "resnet8,vgg11", "--data", "shapes:64", "--batch-size", "16", "--images", "1000",
            "--steps", "2", "--repeats", "3", "--json", str(out)]  # fmt: skip
    result = train_epoch_time.main(argv)
    assert out.is_file() and set(result["models"]) == {"resnet8", "vgg11"}
    for m in result["models"].values():
        assert len(m["seconds_per_step"]) == 3 and min(m["seconds_per_step"]) > 0
        assert m["epoch_seconds"] == pytest.approx(statistics.median(m["seconds_per_step"]) * math.ceil(1000 / 16))
    assert result["models"]["vgg11"]["flops"] > 10 * result["models"]["resnet8"]["flops"]  # counted per model


def test_a_wrong_data_spec_fails_before_timing(tmp_path, capsys):
    with pytest.raises(SystemExit, match="error: data file .*nowhere.npz' does not exist"):
        train_epoch_time.main(["--models", "resnet8", "--data", f"npz:{tmp_path}/nowhere.npz", "--steps", "1"])
    with pytest.raises(SystemExit, match="error: unknown model 'vgg99'"):
        train_epoch_time.main(["--models", "resnet8,vgg99", "--data", "shapes:64", "--steps", "1"])
    assert "s / step" not in capsys.readouterr().out
