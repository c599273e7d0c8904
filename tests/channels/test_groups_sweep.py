"""Every torchvision classifier: groups found, a random 30% cut runs and equals the masked model.

Slow (about an hour on 2 CPU cores): run with ``pytest -m slow tests/channels/test_groups_sweep.py``. The
same sweep prints its table with ``python benchmarks/groups_sweep.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from groups_sweep import sweep_one  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_sweep(name):
    row = sweep_one(name)
    assert row["status"] in ("ok", "not-supported"), row.get("error") or row
    if row["status"] == "ok":
        assert row["max_rel_error"] <= 1e-4 and row["train_max_rel_error"] <= 1e-4 and row["prunable"] > 0
        assert "depth_max_rel_error" not in row or row["depth_max_rel_error"] <= 1e-4
    else:
        assert row["blocked_by"], "a model that cannot be pruned names what blocked it"


def test_the_sweep_also_removes_every_other_block_and_chain_layer():
    row = sweep_one("mobilenet_v2")  # 10 inverted residuals with an identity shortcut, no chain layer outside them
    assert row["status"] == "ok" and (row["blocks"], row["layers"]) == (10, 0)
    assert row["depth_max_rel_error"] <= 1e-5
