"""Batches: normalisation presets, batch-wise augmentation on tensors, and loaders.

In-memory data sets stay uint8 tensors and are augmented a whole batch at a time (random crop with
zero padding + horizontal flip as one gather), because per-image PIL transforms cost more than a
small CIFAR network's training step on a 2-core CPU. Other data sets go through a plain
``torch.utils.data.DataLoader`` with the standard transforms.

Example:
    >>> for x, y in BatchLoader(train, batch_size=128, train=True): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import UserError
from .datasets import ArrayDataset

__all__ = ["DEFAULT_NORMALIZE", "NORMALIZATION", "BatchLoader", "augment_batch", "make_loader"]

# (mean, std) on the [0, 1] scale. The shared CIFAR-10 teachers were trained with ImageNet statistics.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
DEFAULT_NORMALIZE = "imagenet"


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a (B, C, H, W) batch, any dtype.

    Both are done by one advanced-indexing gather, so uint8 batches never leave uint8.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    rows = oy + torch.arange(h)
    cols = ox + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _normalizer(normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    if normalize not in NORMALIZATION:
        raise UserError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalize]
    # x/255 normalised == (x - 255 mean) * 1/(255 std): one subtract and one multiply on the batch.
    shift = torch.tensor(mean).mul(255).view(1, -1, 1, 1)
    scale = torch.tensor(std).mul(255).reciprocal().view(1, -1, 1, 1)
    return shift, scale


class BatchLoader:
    """Iterates an :class:`ArrayDataset` in float batches, normalised, augmented when training.

    Args:
        data: the in-memory data set.
        batch_size: examples per batch.
        train: shuffle (a new seeded order each pass) and augment (crop + flip).
        normalize: a key of :data:`NORMALIZATION`.
        seed: seeds shuffling and augmentation; pass ``k`` gives the same batches for the same seed.
        drop_last: drop a last incomplete batch.
        pad: zero padding of the random crop; negative: no augmentation.
        pin_memory: yield batches in page-locked memory, so that copies to a GPU overlap with its
            work (default: when CUDA is available).
        rank, world: data-parallel sharding (``torchrun``): one seeded order shared by all ``world``
            processes makes global batches of ``world x batch_size`` examples, augmented as a whole
            (the same random crops and flips a single process with the global batch size draws), and
            process ``rank`` yields its ``batch_size`` slice of each. An incomplete last global batch
            is dropped when ``world > 1``.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        train: bool = False,
        normalize: str = DEFAULT_NORMALIZE,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = 4,
        pin_memory: bool | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world} processes")
        self.rank, self.world = rank, world
        self.data, self.batch_size, self.train, self.drop_last, self.pad = data, batch_size, train, drop_last, pad
        self.seed, self.epoch = seed, 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.shift, self.scale = _normalizer(normalize)
        if data.images.shape[1] != self.shift.shape[1]:
            # Grey-scale images with RGB statistics: use the mean of the channels' statistics.
            self.shift = self.shift.mean(1, keepdim=True)
            self.scale = self.scale.mean(1, keepdim=True)

    def __len__(self) -> int:
        n, size = len(self.data), self.batch_size * self.world
        return n // size if self.drop_last or self.world > 1 else -(-n // size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if self.train else None
        size = self.batch_size * self.world  # the global batch
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for i in range(len(self)):
            if order is None:
                x, y = self.data.images[i * size : (i + 1) * size], self.data.labels[i * size : (i + 1) * size]
            else:
                idx = order[i * size : (i + 1) * size]
                x, y = self.data.images[idx], self.data.labels[idx]
            if self.train and self.pad >= 0:
                x = augment_batch(x, generator, self.pad)
            if self.world > 1:
                x, y = x[mine], y[mine]
            x = x.float().sub_(self.shift).mul_(self.scale)
            yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return self.transform(image), label


class _EpochSampled:
    """A DataLoader with a DistributedSampler whose epoch advances at every pass (as our loaders' does)."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler) -> None:
        self.loader, self.sampler, self.epoch = loader, sampler, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def make_loader(
    data,
    batch_size: int,
    train: bool = False,
    normalize: str = DEFAULT_NORMALIZE,
    seed: int = 0,
    workers: int = 2,
    image_size: int = 224,
    drop_last: bool = False,
    augment: bool = True,
    rank: int = 0,
    world: int = 1,
):
    """A loader of normalised float batches for any data set :func:`load_dataset` returns.

    In-memory data get a :class:`BatchLoader`; file-backed data (ImageFolder) a ``DataLoader`` with
    the standard ImageNet transforms (RandomResizedCrop + flip for training, resize + centre crop
    for evaluation). ``train`` shuffles, and augments unless ``augment`` is false. ``rank`` of
    ``world`` > 1 shards it for data-parallel runs (see :class:`BatchLoader`; file-backed data through
    a ``DistributedSampler``); ``batch_size`` is then per process.
    """
    if isinstance(data, ArrayDataset):
        pad = 4 if augment else -1  # BatchLoader: a negative pad means no augmentation
        return BatchLoader(data, batch_size, train, normalize, seed, drop_last, pad, rank=rank, world=world)
    from torchvision import transforms as T

    mean, std = NORMALIZATION[normalize] if normalize in NORMALIZATION else _normalizer(normalize)
    if train and augment:
        tf = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        )
    else:
        resize = int(round(image_size / 0.875))
        tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
    dataset, sampler = _Transformed(data, tf), None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=train, seed=seed, drop_last=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )
    return _EpochSampled(loader, sampler) if sampler is not None else loader
