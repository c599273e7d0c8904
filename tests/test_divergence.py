"""A diverged run never ships: a NaN or infinite loss, gradient or weight stops it with an error
naming the stage and the step, the last good checkpoint stays as it was, and no bundle, checkpoint
or JSON is written from the broken state."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import dais_search as ds
from dais_search.channels import random_plan
from dais_search.cli import main
from dais_search.errors import DivergedError
from dais_search.files import write_json
from dais_search.train import cross_entropy, make_sgd, train_one_epoch


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))  # fmt: skip


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def test_a_nan_loss_stops_the_epoch_and_names_the_step():
    calls = []

    def poisoned(model, x, y):
        calls.append(1)
        out = cross_entropy(model, x, y)
        if len(calls) == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    model = _net()
    with pytest.raises(DivergedError, match=r"fine-tune 1/2: .* at step 3 of this pass"):
        train_one_epoch(model, _batches(), make_sgd(model, 0.1), loss_fn=poisoned, progress=False,
                        desc="fine-tune 1/2")  # fmt: skip
    # Control: the same loop without the poison runs through.
    model = _net()
    train_one_epoch(model, _batches(), make_sgd(model, 0.1), progress=False)


def test_a_nan_gradient_under_a_finite_loss_is_caught_too():
    def sqrt_at_zero(model, x, y):  # d sqrt(u)/du at u = 0 is infinite: the loss is finite, its gradient not
        out = cross_entropy(model, x, y)
        out["loss"] = out["loss"] + torch.sqrt(model[0].weight.abs().sum() * 0)
        return out

    model = _net()
    assert torch.isfinite(sqrt_at_zero(model, *_batches(1)[0])["loss"])
    with pytest.raises(DivergedError, match="at step 1 of this pass"):
        train_one_epoch(model, _batches(), make_sgd(model, 0.1), loss_fn=sqrt_at_zero, progress=False)


class Poisoned(nn.Module):
    """resnet8 whose training forward turns NaN from the ``after``-th call on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.net, self.after, self.calls = ds.create_model("resnet8"), after, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                out = out * float("nan")
        return out


def test_a_diverging_search_stops_and_keeps_the_last_good_state(tmp_path):
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(4)]
    budget = ds.Budget(budget=ds.BudgetSpec(flops="50%"),
                       search=ds.SearchSpec(epochs=2, gate_every=2, recalibrate_batches=1))  # fmt: skip
    state = tmp_path / "state.pt"
    model = Poisoned(after=8)  # epoch 1: 4 weight + 2 gate forwards; epoch 2 diverges
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DivergedError) as caught:
            ds.search(model, budget, batches, batches[:2], torch.zeros(1, 3, 16, 16), state_path=state,
                      progress=False)  # fmt: skip
    text = str(caught.value)
    assert "search:" in text and "(epoch 2/2)" in text and f"the last good state is {state} (after epoch 1)" in text
    saved = torch.load(state, weights_only=False)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def _dense_and_plan(tmp_path):
    torch.manual_seed(0)
    dense = ds.create_model("resnet8")
    ds.save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")


def test_a_diverging_fine_tune_exits_non_zero_and_exports_nothing(tmp_path, capsys):
    _dense_and_plan(tmp_path)
    out = tmp_path / "bundle"
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:64", "--batch-size", "16", "--epochs", "1", "--max-steps", "4", "--overparam", "0",
            "--kd", "none", "--lr", "1e30", "--out", str(out), "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fine-tune 1/1:" in err and "NaN or infinite" in err and "no bundle was exported" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_diverging_training_run_writes_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.pt"
    argv = ["train", "--model", "resnet8", "--data", "shapes:64", "--batch-size", "16", "--epochs", "1",
            "--lr", "1e30", "--out", str(out), "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train epoch 1/1:" in err and "no checkpoint was written" in err and not out.exists()


def test_export_refuses_a_nan_model(tmp_path):
    from dais_search.finetune import export

    _dense_and_plan(tmp_path)
    plan = ds.ChannelPlan.load(tmp_path / "plan.json")
    model = plan.apply(ds.create_model("resnet8"))
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(DivergedError, match=r"export: layer1.0.conv1.weight holds NaN"):
        export(model, plan, {}, tmp_path / "bundle", "resnet8", 10, "imagenet")
    assert not (tmp_path / "bundle").exists()


def test_json_is_strict_and_a_nan_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"top1": 91.5})
    with pytest.raises(ValueError, match="NaN or an infinity"):
        write_json(path, {"top1": float("nan")})
    with pytest.raises(ValueError, match="NaN or an infinity"):
        write_json(path, {"ratio": float("inf")})
    assert json.loads(path.read_text()) == {"top1": 91.5}
