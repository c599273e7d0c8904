"""Run by tests/distributed/test_ddp.py, alone (one process) or under ``torchrun`` (gloo, CPU).

``search OUT WORLD_BATCH``: the library's Searcher on a tiny network without BN (where the
gradient of a global batch is exactly the mean of its slices' gradients), 2 epochs; every process
saves its plan, weights, gates and multiplier to ``OUT/rank<R>.pt``. The per-process batch is
``WORLD_BATCH / world size``, so one process with ``WORLD_BATCH`` sees the same global batches.

``cli ARGS...``: ``dais_search.cli.main(ARGS)`` (the command line, as ``torchrun ... dais-search``).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from dais_search import distributed
from dais_search.budget import Budget, BudgetSpec, SearchSpec
from dais_search.data import ArrayDataset
from dais_search.data.loaders import BatchLoader
from dais_search.search.searcher import Searcher


class NoBN(nn.Module):
    """conv -> relu -> conv -> relu -> mean -> linear: two prunable groups, no batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(y.mean((2, 3)))


def data(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 12, 12), generator=g, dtype=torch.uint8)
    labels = (images.float().mean((1, 2, 3)) > 127.5).long() + 2 * (images[:, 0].float().mean((1, 2)) > 127.5).long()
    return ArrayDataset(images, labels, ("a", "b", "c", "d"))


def search(out: str, world_batch: int) -> None:
    device = distributed.init_from_env(torch.device("cpu"))
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(0)
    model = NoBN().to(device)
    budget = Budget(budget=BudgetSpec(flops="50%"),
                    search=SearchSpec(epochs=2, gate_every=2, weight_lr=0.05, recalibrate_batches=0))  # fmt: skip
    train = BatchLoader(data(192, 1), world_batch // world, train=True, seed=0, drop_last=True, rank=rank, world=world)
    held = BatchLoader(data(96, 2), world_batch // world, train=True, seed=1, drop_last=True, rank=rank, world=world)
    searcher = Searcher(model, budget, torch.zeros(1, 3, 12, 12), len(train))
    for epoch in range(budget.search.epochs):
        searcher.run_epoch(epoch, train, held, budget.search.gate_every, progress=False)
    plan = searcher.binarize()
    torch.save({"groups": plan.to_dict()["groups"], "model": model.state_dict(), "gates": searcher.gates.state_dict(),
                "lam": searcher.lam, "world": world}, f"{out}/rank{rank}.pt")  # fmt: skip
    distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "search":
        search(sys.argv[2], int(sys.argv[3]))
    else:
        from dais_search.cli import main

        sys.exit(main(sys.argv[2:]))
