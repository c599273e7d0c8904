"""benchmarks/conv_width_steps.py at a toy size: every stage's widths, FLOPs ratios in closed form,
the full width at ratio 1, and its refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import conv_width_steps  # noqa: E402


def test_rows(tmp_path):
    result = conv_width_steps.main(
        ["--batch", "2", "--step", "8", "--repeats", "2", "--json", str(tmp_path / "s.json")]
    )
    widths = {(r["spatial"], r["width"]) for r in result["rows"]}
    assert widths == {(32, 8), (32, 16), (16, 8), (16, 16), (16, 24), (16, 32), *((8, w) for w in range(8, 65, 8))}
    for r in result["rows"]:
        assert r["flops_ratio"] == pytest.approx((r["width"] / r["full_width"]) ** 2)
        assert r["ms"] > 0 and r["time_per_flop_vs_full"] == pytest.approx(r["time_ratio"] / r["flops_ratio"])
        if r["width"] == r["full_width"]:
            assert r["time_ratio"] == 1.0
    assert (tmp_path / "s.json").is_file()


def test_step_not_dividing_the_width_keeps_the_full_width():
    rows = conv_width_steps.main(["--batch", "1", "--step", "24", "--repeats", "1"])["rows"]
    assert [r["width"] for r in rows if r["spatial"] == 32] == [16]  # 24 > 16: only the full width
    assert [r["width"] for r in rows if r["spatial"] == 8] == [24, 48, 64]


def test_refuses_nonpositive(capsys):
    with pytest.raises(SystemExit):
        conv_width_steps.main(["--step", "0"])
    assert "positive" in capsys.readouterr().err
