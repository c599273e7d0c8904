"""dais_search.search() on users' own loaders: the README example runs, and it is the CLI's search.

The CLI (`dais-search search`) loads data and the model from a budget file and calls the same
:func:`dais_search.search`; fed the same batches in the same order from plain DataLoaders, the
library call must give the same plan.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_npz
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import dais_search as ds
from dais_search.cli import main
from dais_search.data import NORMALIZATION
from dais_search.errors import UserError


def readme_example(marker: str) -> str:
    """The ```python block that follows ``<!-- marker -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block after <!-- {marker} -->"
    return match.group(1)


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(readme_example("example: search and finetune"), "README.md", "exec"), scope)  # noqa: S102
    result, tuned = scope["result"], scope["tuned"]
    assert isinstance(result, ds.SearchResult) and isinstance(tuned, ds.FinetuneResult)
    assert 0.99 <= result.metrics["flops_over_target"] <= 1.0
    assert result.plan.flops <= result.plan.meta["target_flops"]
    assert ds.count_flops(result.pruned) == result.plan.flops
    assert ds.count_flops(tuned.model) == result.plan.flops  # folded back to the pruned shapes
    assert (tmp_path / "runs" / "mine" / "plan.json").is_file()
    replayed = ds.ChannelPlan.load(tmp_path / "runs" / "mine" / "plan.json").apply(scope["teacher"])
    assert ds.count_flops(replayed) == result.plan.flops


def _budget_file(path: Path, data: Path, checkpoint: Path) -> Path:
    path.write_text(
        "\n".join([
            "version = 1", "[model]", 'name = "resnet8"', f'checkpoint = "{checkpoint}"',
            "[data]", f'dataset = "npz:{data}"', "held_out = 64", "batch_size = 16", "augment = false",
            "[budget]", 'flops = "50%"',
            "[search]", "epochs = 1", "max_steps = 8", "gate_every = 2", "recalibrate_batches = 2", "gate_lr = 0.1",
        ]) + "\n"
    )  # fmt: skip
    return path


def _loaders(npz: Path, budget: ds.Budget, train_seed: int, held_seed: int) -> tuple[DataLoader, DataLoader]:
    """Plain DataLoaders over the budget's split, normalised as our loaders do, shuffled by seeded
    RandomSamplers (the first pass of a sampler seeded ``s * 100_003`` is BatchLoader(seed=s)'s order)."""
    arrays = np.load(npz)
    mean, std = NORMALIZATION[budget.data.normalize]
    shift = torch.tensor(mean).mul(255).view(1, -1, 1, 1)
    scale = torch.tensor(std).mul(255).reciprocal().view(1, -1, 1, 1)
    images = torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2).float().sub_(shift).mul_(scale)
    labels = torch.from_numpy(arrays["y_train"].astype(np.int64))
    train_idx, held_idx = ds.split_indices(len(labels), budget.data.held_out, budget.data.split_seed)

    def loader(idx: torch.Tensor, seed: int) -> DataLoader:
        data = TensorDataset(images[idx], labels[idx])
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed * 100_003))
        return DataLoader(data, batch_size=budget.data.batch_size, sampler=sampler, drop_last=True)

    return loader(train_idx, train_seed), loader(held_idx, held_seed)


def test_library_search_on_plain_dataloaders_gives_the_cli_plan(tmp_path, capsys):
    npz = write_npz(tmp_path / "data.npz", n_train=240, n_test=20)
    torch.manual_seed(3)
    ckpt = tmp_path / "dense.pt"
    ds.save_checkpoint(ckpt, ds.create_model("resnet8"), "resnet8", 10)
    budget_path = _budget_file(tmp_path / "b.toml", npz, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        argv = ["search", str(budget_path), "--out", str(tmp_path / "cli"), "--no-progress", "--device", "cpu"]
        assert main(argv) == 0
    capsys.readouterr()
    cli_plan = ds.ChannelPlan.load(tmp_path / "cli" / "plan.json")
    cli_history = json.loads((tmp_path / "cli" / "metrics.json").read_text())["history"]

    budget = ds.load_budget(budget_path)
    seed = budget.search.seed

    def library_search(train_seed: int, held_seed: int) -> ds.SearchResult:
        model, _ = ds.model_from_checkpoint(ds.load_checkpoint(ckpt))
        train, held = _loaders(npz, budget, train_seed, held_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.search(model, budget, train, held, torch.zeros(1, 3, 32, 32), progress=False)

    result = library_search(seed, seed + 1)  # the CLI's loaders: search.seed and search.seed + 1
    assert result.plan.kept == cli_plan.kept
    assert (result.plan.flops, result.plan.params) == (cli_plan.flops, cli_plan.params)
    assert result.metrics["history"][0]["train_loss"] == cli_history[0]["train_loss"]
    assert result.metrics["history"][0]["val_loss"] == cli_history[0]["val_loss"]
    # Negative control: another order of the same batches trains differently.
    other = library_search(seed + 7, seed + 1)
    assert other.metrics["history"][0]["train_loss"] != cli_history[0]["train_loss"]


def test_search_takes_a_budget_built_in_python_and_checks_it():
    model = ds.create_model("resnet8")
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    bad = ds.Budget(budget=ds.BudgetSpec(flops="150%"))
    with pytest.raises(UserError, match="budget.flops"):
        ds.search(model, bad, batches, batches[:2], torch.zeros(1, 3, 32, 32), progress=False)
    unknown = ds.Budget(search=ds.SearchSpec(temperature_schedule="linear"))
    with pytest.raises(UserError, match="exponential"):
        ds.search(model, unknown, batches, batches[:2], torch.zeros(1, 3, 32, 32), progress=False)
    with pytest.raises(UserError, match="no search state"):
        ds.search(model, ds.Budget(), batches, batches[:2], torch.zeros(1, 3, 32, 32), resume=True)
    budget = ds.Budget(budget=ds.BudgetSpec(flops=0.6), search=ds.SearchSpec(epochs=1, recalibrate_batches=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, batches, batches[:2], torch.zeros(1, 3, 32, 32), progress=False)
    assert 0.99 <= result.metrics["flops_over_target"] <= 1.0
    assert result.metrics["target_flops"] == pytest.approx(0.6 * result.plan.dense_flops)


class _StopsOnPass:
    """A loader that raises at the start of its ``stop``-th pass (an interrupted run)."""

    def __init__(self, loader, stop: int) -> None:
        self.loader, self.stop, self.passes = loader, stop, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        if self.passes == self.stop:
            raise KeyboardInterrupt
        return iter(self.loader)

    @property
    def epoch(self):
        return self.loader.epoch

    @epoch.setter
    def epoch(self, value):
        self.loader.epoch = value


def test_a_resumed_search_is_the_uninterrupted_one_when_the_held_out_split_is_passed_over_again(tmp_path):
    """gate_every = 1 with 6 train and 2 held-out batches: 3 held-out passes per epoch. The resumed
    run must put our loaders' pass counters where the uninterrupted run had them."""
    data = ds.load_dataset("shapes:128")
    budget = ds.Budget(search=ds.SearchSpec(epochs=2, gate_every=1, max_steps=6, recalibrate_batches=1))

    def loaders():
        train = ds.make_loader(data.train.subset(range(96)), 16, True, workers=0)
        held = ds.make_loader(data.train.subset(range(96, 128)), 16, True, seed=1, workers=0)
        return train, held

    def run(train, held, **kw):
        torch.manual_seed(0)
        model = ds.create_model("resnet8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.search(model, budget, train, held, torch.zeros(1, 3, 32, 32), progress=False, **kw)

    whole = run(*loaders())
    state = tmp_path / "state.pt"
    train, held = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(_StopsOnPass(train, stop=2), held, state_path=state)  # dies as epoch 2 starts
    resumed = run(*loaders(), state_path=state, resume=True)
    assert resumed.plan.kept == whole.plan.kept
    assert [h["val_loss"] for h in resumed.metrics["history"]] == [h["val_loss"] for h in whole.metrics["history"]]
    assert [h["gate_steps"] for h in whole.metrics["history"]] == [6, 6]
