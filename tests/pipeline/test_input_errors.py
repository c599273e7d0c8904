"""Data that does not fit the model is named, with the fix, before any work: grayscale images for
an RGB model, labels beyond the model's outputs, an empty split."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dais_search import create_model, save_checkpoint
from dais_search.channels import random_plan
from dais_search.cli import main


def _npz(path, channels=3, classes=10, n_test=8):
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 255, (n, 32, 32, channels), dtype=np.uint8)  # noqa: E731
    np.savez(path, x_train=images(40), y_train=np.r_[np.arange(39) % classes, classes - 1], x_test=images(n_test),
             y_test=np.arange(n_test) % classes)  # fmt: skip
    return f"npz:{path}"


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    (tmp_path / "b.toml").write_text(
        f'version = 1\n[model]\nname = "resnet8"\ncheckpoint = "{tmp_path / "dense.pt"}"\n[data]\nheld_out = 8\n'
        'batch_size = 8\n[budget]\nflops = "50%"\n[search]\nepochs = 1\nmax_steps = 2\n'
    )
    return {"tmp": str(tmp_path), "gray": _npz(tmp_path / "gray.npz", channels=1),
            "c100": _npz(tmp_path / "c100.npz", classes=100),
            "empty": _npz(tmp_path / "empty.npz", n_test=0)}  # fmt: skip


GRAY = "has grayscale (1-channel) images, but resnet8"
CASES = [
    (["search", "{tmp}/b.toml", "--set", "data.dataset={gray}"], GRAY),
    (["baseline", "{tmp}/b.toml", "--method", "l1-uniform", "--set", "data.dataset={c100}"],
     "has labels 0..99 (100 classes), but resnet8 (checkpoint"),
    (["train", "--model", "resnet8", "--data", "{gray}", "--out", "{tmp}/m.pt"], GRAY),
    (["eval", "--checkpoint", "{tmp}/dense.pt", "--data", "{c100}"], "has 10 outputs; use a model (checkpoint)"),
    (["finetune", "--plan", "{tmp}/plan.json", "--checkpoint", "{tmp}/dense.pt", "--data", "{gray}", "--out",
      "{tmp}/ft"], GRAY),
    (["finetune", "--plan", "{tmp}/plan.json", "--checkpoint", "{tmp}/dense.pt", "--data", "{empty}", "--out",
      "{tmp}/ft"], "has no test images"),
]  # fmt: skip


@pytest.mark.parametrize("argv,needle", CASES, ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else None)
def test_data_that_does_not_fit_the_model_is_named(files, capsys, argv, needle):
    argv = [a.format(**files) for a in argv]
    if argv[0] in ("search", "baseline"):
        argv += ["--out", f"{files['tmp']}/out"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--no-progress"] if argv[0] != "eval" else argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not any(Path(files["tmp"], p).exists() for p in ("out/plan.json", "m.pt", "ft/model.pt"))


def test_out_folders_that_hold_other_files_or_the_inputs_are_refused(files, capsys):
    tmp = Path(files["tmp"])
    (tmp / "theirs").mkdir()
    (tmp / "theirs" / "notes.txt").write_text("mine")
    (tmp / "a_file").write_text("x")
    ft = ["finetune", "--plan", f"{tmp}/plan.json", "--checkpoint", f"{tmp}/dense.pt", "--data", "shapes:64",
          "--no-progress"]  # fmt: skip
    cases = [
        (["search", f"{tmp}/b.toml", "--out", f"{tmp}/theirs"], "is not empty (notes.txt)"),
        (["baseline", f"{tmp}/b.toml", "--method", "l1-uniform", "--out", f"{tmp}/theirs"], "is not empty"),
        (["run", f"{tmp}/b.toml", "--out", str(tmp)], f"is the folder of the input {tmp}/b.toml"),
        ([*ft, "--out", str(tmp)], f"is the folder of the input {tmp}/plan.json"),
        ([*ft, "--out", f"{tmp}/theirs"], "is not empty (notes.txt)"),
        ([*ft, "--out", f"{tmp}/a_file"], "is a file"),
    ]
    for argv, needle in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(argv if argv[0] == "finetune" else [*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in (tmp / "theirs").iterdir()) == ["notes.txt"]  # nothing written next to it
