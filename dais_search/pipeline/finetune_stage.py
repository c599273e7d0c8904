"""The fine-tune stage: the student a plan prunes to, fine-tuned from its teacher, exported as a bundle.

Shared by ``dais-search finetune`` and the main job (``dais-search run``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .. import distributed
from ..channels import ChannelPlan
from ..checkpoint import load_checkpoint, load_state_dict_strict
from ..data import DataSplits, make_loader
from ..errors import DivergedError
from ..finetune import FinetuneConfig, export, finetune

__all__ = ["finetune_plan", "student_of"]


def student_of(plan: ChannelPlan, teacher: nn.Module, weights: str | os.PathLike | None = None) -> nn.Module:
    """``plan.apply(teacher)`` (which checks that the plan fits the teacher), with the pruned weights
    of ``weights`` (a checkpoint, e.g. the search's ``pruned.pt``) when given."""
    student = plan.apply(teacher)
    if weights is not None:
        load_state_dict_strict(student, load_checkpoint(weights)["state_dict"], f"student {str(weights)!r}")
    return student


def finetune_plan(plan: ChannelPlan, teacher: nn.Module, student: nn.Module, splits: DataSplits,
                  config: FinetuneConfig, out: str | Path, model_name: str, num_classes: int, normalize: str,
                  batch_size: int = 128, workers: int = 2, budget_file: str | None = None,
                  progress: bool = True, resume: bool = False, fold_bn: bool = False) -> dict[str, Any]:  # fmt: skip
    """Fine-tunes ``student`` on all training images (BENCH.md: the search's batch size and seed),
    folds it and exports ``out/``; returns the fine-tune metrics (also in ``out/metrics.json``).
    ``fold_bn`` folds the BatchNorms that follow convs into them in the deployable formats.

    While it runs, ``out/state.pt`` holds its state (every ``config.checkpoint_every`` steps, each
    epoch, on SIGTERM / SIGINT); ``resume`` continues from it; it is removed once the bundle is out.

    Under ``torchrun`` each process trains on its slice of every global batch of ``world x
    batch_size`` images; rank 0 alone evaluates, writes and exports (the others return the metrics
    without test accuracies once the bundle is out)."""
    image = plan.input_shape[-1]
    train = make_loader(splits.train, batch_size, True, normalize, config.seed, workers, image, True,
                        rank=distributed.rank(), world=distributed.world_size())  # fmt: skip
    test = make_loader(splits.test, 256, False, normalize, workers=workers, image_size=image)
    distributed.broadcast_state(student)  # the same start everywhere, whatever each process loaded
    try:
        result = finetune(student, teacher, train, config, plan=plan, progress=progress and distributed.is_main(),
                          test_loader=test if distributed.is_main() else None,
                          state_path=Path(out) / "state.pt", resume=resume)  # fmt: skip
    except DivergedError as exc:
        raise DivergedError(f"{exc}; no bundle was exported. Lower the fine-tune learning rate and fine-tune "
                            "again") from None  # fmt: skip
    if distributed.is_main():
        export(result.model, plan, result.metrics, out, model_name, num_classes, normalize, budget_file, fold_bn)
        (Path(out) / "state.pt").unlink(missing_ok=True)  # the bundle is out: the (large) resume state goes
    distributed.barrier()
    return result.metrics
