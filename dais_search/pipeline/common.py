"""What the stages share: the device, the dense model from a name and a checkpoint, early input
checks, the output folder of a budget job, and the search data of a budget."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..budget import Budget
from ..channels import ChannelPlan
from ..checkpoint import load_checkpoint, load_state_dict_strict, model_from_checkpoint
from ..data import check_data_spec, load_dataset, make_loader, train_val_split
from ..errors import UserError
from ..files import write_json
from ..models import create_model, input_size
from ..report import library_versions
from ..search import get_schedule
from ..train import evaluate

__all__ = ["BudgetInputs", "check_budget_inputs", "check_data_fits", "check_nonempty", "load_budget_inputs",
           "load_dense", "model_of_checkpoint", "model_outputs", "prepare_out", "resolve_device",
           "check_resume_settings", "start_out_dir"]  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu``, ``cuda`` or ``cuda:N``, with a clear error for the impossible.

    Under ``torchrun`` this joins the process group (gloo on CPU, nccl on CUDA) and returns this
    process's device (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
    if distributed.launched() and device.type == "cuda" and torch.cuda.device_count() < int(os.environ["WORLD_SIZE"]):
        raise UserError(f"torchrun started {os.environ['WORLD_SIZE']} processes but {torch.cuda.device_count()} GPUs "
                        "are visible: start one process per GPU (--nproc-per-node), or --device cpu")  # fmt: skip
    return distributed.init_from_env(device)


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
    if not distributed.is_main():  # under torchrun rank 0 alone writes
        return
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


def load_budget_inputs(budget: Budget, device: str, shard: bool = True) -> BudgetInputs:
    """Loads the budget's data (split into the search's train and held-out parts), its dense model
    on ``device``, and the two shuffled loaders (seeded by ``search.seed``); under ``torchrun`` the
    loaders give each process its slice of every global batch, unless ``shard`` is false."""
    spec, dspec = budget.search, budget.data
    splits = load_dataset(dspec.dataset, dspec.data_dir, dspec.download)
    check_nonempty(splits)
    # The class count: the budget's, else the checkpoint's (so that data with other labels is named as
    # such, not as a checkpoint that does not fit), else the data's.
    ckpt = budget.model.checkpoint
    if budget.model.num_classes or not ckpt:
        model = load_dense(budget.model.name, ckpt, budget.model.num_classes or splits.num_classes)
    else:
        model, _ = model_from_checkpoint(load_checkpoint(ckpt), budget.model.name, source=f"checkpoint {ckpt!r}")
    source = f"checkpoint {ckpt!r}" if ckpt else "model.num_classes"
    check_data_fits(model, splits, f"{budget.model.name} ({source})")
    num_classes = model_outputs(model, splits.input_size)
    train, held = train_val_split(splits.train, dspec.held_out, dspec.split_seed)
    model = model.to(device)
    dense = copy.deepcopy(model).eval()
    size = budget.budget.input_size or splits.input_size
    shape, image = (1, *size), size[-1]
    ranks = {"rank": distributed.rank(), "world": distributed.world_size()} if shard else {}
    train_loader = make_loader(train, dspec.batch_size, True, dspec.normalize, spec.seed, dspec.workers, image, True,
                               dspec.augment, **ranks)  # fmt: skip
    held_loader = make_loader(held, dspec.batch_size, True, dspec.normalize, spec.seed + 1, dspec.workers, image, True,
                              dspec.augment, **ranks)  # fmt: skip
    return BudgetInputs(budget, splits, train, held, num_classes, model, dense, shape, train_loader, held_loader)


def check_nonempty(splits) -> None:
    """A :class:`UserError` naming the data set when its train or test split has no examples."""
    for split in ("train", "test"):
        if len(getattr(splits, split)) == 0:
            raise UserError(f"data {splits.name} has no {split} images; give a data set with both splits filled")


def check_data_fits(model: nn.Module, splits, what: str) -> None:
    """A :class:`UserError` naming the data and the model when the data's images have another channel
    count than the model reads, or its labels go beyond the model's outputs; also :func:`check_nonempty`.
    ``what`` names the model and where its class count came from (e.g. its checkpoint)."""
    check_nonempty(splits)
    channels = splits.input_size[0]
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is not None and first.in_channels != channels:
        kind = "grayscale (1-channel)" if channels == 1 else f"{channels}-channel"
        raise UserError(f"data {splits.name} has {kind} images, but {what} reads {first.in_channels} channels; "
                        f"convert the images (a gray channel repeated 3 times makes RGB) or use a model for "
                        f"{channels}-channel input")  # fmt: skip
    outputs = model_outputs(model, splits.input_size)
    if outputs < splits.num_classes:
        n = splits.num_classes
        raise UserError(f"data {splits.name} has labels 0..{n - 1} ({n} classes), but {what} has {outputs} "
                        "outputs; use a model (checkpoint) trained for these classes")  # fmt: skip


def model_outputs(model: nn.Module, size) -> int:
    """The size of ``model``'s output (its class count) on one input of shape ``size`` (C, H, W)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = int(model(torch.zeros(1, *size, device=next(model.parameters()).device)).shape[-1])
    model.train(was_training)
    return outputs


def model_of_checkpoint(ckpt: dict[str, Any], model_name: str | None = None, num_classes: int | None = None,
                        source: str = "checkpoint") -> tuple[nn.Module, str, ChannelPlan | None]:  # fmt: skip
    """The model a checkpoint holds, dense or pruned: our pruned checkpoints (the search's
    ``pruned.pt``, a bundle's ``model.pt``) carry their plan, which rebuilds the pruned shapes from
    the dense architecture. Returns (model, name, plan or ``None``).

    Raises:
        UserError: as :func:`~dais_search.checkpoint.model_from_checkpoint`, or a plan that does not
            fit the named architecture.
    """
    if not ckpt.get("plan"):
        model, name = model_from_checkpoint(ckpt, model_name, num_classes, source)
        return model, name, None
    plan = ChannelPlan.from_dict(ckpt["plan"], source)
    meta = ckpt.get("model") or {}
    name = model_name or meta.get("name") or plan.meta.get("model")
    if not name:
        raise UserError(f"the {source} does not say which architecture it holds; pass --model NAME")
    classes = num_classes or meta.get("num_classes") or plan.meta.get("num_classes") or 10
    kwargs = meta.get("kwargs", {}) if meta.get("name") == name else {}
    model = plan.apply(create_model(name, num_classes=classes, **kwargs))
    load_state_dict_strict(model, ckpt["state_dict"], source)
    return model, name, plan


def prepare_out(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), resume: bool = False,
                flag: str = "--out", ours: Iterable[str] = ()) -> Path:  # fmt: skip
    """Checks an output folder before any work: not a file, not the folder of one of the ``inputs``
    (our outputs there would overwrite or copy onto them), and empty unless ``resume`` (files named
    in ``ours``, which an interrupted start of the same command writes first, do not count). Returns it.

    Raises:
        UserError: naming the folder, what is in the way, and the fix.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; give a folder")
    for path in inputs:
        if path and Path(path).resolve().parent == folder.resolve():
            raise UserError(f"{flag} {folder} is the folder of the input {path}; what this command writes there would "
                            f"overwrite or copy onto it: choose another folder")  # fmt: skip
    names = sorted(p.name for p in folder.iterdir() if p.name not in set(ours)) if folder.is_dir() else []
    if not resume and names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UserError(f"{flag} {folder} is not empty ({shown}); choose a new or empty folder"
                        + (" or pass --resume to continue what is there" if flag == "--out" else ""))  # fmt: skip
    distributed.barrier()  # under torchrun: every process has looked before rank 0 writes there
    return folder


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_resume_settings(config_path: Path, budget: Budget, safe: Iterable[str]) -> None:
    """Refuses to resume with settings other than the saved run's (``config.json``), naming the keys;
    changes to ``safe`` keys are allowed and recorded in ``config.json`` under ``resumed_with``."""
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    saved, now = _flat(config.get("budget", {})), _flat(budget.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    unsafe = [k for k in changed if k not in set(safe)]
    if unsafe:
        shown = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in unsafe[:5])
        raise UserError(f"--resume with other settings than the run in {config_path.parent} was started with "
                        f"({shown}); resume with the same budget and overrides, or start a new --out. Only "
                        f"{', '.join(safe)} may change on resume")  # fmt: skip
    if changed:
        config.setdefault("resumed_with", []).append({k: now.get(k) for k in changed})
        write_json(config_path, config)
