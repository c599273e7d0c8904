"""What the stages share: the device, the dense model from a name and a checkpoint, early input
checks, the output folder of a budget job, and the search data of a budget."""

from __future__ import annotations

import copy
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..budget import Budget
from ..checkpoint import load_checkpoint, load_state_dict_strict
from ..data import check_data_spec, load_dataset, make_loader, train_val_split
from ..errors import UserError
from ..files import write_json
from ..models import create_model, input_size
from ..report import library_versions
from ..search import get_schedule
from ..train import evaluate

__all__ = ["BudgetInputs", "check_budget_inputs", "load_budget_inputs", "load_dense", "resolve_device",
           "start_out_dir"]  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu``, ``cuda`` or ``cuda:N``, with a clear error for the impossible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
    return device


def check_budget_inputs(budget: Budget) -> None:
    """Everything that can be wrong with a budget file's inputs, before any data is decoded."""
    check_data_spec(budget.data.dataset)
    input_size(budget.model.name)  # unknown model -> UserError listing the known ones
    get_schedule(budget.search.temperature_schedule)
    if budget.model.checkpoint and not os.path.isfile(budget.model.checkpoint):
        raise UserError(
            f"model.checkpoint {budget.model.checkpoint!r} does not exist (paths are relative to the current directory)"
        )


def load_dense(name: str, checkpoint: str | os.PathLike | None, num_classes: int) -> nn.Module:
    """``create_model(name)`` with the checkpoint's weights (when one is given), strictly loaded."""
    model = create_model(name, num_classes=num_classes)
    if checkpoint:
        load_state_dict_strict(model, load_checkpoint(checkpoint)["state_dict"], f"checkpoint {str(checkpoint)!r}")
    return model


def start_out_dir(out_dir: Path, budget: Budget, budget_path: str, resume: bool, device: str,
                  overrides: dict[str, Any] | None, **config: Any) -> None:  # fmt: skip
    """Creates a job's output folder and writes ``budget.toml`` and ``config.json`` (resolved
    budget, overrides, versions, command, device and ``config``), unless resuming."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.copyfile(budget_path, out_dir / "budget.toml")
        write_json(out_dir / "config.json", {"budget": budget.to_dict(), "overrides": overrides or {},
                                             "versions": library_versions(), "command": " ".join(sys.argv),
                                             "device": device, **config})  # fmt: skip


@dataclass
class BudgetInputs:
    """The data and models a budget's search (or baseline) works on.

    Attributes:
        splits: the data set; ``train`` / ``held`` the search's split of its training images.
        model: the dense model, on the device (searches train it in place); ``dense`` an eval copy.
        shape: the example input's shape (1, C, H, W).
        train_loader, held_loader: shuffled, augmented loaders of the two splits (search steps,
            BN recalibration).
    """

    budget: Budget
    splits: Any
    train: Any
    held: Any
    num_classes: int
    model: nn.Module
    dense: nn.Module
    shape: tuple[int, ...]
    train_loader: Any
    held_loader: Any

    def plain_loader(self, data, batch_size: int = 256):
        """An unshuffled, unaugmented loader of ``data`` (evaluation, scoring)."""
        dspec = self.budget.data
        return make_loader(data, batch_size, False, dspec.normalize, workers=dspec.workers, image_size=self.shape[-1])

    def accuracy(self, model: nn.Module, data) -> float:
        """Top-1 (%) of ``model`` on ``data``."""
        return evaluate(model, self.plain_loader(data), progress=False)["top1"]


def load_budget_inputs(budget: Budget, device: str) -> BudgetInputs:
    """Loads the budget's data (split into the search's train and held-out parts), its dense model
    on ``device``, and the two shuffled loaders (seeded by ``search.seed``)."""
    spec, dspec = budget.search, budget.data
    splits = load_dataset(dspec.dataset, dspec.data_dir)
    train, held = train_val_split(splits.train, dspec.held_out, dspec.split_seed)
    num_classes = budget.model.num_classes or splits.num_classes
    model = load_dense(budget.model.name, budget.model.checkpoint, num_classes).to(device)
    dense = copy.deepcopy(model).eval()
    size = budget.budget.input_size or splits.input_size
    shape, image = (1, *size), size[-1]
    train_loader = make_loader(train, dspec.batch_size, True, dspec.normalize, spec.seed, dspec.workers, image, True,
                               dspec.augment)  # fmt: skip
    held_loader = make_loader(held, dspec.batch_size, True, dspec.normalize, spec.seed + 1, dspec.workers, image, True,
                              dspec.augment)  # fmt: skip
    return BudgetInputs(budget, splits, train, held, num_classes, model, dense, shape, train_loader, held_loader)
