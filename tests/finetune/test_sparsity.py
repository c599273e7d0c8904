"""Weight granularity: exact magnitude masks, zeros held through fine-tuning, honest reporting."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dais_search import count_flops, count_params, create_model, save_checkpoint
from dais_search.channels import random_plan
from dais_search.cli import main
from dais_search.finetune.sparsity import (
    apply_masks,
    magnitude_masks,
    sparse_finetune,
    sparse_weights,
    sparsity_report,
)
from dais_search.train import make_sgd, train_one_epoch


def _batches(n: int = 4):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(n)]


def test_global_masks_drop_exactly_the_smallest_weights():
    torch.manual_seed(0)
    model = create_model("resnet8")
    weights = sparse_weights(model)
    total = sum(w.numel() for w in weights.values())
    masks = magnitude_masks(model, 0.6)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(weights.values(), masks.values(), strict=True)])
    dropped = torch.cat([w.detach().abs()[~m] for w, m in zip(weights.values(), masks.values(), strict=True)])
    assert dropped.max() <= kept.min()  # one threshold over all layers
    # Layers differ in scale, so a global threshold prunes them unevenly; "layer" prunes each alike.
    per_layer = [float((~m).float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.1
    layer = magnitude_masks(model, 0.6, scope="layer")
    for name, m in layer.items():
        assert int((~m).sum()) == round(0.6 * m.numel()), name


def test_report_counts_nonzero_parameters_against_the_dense_model():
    torch.manual_seed(0)
    dense = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0).apply(dense)
    masks = magnitude_masks(pruned, 0.5)
    apply_masks(pruned, masks)
    report = sparsity_report(pruned, count_params(dense))
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert report["zero_weights"] == zeros and report["nonzero_params"] == count_params(pruned) - zeros
    assert report["compression_vs_dense"] == pytest.approx(count_params(dense) / (count_params(pruned) - zeros))
    assert report["weight_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert "none" in report["dense_speedup"]
    assert count_flops(pruned) == count_flops(random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0).apply(dense))


def test_sparse_finetune_holds_the_zeros_and_plain_training_would_revive_them():
    torch.manual_seed(0)
    model = create_model("resnet8")
    masks = magnitude_masks(model, 0.7)
    history = sparse_finetune(model, masks, _batches(), epochs=2, lr=0.05, progress=False)
    assert len(history) == 2
    for name, w in sparse_weights(model).items():
        assert bool((w[~masks[name]] == 0).all()), name
    assert sparsity_report(model, count_params(model))["weight_sparsity"] == pytest.approx(0.7, abs=1e-4)
    # Control: the same steps without re-applying the masks move the zeros (momentum, weight decay,
    # gradients), so the check above can fail.
    optimizer = make_sgd(model, 0.05)
    train_one_epoch(model, _batches(), optimizer, progress=False)
    assert sparsity_report(model, count_params(model))["weight_sparsity"] < 0.1


def test_bad_sparsity_is_refused():
    model = create_model("resnet8")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_masks(model, 1.0)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(model, 0.5, scope="channel")


def test_finetune_command_with_sparsity_exports_a_sparse_bundle(tmp_path, capsys):
    torch.manual_seed(0)
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "bundle"
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:120", "--batch-size", "16", "--epochs", "1", "--max-steps", "2", "--overparam", "2",
            "--sparsity", "0.5", "--sparse-epochs", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    assert "no dense speed-up" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    sp = metrics["sparsity"]
    assert sp["weight_sparsity"] == pytest.approx(0.5, abs=1e-4) and sp["epochs"] == 1
    assert metrics["test_top1"] == sp["test_top1"] and "test_top1_structured" in metrics
    assert metrics["flops"] == plan.flops  # FLOPs are the structured model's: zeros are not counted away
    bundle = torch.jit.load(str(out / "model.ts"))
    zero = sum(int((p == 0).sum()) for n, p in bundle.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert zero >= 0.5 * sp["weights"] - 1  # the exported weights carry the zeros

    assert main([*argv[:-3], "--sparsity", "1.5", "--out", str(tmp_path / "b2"), "--no-progress"]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err


def test_budget_file_sparsity_keys_are_checked():
    from dais_search.budget import parse_budget
    from dais_search.errors import UserError

    base = {"version": 1, "model": {"name": "resnet8"}}
    budget = parse_budget({**base, "finetune": {"sparsity": 0.8, "sparsity_scope": "layer", "sparse_epochs": 2}})
    ft = budget.finetune
    assert (ft.sparsity, ft.sparsity_scope, ft.sparse_epochs) == (0.8, "layer", 2)
    for bad in ({"sparsity": 1.0}, {"sparsity_scope": "channel"}, {"sparse_epochs": -1}):
        with pytest.raises(UserError, match="finetune.sparsity"):
            parse_budget({**base, "finetune": bad})
