"""What the stages share: the device, the dense model from a name and a checkpoint, early input checks."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..budget import Budget
from ..checkpoint import load_checkpoint, load_state_dict_strict
from ..data import check_data_spec
from ..errors import UserError
from ..models import create_model, input_size
from ..search import get_schedule

__all__ = ["check_budget_inputs", "load_dense", "resolve_device"]


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
