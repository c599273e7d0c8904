"""Checkpoints: round trip, atomic writes, and the error for every way a checkpoint can be wrong."""

from __future__ import annotations

import os

import pytest
import torch

from dais_search.checkpoint import load_checkpoint, load_state_dict_strict, model_from_checkpoint, save_checkpoint
from dais_search.errors import UserError
from dais_search.models import create_model


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model = create_model("resnet8_b", num_classes=4).eval()
    _randomise_bn(model)
    save_checkpoint(tmp_path / "m.pt", model, "resnet8_b", 4, normalize="cifar10", epoch=3)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["epoch"] == 3 and ckpt["normalize"] == "cifar10"
    rebuilt, name = model_from_checkpoint(ckpt)
    assert name == "resnet8_b"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)


def test_foreign_checkpoints_with_prefix(tmp_path):
    model = create_model("resnet8")
    state = {f"module.{k}": v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"best_prec1": 90.0, "state_dict": state}, tmp_path / "foreign.th")
    rebuilt, _ = model_from_checkpoint(load_checkpoint(tmp_path / "foreign.th"), "resnet8")
    assert torch.equal(rebuilt.linear.weight, model.linear.weight)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state dict
    with pytest.raises(UserError, match="pass --model"):
        model_from_checkpoint(load_checkpoint(tmp_path / "bare.pt"))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    model = create_model("resnet8")
    save_checkpoint(path, model, "resnet8", 10, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, "resnet8", 10, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint(tmp_path, damage):
    path = tmp_path / "m.pt"
    save_checkpoint(path, create_model("resnet8"), "resnet8", 10)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(2000), "empty": b""}[damage])
    with pytest.raises(UserError, match="truncated or is not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_checkpoint_without_weights(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "m.pt")
    with pytest.raises(UserError, match="no state dict"):
        load_checkpoint(tmp_path / "m.pt")


def test_mismatch_names_keys_and_shapes(tmp_path):
    save_checkpoint(tmp_path / "r20.pt", create_model("resnet20"), "resnet20", 10)
    ckpt = load_checkpoint(tmp_path / "r20.pt")
    with pytest.raises(UserError, match=r"keys missing from the checkpoint, first: layer1\.3\.conv1\.weight"):
        model_from_checkpoint(ckpt, "resnet32")
    with pytest.raises(UserError, match=r"unexpected keys in the checkpoint, first: layer1\.1\.conv1\.weight"):
        model_from_checkpoint(ckpt, "resnet8")
    with pytest.raises(UserError, match=r"linear\.weight: checkpoint \(10, 64\) vs model \(100, 64\)"):
        model_from_checkpoint(ckpt, "resnet20", num_classes=100)
    with pytest.raises(UserError, match=r"missing from the checkpoint, first: layer2\.0\.shortcut\.0\.weight"):
        load_state_dict_strict(create_model("resnet20_b"), ckpt["state_dict"])
