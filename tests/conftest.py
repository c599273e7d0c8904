"""Shared fixtures: the ../shared folder (skipped cleanly when absent), seeds, tiny data files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DAIS_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """A deterministic stand-in for timing, for latency budgets: layer tables from FLOPs; whole
    networks from FLOPs x 1.3 + a fixed 2 ms (what tables miss)."""
    from dais_search.channels import latency_model as lm_module
    from dais_search.cost import count_flops, lut

    monkeypatch.setenv("DAIS_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut, "_time", lambda module, x, repeats, warmup: 1e-11 * count_flops(module, x))

    def network(models, x, repeats=20, warmup=5):
        return {k: [1.3e-11 * count_flops(m, x) + 2e-3] * repeats for k, m in models.items()}

    monkeypatch.setattr(lm_module, "interleaved_latency", network)
    return network


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder beside the checkout; tests that need it skip without it."""
    if not (SHARED / "data" / "cifar10.npz").is_file() or not (SHARED / "pretrained").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set DAIS_SHARED to its path)")
    return SHARED


def write_npz(path: Path, n_train: int = 40, n_test: int = 20, size: int = 32, classes: int = 10, **overrides):
    """A small array file in the cifar10.npz format; ``overrides`` replace or (value None) drop arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return write_npz(tmp_path / "tiny.npz")
