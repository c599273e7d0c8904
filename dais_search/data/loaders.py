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
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.train, self.drop_last, self.pad = data, batch_size, train, drop_last, pad
        self.seed, self.epoch = seed, 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.shift, self.scale = _normalizer(normalize)
        if data.images.shape[1] != self.shift.shape[1]:
            # Grey-scale images with RGB statistics: use the mean of the channels' statistics.
            self.shift = self.shift.mean(1, keepdim=True)
            self.scale = self.scale.mean(1, keepdim=True)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if self.train else None
        for i in range(len(self)):
            if order is None:
                x = self.data.images[i * self.batch_size : (i + 1) * self.batch_size]
                y = self.data.labels[i * self.batch_size : (i + 1) * self.batch_size]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                x, y = self.data.images[idx], self.data.labels[idx]
            if self.train and self.pad >= 0:
                x = augment_batch(x, generator, self.pad)
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
):
    """A loader of normalised float batches for any data set :func:`load_dataset` returns.

    In-memory data get a :class:`BatchLoader`; file-backed data (ImageFolder) a ``DataLoader`` with
    the standard ImageNet transforms (RandomResizedCrop + flip for training, resize + centre crop
    for evaluation). ``train`` shuffles, and augments unless ``augment`` is false.
    """
    if isinstance(data, ArrayDataset):
        pad = 4 if augment else -1  # BatchLoader: a negative pad means no augmentation
        return BatchLoader(data, batch_size, train, normalize, seed, drop_last, pad)
    from torchvision import transforms as T

    mean, std = NORMALIZATION[normalize] if normalize in NORMALIZATION else _normalizer(normalize)
    if train and augment:
        tf = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        )
    else:
        resize = int(round(image_size / 0.875))
        tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
    return torch.utils.data.DataLoader(
        _Transformed(data, tf),
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )
