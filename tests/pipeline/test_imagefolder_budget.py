"""The ImageNet-scale path on CPU: budgets/resnet50_imagenet_keep50.toml, unchanged but for the data
location, sizes and step counts, searches a tiny generated ImageFolder through a real DataLoader
(worker processes) and writes its plan."""

from __future__ import annotations

import json
import warnings

import numpy as np

from dais_search.cli import main


def test_resnet50_imagenet_budget_runs_on_a_tiny_image_folder(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
                image.save(tmp_path / split / cls / f"{i}.JPEG")
    out = tmp_path / "run"
    argv = ["search", "budgets/resnet50_imagenet_keep50.toml", "--out", str(out), "--no-progress", "--device", "cpu",
            "--set", 'model.checkpoint=""', "--set", f"data.dataset=imagefolder:{tmp_path}", "--set", "data.held_out=4",
            "--set", "data.batch_size=4", "--set", "data.workers=1", "--set", "budget.input_size=[3, 64, 64]",
            "--set", "search.epochs=1", "--set", "search.max_steps=2", "--set", "search.gate_every=1",
            "--set", "search.recalibrate_batches=1"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.99 <= metrics["flops_over_target"] <= 1.0
    assert json.loads((out / "plan.json").read_text())["input_shape"] == [1, 3, 64, 64]
    assert json.loads((out / "config.json").read_text())["budget"]["data"]["workers"] == 1
