"""Dense training (or fine-tuning with ``init``) from a data spec: ``dais-search train`` as a library call.

SGD with Nesterov momentum and a per-step cosine schedule; an atomic checkpoint after every epoch
that ``resume`` continues from; the test split read once, at the end (BENCH.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from ..cost import count_flops, count_params
from ..data import DEFAULT_NORMALIZE, check_data_spec, load_dataset, make_loader, train_val_split
from ..errors import DivergedError, UserError
from ..models import create_model, input_size
from ..report import format_table, library_versions
from ..train import check_finite_model, cosine_schedule, evaluate, make_sgd, train_one_epoch
from .common import check_data_fits, resolve_device

__all__ = ["TrainJob", "run_train"]

log = logging.getLogger("dais_search")


@dataclass(frozen=True)
class TrainJob:
    """What to train, on what, how long (the options of ``dais-search train``)."""

    model: str
    out: str
    data: str = "shapes"
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    held_out: int = 0  # held-out images, evaluated after every epoch
    init: str | None = None  # start from these weights
    resume: bool = False  # continue the run whose checkpoint is at ``out``
    max_steps: int | None = None  # per epoch
    seed: int = 0
    data_dir: str = "data"
    download: bool = False
    normalize: str | None = None  # default: the init checkpoint's, else imagenet
    batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    progress: bool = True


def _check(job: TrainJob) -> None:
    check_data_spec(job.data)
    input_size(job.model)  # unknown model -> UserError listing the known ones
    for key in ("epochs", "batch_size"):
        if getattr(job, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(job, key)}")
    if job.lr <= 0:
        raise UserError(f"--lr must be positive, got {job.lr}")
    if os.path.isdir(job.out):
        raise UserError(f"--out {job.out!r} is a directory; give a file path such as {job.out}/model.pt")
    if job.resume and not os.path.isfile(job.out):
        raise UserError(f"--resume needs an existing checkpoint at --out, but {job.out!r} does not exist")


def run_train(job: TrainJob) -> dict[str, Any]:
    """Trains ``job.model`` on ``job.data``; writes ``job.out`` after every epoch and returns the
    history and the final test accuracy (also printed with FLOPs and params)."""
    _check(job)
    device = resolve_device(job.device)
    init = load_checkpoint(job.init) if job.init else None
    resume = load_checkpoint(job.out) if job.resume else None
    if resume is not None and "optimizer" not in resume:
        raise UserError(
            f"{job.out!r} holds no optimizer state (it is not a dais-search train checkpoint); drop --resume"
        )

    torch.manual_seed(job.seed)
    splits = load_dataset(job.data, job.data_dir, job.download)
    normalize = job.normalize or (init or {}).get("normalize") or DEFAULT_NORMALIZE
    model = create_model(job.model, num_classes=splits.num_classes)
    check_data_fits(model, splits, job.model)
    if init is not None:
        load_state_dict_strict(model, init["state_dict"], f"checkpoint {job.init!r}")
    train_data, held = splits.train, None
    if job.held_out:
        train_data, held = train_val_split(splits.train, job.held_out, job.seed)
    model.to(device)
    # torchrun: each process trains on its slice of every global batch (world x batch size images)
    loader = make_loader(train_data, job.batch_size, True, normalize, job.seed, job.workers,
                         rank=distributed.rank(), world=distributed.world_size())  # fmt: skip
    steps = len(loader) if job.max_steps is None else min(len(loader), job.max_steps)
    optimizer = make_sgd(model, job.lr, job.momentum, job.weight_decay)
    scheduler = cosine_schedule(optimizer, job.epochs * steps, int(job.warmup_epochs * steps))
    start_epoch, history = 0, []
    if resume is not None:
        load_state_dict_strict(model, resume["state_dict"], f"checkpoint {job.out!r}")
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, history = resume["epoch"], resume.get("history", [])
        loader.epoch = start_epoch if hasattr(loader, "epoch") else 0
    log.info("training %s on %s: %d images, %d epochs x %d steps", job.model, splits.name, len(train_data),
             job.epochs, steps)  # fmt: skip

    for epoch in range(start_epoch, job.epochs):
        try:
            stats = train_one_epoch(model, loader, optimizer, scheduler, max_steps=job.max_steps,
                                    progress=job.progress and distributed.is_main(),
                                    desc=f"train epoch {epoch + 1}/{job.epochs}")  # fmt: skip
            check_finite_model(model, f"train epoch {epoch + 1}/{job.epochs}")
        except DivergedError as exc:
            last = f"the last good checkpoint is {job.out} (epoch {epoch})" if epoch else "no checkpoint was written"
            raise DivergedError(f"{exc}; {last}. Lower --lr (or add --warmup-epochs) and train again") from None
        distributed.broadcast_state(model)  # rank 0's BN statistics everywhere (each process saw its own batches)
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        if held is not None:
            held_loader = make_loader(held, 256, normalize=normalize, workers=job.workers)
            row["held_out_top1"] = evaluate(model, held_loader, progress=False)["top1"]
        history.append(row)
        if distributed.is_main():
            print(f"epoch {epoch + 1}/{job.epochs}: loss {stats['loss']:.4f}, train top-1 {stats['top1']:.2f}%"
                  + (f", held-out top-1 {row['held_out_top1']:.2f}%" if held is not None else "")
                  + f", {stats['images_per_s']:.0f} img/s", flush=True)  # fmt: skip
        save_checkpoint(job.out, model, job.model, splits.num_classes, normalize=normalize, epoch=epoch + 1,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), history=history,
                        args=dataclasses.asdict(job), versions=library_versions())  # fmt: skip

    # The test split is read once, for the final figure only (BENCH.md).
    test_loader = make_loader(splits.test, 256, normalize=normalize, workers=job.workers)
    test = evaluate(model, test_loader, progress=job.progress)
    shape = (1, *splits.input_size)
    train_seconds = sum(h["train_seconds"] for h in history)
    if not distributed.is_main():
        return {"history": history, "test": test}
    rows = [[job.model, splits.name, f"{len(history)}", f"{test['top1']:.2f}", f"{test['top5']:.2f}",
             f"{count_flops(model, shape):,}", f"{count_params(model):,}", f"{train_seconds:.1f}"]]  # fmt: skip
    print(format_table(rows, ["model", "data", "epochs", "test top-1 %", "top-5 %", "FLOPs", "params", "train s"]))
    print(f"checkpoint: {job.out}")
    return {"history": history, "test": test}
