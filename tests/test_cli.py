"""The command line: outputs, every user error (exit 2, before long work), and --help coverage."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import write_npz

from dais_search.checkpoint import load_checkpoint, save_checkpoint
from dais_search.cli import COMMANDS, main
from dais_search.models import create_model


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_flops_reference_numbers(capsys):
    status, out, _ = run(capsys, "flops", "--model", "resnet56")
    assert status == 0 and "250,971,392" in out and "853,018" in out
    status, out, _ = run(capsys, "flops", "--model", "resnet20", "--per-layer")
    assert status == 0 and "81,102,080" in out and "| layer3.2.conv2 " in out


def test_flops_of_a_checkpoint_and_other_inputs(capsys, tmp_path):
    save_checkpoint(tmp_path / "m.pt", create_model("resnet8", num_classes=100), "resnet8", 100)
    status, out, _ = run(capsys, "flops", "--checkpoint", str(tmp_path / "m.pt"))
    assert status == 0 and f"{24_478_976 + 2 * 64 * 90:,}" in out
    status, out, _ = run(capsys, "flops", "--model", "resnet8", "--input-size", "3x64x64", "--batch", "2")
    assert status == 0 and "input 2x3x64x64" in out and "| dense |" in out
    status, out, _ = run(capsys, "flops", "--list")
    assert status == 0 and "resnet56_b" in out and "tv:NAME" in out


def test_every_option_is_explained():
    for name, (make, _) in COMMANDS.items():
        for action in make()._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 10, f"{name} {action.option_strings} lacks help"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["flops", "--model", "resnet65"], "unknown model 'resnet65'"),
        (["flops"], "needs --model"),
        (["eval", "--checkpoint", "{tmp}/none.pt", "--model", "resnet8", "--data", "shapes"], "does not exist"),
        (["eval", "--checkpoint", "{tmp}/corrupt.pt", "--model", "resnet8", "--data", "shapes"], "truncated"),
        (
            ["eval", "--checkpoint", "{tmp}/r8.pt", "--model", "resnet20", "--data", "shapes"],
            "keys missing from the checkpoint, first: layer1.1.conv1.weight",
        ),
        (["eval", "--checkpoint", "{tmp}/r8.pt", "--model", "nonet", "--data", "shapes"], "unknown model"),
        (["eval", "--checkpoint", "{tmp}/r8.pt", "--data", "mnist"], "unknown data set 'mnist'"),
        (["eval", "--checkpoint", "{tmp}/r8.pt", "--data", "npz:{tmp}/missing.npz"], "does not exist"),
        (["eval", "--checkpoint", "{tmp}/r8.pt", "--data", "npz:{tmp}/bad.npz"], "lacks the arrays y_test"),
        (["eval", "--checkpoint", "{tmp}/r8.pt", "--data", "shapes", "--device", "cuda:7"], "cuda"),
        (["train", "--model", "resnet8", "--data", "shapes:50", "--out", "{tmp}"], "is a directory"),
        (["train", "--model", "resnet8", "--data", "shapes:50", "--out", "{tmp}/x.pt", "--resume"], "--resume"),
        (["train", "--model", "resnet8", "--data", "shapes:50", "--out", "{tmp}/x.pt", "--epochs", "0"], "--epochs"),
        (
            ["train", "--model", "resnet8", "--data", "shapes:50", "--out", "{tmp}/x.pt", "--init", "{tmp}/c100.pt"],
            "linear.weight",
        ),
        (["latency", "{tmp}"], "holds no model.pt"),
        (["latency", "{tmp}/none.pt"], "no such file"),
        (["latency", "resnet8", "--batch", "0"], "positive batch sizes"),
        (["latency", "{tmp}/r8.pt", "--plan", "{tmp}/p.json"], "--plan goes with a model name"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_user_errors(capsys, tmp_path, argv, needle):
    if torch.cuda.is_available() and "cuda:7" in argv:
        pytest.skip("a GPU is visible")
    save_checkpoint(tmp_path / "r8.pt", create_model("resnet8"), "resnet8", 10)
    save_checkpoint(tmp_path / "c100.pt", create_model("resnet8", num_classes=100), "resnet8", 100)
    (tmp_path / "corrupt.pt").write_bytes((tmp_path / "r8.pt").read_bytes()[:1000])
    write_npz(tmp_path / "bad.npz", y_test=None)
    status, out, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert status == 2
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err and out == ""


def test_train_eval_resume(capsys, tmp_path):
    ckpt = tmp_path / "run" / "m.pt"
    common = ["--model", "resnet8", "--data", "shapes:200", "--batch-size", "32", "--out", str(ckpt), "--no-progress"]
    status, out, _ = run(capsys, "train", *common, "--epochs", "2", "--max-steps", "2", "--held-out", "40")
    assert status == 0 and "epoch 1/2" in out and "held-out top-1" in out and "| resnet8 " in out
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 2 and saved["model"]["name"] == "resnet8" and len(saved["history"]) == 2
    status, out, _ = run(capsys, "train", *common, "--epochs", "3", "--max-steps", "2", "--held-out", "40", "--resume")
    assert status == 0 and "epoch 3/3" in out and "epoch 1/3" not in out
    assert load_checkpoint(ckpt)["epoch"] == 3
    status, out, _ = run(capsys, "eval", "--checkpoint", str(ckpt), "--data", "shapes:200", "--no-progress")
    assert status == 0 and "| resnet8 " in out and "|     40 |" in out


def test_eval_on_npz_with_limit(capsys, tmp_path):
    path = write_npz(tmp_path / "d.npz", n_test=30)
    save_checkpoint(tmp_path / "m.pt", create_model("resnet8"), "resnet8", 10)
    status, out, _ = run(
        capsys, "eval", "--checkpoint", str(tmp_path / "m.pt"), "--data", f"npz:{path}", "--limit", "7", "--no-progress"
    )
    assert status == 0 and "|      7 |" in out


def test_flops_of_a_plan(capsys, tmp_path):
    from dais_search.channels import random_plan

    plan = random_plan(create_model("resnet20"), (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet20", num_classes=10)
    plan.save(tmp_path / "plan.json")
    status, out, _ = run(capsys, "flops", "--plan", str(tmp_path / "plan.json"))
    assert status == 0 and f"| pruned | {plan.flops:,} " in out and "| dense  | 81,102,080 " in out
    assert f"{plan.flops / 81_102_080:.4f}" in out
    status, _, err = run(capsys, "flops", "--model", "resnet32", "--plan", str(tmp_path / "plan.json"))
    assert status == 2 and "another architecture" in err
    (tmp_path / "cut.json").write_text((tmp_path / "plan.json").read_text()[:50])
    status, _, err = run(capsys, "flops", "--plan", str(tmp_path / "cut.json"))
    assert status == 2 and "not valid JSON" in err


def test_latency_of_a_plan_and_of_a_pruned_checkpoint(capsys, tmp_path):
    from dais_search.channels import random_plan

    dense = create_model("resnet8")
    plan = random_plan(dense, (1, 3, 32, 32), keep=0.3, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    status, out, _ = run(capsys, "latency", "resnet8", "--plan", str(tmp_path / "plan.json"), "--batch", "1,4",
                         "--repeats", "3", "--warmup", "1", "--device", "cpu")  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| cpu")]
    assert status == 0 and [r.split("|")[2].strip() for r in rows] == ["1", "4"]
    assert all(0 < float(r.split("|")[5]) for r in rows)  # pruned / dense
    save_checkpoint(tmp_path / "pruned.pt", plan.apply(dense), "resnet8", 10, plan=plan.to_dict())
    status, out, _ = run(capsys, "latency", str(tmp_path), "--batch", "2", "--repeats", "2", "--device", "cpu")
    assert status == 0 and "pruned / dense" in out and "model: resnet8" in out
    status, out, _ = run(capsys, "latency", "resnet8", "--batch", "2", "--repeats", "2", "--device", "cpu")
    assert status == 0 and "pruned" not in out and "| cpu    |     2 |" in out


def test_latency_channels_last_times_that_format(capsys, tmp_path, monkeypatch):
    import dais_search.cost as cost

    seen = []
    real = cost.interleaved_latency

    def spy(models, x, repeats, warmup):
        weight = next(m for m in models["dense"].modules() if isinstance(m, torch.nn.Conv2d)).weight
        seen.append((x.is_contiguous(memory_format=torch.channels_last), weight.is_contiguous(
            memory_format=torch.channels_last)))  # fmt: skip
        return real(models, x, repeats, warmup)

    monkeypatch.setattr(cost, "interleaved_latency", spy)
    for flag, expected in (([], (False, False)), (["--channels-last"], (True, True))):
        status, out, _ = run(capsys, "latency", "resnet8", "--batch", "2", "--repeats", "1", "--warmup", "0",
                             "--device", "cpu", *flag)  # fmt: skip
        assert status == 0 and seen.pop() == expected and ("channels-last" in out) == bool(flag)
