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
    else:
        assert row["blocked_by"], "a model that cannot be pruned names what blocked it"
