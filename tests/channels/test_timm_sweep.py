"""timm models through the groups sweep: groups found, a random 30% cut runs and equals the masked model.

The fast tests take three small timm models (skipped when timm is not installed: ``pip install
'dais-search[timm]'``). The slow one is the whole default list, ``TIMM_MODELS`` (hours on 2 CPU cores):
``pytest -m slow tests/channels/test_timm_sweep.py``; the same sweep prints its table with
``python benchmarks/groups_sweep.py --source timm``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from groups_sweep import TIMM_MODELS, summary, sweep_one  # noqa: E402


def _check(row: dict) -> None:
    assert row["status"] in ("ok", "not-supported"), row.get("error") or row
    if row["status"] == "ok":
        assert row["max_rel_error"] <= 1e-4 and row["train_max_rel_error"] <= 1e-4 and row["prunable"] > 0
    else:
        assert row["blocked_by"], "a model that cannot be pruned names what blocked it"


@pytest.mark.parametrize(
    "name,size,prunable_flops",
    [
        ("resnet10t", 64, 0.99),  # a ResNet: 64x64 works
        ("mobilenetv3_small_050", 64, 0.9),  # BatchNormAct2d (F.batch_norm in its own forward), SE, hard-swish
        ("test_vit3", 160, 0.4),  # timm's own tiny ViT: positional embeddings fix its input at 160
    ],
)
def test_timm_models_prune_correctly(name, size, prunable_flops, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    row = sweep_one(name, "timm")
    assert row["status"] == "ok", row.get("error") or row
    assert row["size"] == size and row["prunable_flops"] >= prunable_flops
    _check(row)


def test_summary_states_the_torch_dag_anchor():
    rows = [{"model": "a", "status": "ok", "prunable": 3, "prunable_flops": 0.9},
            {"model": "b", "status": "not-supported", "prunable": 0, "prunable_flops": 0.0},
            {"model": "c", "status": "ok", "prunable": 1, "prunable_flops": 0.5}]  # fmt: skip
    assert summary(rows, "timm") == (
        "models: 3 ok: 2 not-supported: 1 wrong: 0 exceptions: 0 with prunable groups: 2/3 = 66.7% "
        "(torch-dag: 585/945 = 61.9%) median prunable FLOPs: 50.0%"
    )
    assert summary(rows) == "models: 3 ok: 2 not-supported: 1 wrong: 0 exceptions: 0"


def test_default_list_spans_the_timm_families():
    import timm

    assert len(TIMM_MODELS) >= 100 and len(set(TIMM_MODELS)) == len(TIMM_MODELS)
    families = {m for m in timm.list_modules() for name in timm.list_models(module=m) if name in TIMM_MODELS}
    assert len(families) >= 90


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_sweep(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _check(sweep_one(name, "timm"))
