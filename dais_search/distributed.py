"""Data-parallel runs under ``torchrun``: PyTorch's own ``torch.distributed``, a thin layer over it.

``torchrun --nproc-per-node N --no-python dais-search search budgets/X.toml --out runs/x`` starts N
processes; :func:`init_from_env` joins them into one process group (gloo on CPU, nccl on GPU, one
GPU per process by ``LOCAL_RANK``). Then:

- every process reads its own slice of each global batch (``world x data.batch_size`` images,
  drawn by one seeded order shared by all: the same batches a single process with the global batch
  size would see);
- :func:`average_gradients` averages the gradients of every optimizer step (weights, indicators and
  keep ratios alike), so that parameters stay identical on every process without being sent;
- :func:`broadcast_state` makes rank 0's tensors everyone's where they could drift (BN running
  statistics, the search's gates and multipliers at the end of each epoch);
- only rank 0 writes files (:mod:`dais_search.files` checks :func:`is_main`), logs and prints.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing here does anything: one
process, world size 1.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_sum",
    "any_true",
    "average_gradients",
    "barrier",
    "broadcast_object",
    "broadcast_state",
    "init_from_env",
    "is_main",
    "launched",
    "local",
    "rank",
    "shutdown",
    "world_size",
]

TIMEOUT = datetime.timedelta(hours=2)  # rank 0 evaluates and exports while the others wait at a barrier


def launched() -> bool:
    """True when this process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE``)
    with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_local = [0]  # > 0 inside local(): collectives are skipped


def active() -> bool:
    """True when collectives run: a process group of more than one process, outside :func:`local`."""
    return not _local[0] and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local():
    """Within it, this process works alone: the collectives here do nothing (e.g. rank 0 timing
    training steps while the others wait at a barrier). Rank and world size are unchanged."""
    _local[0] += 1
    try:
        yield
    finally:
        _local[0] -= 1


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _group() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if _group() else 1


def is_main() -> bool:
    """True on rank 0, which alone writes files, logs and prints (and without a process group)."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Joins the process group ``torchrun`` describes (environment ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...) with gloo for a CPU ``device`` and nccl for CUDA, once; returns the device this
    process works on (``cuda:LOCAL_RANK`` for CUDA). Without ``torchrun``, returns ``device`` as it is."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not _group():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    """Leaves the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every process (a no-op for one)."""
    if active():
        dist.barrier()


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replaces each gradient by its mean over the processes: one all-reduce of the gradients
    flattened into one buffer per dtype (a no-op for one process). Every process must call it with
    the same parameters in the same order; a parameter without a gradient counts as zeros."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    world = dist.get_world_size()
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_state(module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers into every process's ``module`` (a no-op for one)."""
    if not active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_contiguous():
                dist.broadcast(t.data, src=0)
            else:  # e.g. channels-last weights: the collectives take contiguous tensors
                tmp = t.data.contiguous()
                dist.broadcast(tmp, src=0)
                t.data.copy_(tmp)


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_true(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a collective: all processes call it)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """The element-wise sum of ``values`` over the processes (for reporting counts and losses)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()
