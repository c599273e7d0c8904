"""Our own outputs are inputs: a pruned checkpoint (the search's pruned.pt, a bundle's model.pt)
carries its plan, so eval and flops rebuild it without --model; finetune says where it belongs."""

from __future__ import annotations

import warnings

import torch

from dais_search import create_model, save_checkpoint
from dais_search.channels import random_plan
from dais_search.checkpoint import load_checkpoint
from dais_search.cli import main
from dais_search.cost import count_flops
from dais_search.pipeline import model_of_checkpoint


def _pruned_checkpoint(tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    pruned = plan.apply(dense)
    save_checkpoint(tmp_path / "pruned.pt", pruned, "resnet8", 10, plan=plan.to_dict())
    return plan, pruned


def test_a_pruned_checkpoint_rebuilds_with_its_plan(tmp_path):
    plan, pruned = _pruned_checkpoint(tmp_path)
    model, name, carried = model_of_checkpoint(load_checkpoint(tmp_path / "pruned.pt"))
    assert name == "resnet8" and carried.kept == plan.kept and count_flops(model) == plan.flops
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), pruned.eval()(x))
    dense, _, none = model_of_checkpoint(load_checkpoint(tmp_path / "dense.pt"))  # control: a dense one stays dense
    assert none is None and count_flops(dense) > plan.flops


def test_eval_and_flops_take_a_pruned_checkpoint_finetune_points_to_student(tmp_path, capsys):
    plan, _ = _pruned_checkpoint(tmp_path)
    ckpt = str(tmp_path / "pruned.pt")
    assert main(["eval", "--checkpoint", ckpt, "--data", "shapes:64", "--no-progress"]) == 0
    assert f"| {plan.flops:,} |" in capsys.readouterr().out
    assert main(["flops", "--checkpoint", ckpt]) == 0
    out = capsys.readouterr().out
    assert f"{plan.flops:,}" in out and f"{plan.dense_flops:,}" in out and "| pruned |" in out
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", ckpt, "--data", "shapes:64",
            "--out", str(tmp_path / "ft"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a pruned model" in err and "--student" in err and not (tmp_path / "ft").exists()
