"""Fine-tune: LOP + distillation end to end on tiny data, folding checked, TorchScript loads without dais_search."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from dais_search import count_flops, create_model, load_checkpoint, save_checkpoint
from dais_search.channels import ChannelPlan, random_plan
from dais_search.cli import main


@pytest.mark.parametrize("overparam,kd", [(2, "sp+logit"), (0, "none")])
def test_finetune_command_exports_a_folded_bundle(tmp_path, capsys, overparam, kd):
    torch.manual_seed(0)
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10, target_flops=plan.flops)  # exactly on budget: accepted
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "bundle"
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:120", "--batch-size", "16", "--epochs", "2", "--max-steps", "3",
            "--overparam", str(overparam), "--kd", kd, "--out", str(out), "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "test top-1 % (folded)" in text and "fold error" in text
    for name in ("model.ts", "model.pt", "plan.json", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flops"] == plan.flops and metrics["fold_max_rel_error"] <= 1e-4
    assert len(metrics["history"]) == 2 and (metrics["history"][0]["kd_loss"] > 0) == (kd != "none")

    # The state dict rebuilds through the plan; TorchScript gives the same outputs in a process
    # that never imports dais_search.
    ckpt = load_checkpoint(out / "model.pt")
    rebuilt = ChannelPlan.from_dict(ckpt["plan"]).apply(create_model("resnet8"))
    rebuilt.load_state_dict(ckpt["state_dict"])
    rebuilt.eval()
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = rebuilt(x)
    assert count_flops(rebuilt) == plan.flops
    script = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(out / 'model.ts')!r}); x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        "assert not any(k.startswith('dais_search') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-5)


def test_finetune_refuses_a_plan_for_another_model(tmp_path, capsys):
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", create_model("resnet20"), "resnet20", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:120", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 2
    assert "does not fit" in capsys.readouterr().err


def test_finetune_refuses_a_plan_over_its_own_budget(tmp_path, capsys):
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:120", "--out", str(tmp_path / "b")]  # fmt: skip
    plan.meta.update(model="resnet8", num_classes=10, target_flops=plan.flops - 1)
    plan.save(tmp_path / "plan.json")
    assert main(argv) == 2
    assert "over its own budget" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # A distillation layer the model lacks is named before any data is read.
    plan.meta.update(target_flops=plan.flops)
    plan.save(tmp_path / "plan.json")
    assert main([*argv, "--kd-layers", "layer1,layer9"]) == 2
    assert "kd_layers: layer9 not in" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_run_command_chains_the_stages_and_resumes(tmp_path, capsys):
    budget = tmp_path / "b.toml"
    budget.write_text(
        'version = 1\n[model]\nname = "resnet8"\n[data]\ndataset = "shapes:200"\nheld_out = 40\nbatch_size = 16\n'
        '[budget]\nflops = "50%"\n[search]\nepochs = 1\nmax_steps = 4\ngate_every = 2\nrecalibrate_batches = 2\n'
        '[finetune]\nepochs = 1\nmax_steps = 3\noverparam = 2\nkd = "sp+logit"\n'
    )
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(budget), "--out", str(out), "--no-progress", "--random-teacher"]) == 0
    text = capsys.readouterr().out
    assert "pruned (fine-tuned, folded)" in text and "CPU ms (batch 1)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruned"]["flops"] <= 0.5 * summary["dense"]["flops"]
    assert (out / "bundle" / "model.ts").is_file() and (out / "bundle" / "budget.toml").is_file()
    stamp = (out / "bundle" / "model.pt").stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(budget), "--out", str(out), "--resume", "--no-progress", "--random-teacher"]) == 0
    assert (out / "bundle" / "model.pt").stat().st_mtime_ns == stamp  # finished stages are not redone
    assert main(["run", str(budget), "--out", str(out), "--no-progress", "--random-teacher"]) == 2
    assert "not empty" in capsys.readouterr().err
    # Without a teacher checkpoint the pipeline would distil from noise: refused unless asked for.
    assert main(["run", str(budget), "--out", str(tmp_path / "noise"), "--no-progress"]) == 2
    assert "--random-teacher" in capsys.readouterr().err and not (tmp_path / "noise").exists()
    # A [finetune] mistake is reported before the search starts, not after it.
    fresh = tmp_path / "fresh"
    assert main(["run", str(budget), "--out", str(fresh), "--set", "finetune.kd_layers=layer9", "--no-progress",
                 "--random-teacher"]) == 2
    assert "[finetune] kd_layers: layer9 not in" in capsys.readouterr().err and not fresh.exists()


def test_a_plan_with_removed_layers_is_fine_tuned_folded_and_exported(tmp_path, capsys):
    torch.manual_seed(0)
    dense = create_model("vgg11")
    save_checkpoint(tmp_path / "dense.pt", dense, "vgg11", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        channels = random_plan(dense.eval(), (1, 3, 32, 32), keep=0.25, seed=0)
        plan = ChannelPlan.create(dense, channels.kept, (1, 3, 32, 32), removed_blocks=["features.11", "features.22"],
                                  meta={"model": "vgg11", "num_classes": 10})  # fmt: skip
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "bundle"
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:64", "--batch-size", "16", "--epochs", "1", "--max-steps", "2",
            "--overparam", "2", "--kd", "sp+logit", "--out", str(out), "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flops"] == plan.flops and metrics["fold_max_rel_error"] <= 1e-4
    ckpt = load_checkpoint(out / "model.pt")
    rebuilt = ChannelPlan.from_dict(ckpt["plan"]).apply(create_model("vgg11"))
    rebuilt.load_state_dict(ckpt["state_dict"])
    assert sum(isinstance(m, torch.nn.Conv2d) for m in rebuilt.modules()) == 8 - 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(out / "model.ts")(x), rebuilt.eval()(x), rtol=1e-4, atol=1e-5)
