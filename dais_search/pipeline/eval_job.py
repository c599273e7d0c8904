"""Evaluating a checkpoint on a data set's split: ``dais-search eval`` as a library call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..cost import count_flops, count_params
from ..data import DEFAULT_NORMALIZE, check_data_spec, load_dataset, make_loader
from ..errors import UserError
from ..models import input_size
from ..report import format_table
from ..train import evaluate
from .common import check_data_fits, model_of_checkpoint, resolve_device

__all__ = ["EvalJob", "run_eval"]


@dataclass(frozen=True)
class EvalJob:
    """Which checkpoint, on which data (the options of ``dais-search eval``)."""

    checkpoint: str
    data: str
    model: str | None = None  # default: the architecture the checkpoint records
    num_classes: int | None = None
    split: str = "test"
    limit: int | None = None  # the first N images only
    data_dir: str = "data"
    download: bool = False
    normalize: str | None = None  # default: the checkpoint's, else imagenet
    batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    progress: bool = True


def run_eval(job: EvalJob) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and loss of the checkpoint on the split; printed with FLOPs and params."""
    # Everything that can be wrong is checked before the data set is decoded.
    check_data_spec(job.data)
    if job.model:
        input_size(job.model)  # unknown model -> UserError listing the known ones
    if job.limit is not None and job.limit < 1:
        raise UserError(f"--limit must be at least 1, got {job.limit}")
    device = resolve_device(job.device)
    ckpt = load_checkpoint(job.checkpoint)
    model, name, _ = model_of_checkpoint(ckpt, job.model, job.num_classes)  # dense, or pruned with its plan
    normalize = job.normalize or ckpt.get("normalize") or DEFAULT_NORMALIZE
    splits = load_dataset(job.data, job.data_dir, job.download)
    data = splits.test if job.split == "test" else splits.train
    if job.limit is not None:
        first = range(min(job.limit, len(data)))
        data = data.subset(first) if hasattr(data, "subset") else torch.utils.data.Subset(data, first)
    check_data_fits(model, splits, f"{name} (checkpoint {job.checkpoint!r})")
    model.to(device)
    loader = make_loader(data, job.batch_size, train=False, normalize=normalize, workers=job.workers)
    metrics = evaluate(model, loader, progress=job.progress)
    shape = (1, *splits.input_size)
    rows = [[name, f"{metrics['top1']:.2f}", f"{metrics['top5']:.2f}", f"{metrics['loss']:.4f}",
             f"{metrics['images']:,}", f"{count_flops(model, shape):,}", f"{count_params(model):,}"]]  # fmt: skip
    print(format_table(rows, ["model", "top-1 %", "top-5 %", "loss", "images", "FLOPs", "params"]))
    return metrics
