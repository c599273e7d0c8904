"""benchmarks/sparsity_curve.py on a toy pruned checkpoint: the zeros land at the asked fraction, are
held through the fine-tune, and the compression is the closed form over the dense model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sparsity_curve  # noqa: E402

from dais_search import create_model, save_checkpoint  # noqa: E402
from dais_search.cost import count_flops, count_params  # noqa: E402
from dais_search.finetune.sparsity import sparse_weights  # noqa: E402
from dais_search.search.baselines import uniform_plan  # noqa: E402


@pytest.fixture
def pruned_ckpt(tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet8").eval()
    plan = uniform_plan(dense, (1, 3, 32, 32), 0.5 * count_flops(dense, (1, 3, 32, 32)))
    pruned = plan.apply(dense)
    path = tmp_path / "bundle" / "model.pt"
    save_checkpoint(path, pruned, "resnet8", 10, normalize="imagenet", plan=plan.to_dict())
    return path.parent, pruned, count_params(dense)


def test_levels_compression_and_held_zeros(pruned_ckpt, tmp_path):
    bundle, pruned, dense_params = pruned_ckpt
    out = tmp_path / "curve.json"
    result = sparsity_curve.main([str(bundle), "--data", "shapes:64", "--sparsity", "0.5", "0.9", "--epochs", "1",
                                  "--max-steps", "2", "--batch-size", "16", "--json", str(out)])  # fmt: skip
    weights = sum(w.numel() for w in sparse_weights(pruned).values())
    params = count_params(pruned)
    assert result["dense_params"] == dense_params
    base, *levels = result["rows"]
    assert base["sparsity"] == 0 and base["zero_weights"] == 0  # random init: no exact zeros
    assert base["compression_vs_dense"] == pytest.approx(dense_params / params)  # the structured grain alone
    for row, level in zip(levels, (0.5, 0.9), strict=True):
        zeros = round(level * weights)
        # the fine-tune moved the other weights but kept the masked ones at zero (none of the others hit 0)
        assert row["zero_weights"] == zeros
        assert row["compression_vs_dense"] == pytest.approx(dense_params / (params - zeros))
        assert 0 <= row["test_top1"] <= 100 and 0 <= row["test_top1_masked"] <= 100
    assert levels[1]["compression_vs_dense"] > levels[0]["compression_vs_dense"] > base["compression_vs_dense"]
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))


def test_bad_level_is_refused_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sparsity_curve.main([str(tmp_path / "missing"), "--data", "shapes:64", "--sparsity", "1.0"])
    assert "--sparsity 1.0" in capsys.readouterr().err
