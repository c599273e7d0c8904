"""Data sets by spec string, and seeded train / held-out splits.

A data set is named by a spec string:

* ``cifar10`` / ``cifar100``: torchvision's loaders under ``data_dir`` (``download=True`` fetches them);
* ``npz:PATH``: arrays ``x_train``/``y_train``/``x_test``/``y_test``, uint8 NHWC images and integer
  labels (the format of ``../shared/data/cifar10.npz``);
* ``imagefolder:PATH``: an ImageNet-style tree with ``train/`` and ``val/`` class folders;
* ``shapes`` or ``shapes:N``: the procedural offline data set (N training images, default 10,000).

In-memory data sets (all but ImageFolder) stay uint8 tensors; :mod:`.loaders` batches them.

Example:
    >>> splits = load_dataset("npz:../shared/data/cifar10.npz")
    >>> train, held_out = train_val_split(splits.train, held_out=5000, seed=0)
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .shapes import SHAPES_CLASSES, make_shapes

__all__ = ["ArrayDataset", "DataSplits", "check_data_spec", "load_dataset", "split_indices", "train_val_split"]

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class ArrayDataset:
    """Images kept in memory as a uint8 tensor (N, C, H, W) with int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ArrayDataset:
        """The examples at ``indices``, in that order (a copy)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes)

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None) -> ArrayDataset:
        """From uint8 NHWC images and integer labels."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.asarray(labels).astype(np.int64))
        if classes is None:
            classes = [str(i) for i in range(int(y.max()) + 1)] if len(y) else []
        return cls(x, y, tuple(str(c) for c in classes))


@dataclass
class DataSplits:
    """A data set's train and test splits, as :func:`load_dataset` returns them."""

    name: str
    train: ArrayDataset | torch.utils.data.Dataset
    test: ArrayDataset | torch.utils.data.Dataset
    num_classes: int
    input_size: tuple[int, int, int]


# ----------------------------------------------------------------------------------------------
# Loading by spec


def _load_npz(path: str, data_dir: str, download: bool) -> DataSplits:
    if not path:
        raise UserError("npz data needs a path: --data npz:PATH/TO/FILE.npz")
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist; check the path after 'npz:'")
    try:
        archive = np.load(path, allow_pickle=False)
        names = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path!r} is not a readable .npz archive ({exc}); write it with numpy.savez") from exc
    missing = [n for n in NPZ_ARRAYS if n not in names]
    if missing:
        raise UserError(
            f"{path!r} lacks the arrays {', '.join(missing)} (it has: {', '.join(sorted(names)) or 'none'}). "
            f"Expected {', '.join(NPZ_ARRAYS)}: uint8 images (N, H, W, 3) and integer labels (N,)."
        )
    with archive:
        arrays = {n: archive[n] for n in NPZ_ARRAYS}
        classes = [str(c) for c in archive["classes"]] if "classes" in names else None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UserError(
                f"array x_{split} in {path!r} has dtype {x.dtype} and shape {x.shape}; "
                f"expected uint8 images of shape (N, H, W, 3) or (N, H, W, 1), channels last"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
            raise UserError(
                f"array y_{split} in {path!r} has dtype {y.dtype} and shape {y.shape}; "
                f"expected integer labels of shape ({len(x)},), one per image of x_{split}"
            )
        if len(y) and y.min() < 0:
            raise UserError(f"array y_{split} in {path!r} has negative labels; labels must be 0..num_classes-1")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise UserError(
            f"x_train images are {arrays['x_train'].shape[1:]} but x_test images are "
            f"{arrays['x_test'].shape[1:]} in {path!r}; both splits need the same image size"
        )
    num_classes = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    if classes is not None and len(classes) < num_classes:
        raise UserError(f"{path!r} names {len(classes)} classes but its labels go up to {num_classes - 1}")
    classes = classes or [str(i) for i in range(num_classes)]
    train = ArrayDataset.from_numpy(arrays["x_train"], arrays["y_train"], classes)
    test = ArrayDataset.from_numpy(arrays["x_test"], arrays["y_test"], classes)
    return DataSplits(f"npz:{path}", train, test, len(classes), tuple(train.images.shape[1:]))


def _load_torchvision_cifar(name: str) -> Callable[[str, str, bool], DataSplits]:
    def load(arg: str, data_dir: str, download: bool) -> DataSplits:
        import torchvision.datasets

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        root = arg or data_dir
        try:
            train_set = cls(root=root, train=True, download=download)
            test_set = cls(root=root, train=False, download=download)
        except RuntimeError as exc:
            raise UserError(
                f"{name} was not found under {root!r} ({exc}). Let torchvision fetch it (needs internet) with "
                f"--download (train, eval, finetune) or data.download = true in the budget file (search, "
                f"baseline, run); or point --data-dir / data.data_dir at a folder holding it; or use npz:PATH "
                f"for a local array file."
            ) from exc
        train = ArrayDataset.from_numpy(train_set.data, np.asarray(train_set.targets), train_set.classes)
        test = ArrayDataset.from_numpy(test_set.data, np.asarray(test_set.targets), test_set.classes)
        return DataSplits(name, train, test, len(train.classes), (3, 32, 32))

    return load


def _load_imagefolder(path: str, data_dir: str, download: bool) -> DataSplits:
    import torchvision.datasets

    root = path or data_dir
    for sub in ("train", "val"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise UserError(
                f"image folder {root!r} has no {sub}/ directory; expected {root}/train/<class>/*.jpg "
                f"and {root}/val/<class>/*.jpg (the ImageNet layout)"
            )
    train = torchvision.datasets.ImageFolder(os.path.join(root, "train"))
    test = torchvision.datasets.ImageFolder(os.path.join(root, "val"))
    if train.classes != test.classes:
        raise UserError(f"train/ and val/ under {root!r} hold different class folders; they must match")
    return DataSplits(f"imagefolder:{root}", train, test, len(train.classes), (3, 224, 224))


def _load_shapes(arg: str, data_dir: str, download: bool) -> DataSplits:
    try:
        n_train = int(arg) if arg else 10_000
    except ValueError:
        raise UserError(f"'shapes:{arg}' needs an integer number of training images, e.g. shapes:5000") from None
    if n_train < 10:
        raise UserError(f"'shapes:{arg}' asks for {n_train} training images; use at least 10 (one per class)")
    # Disjoint seeds for the two splits, so test images are new draws, not copies of training ones.
    x_tr, y_tr = make_shapes(n_train, seed=0)
    x_te, y_te = make_shapes(max(n_train // 5, 10), seed=1)
    train = ArrayDataset.from_numpy(x_tr, y_tr, SHAPES_CLASSES)
    test = ArrayDataset.from_numpy(x_te, y_te, SHAPES_CLASSES)
    return DataSplits("shapes" + (f":{arg}" if arg else ""), train, test, len(SHAPES_CLASSES), (3, 32, 32))


_DATASETS: dict[str, Callable[[str, str, bool], DataSplits]] = {
    "cifar10": _load_torchvision_cifar("cifar10"),
    "cifar100": _load_torchvision_cifar("cifar100"),
    "npz": _load_npz,
    "imagefolder": _load_imagefolder,
    "shapes": _load_shapes,
}


def check_data_spec(spec: str) -> tuple[str, str]:
    """Splits ``KIND[:ARG]`` and checks the kind, without loading anything.

    Raises:
        UserError: for an unknown kind (the message lists the known ones).
    """
    kind, _, arg = spec.partition(":")
    if kind not in _DATASETS:
        close = difflib.get_close_matches(kind, list(_DATASETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"unknown data set {spec!r}.{hint} Known: cifar10, cifar100, npz:PATH, imagefolder:PATH, shapes[:N]"
        )
    if kind == "npz" and arg and not os.path.isfile(arg):
        raise UserError(f"data file {arg!r} does not exist; check the path after 'npz:'")
    return kind, arg


def load_dataset(spec: str, data_dir: str = "data", download: bool = False) -> DataSplits:
    """Loads a data set by spec (see the module docstring).

    Args:
        spec: ``cifar10``, ``cifar100``, ``npz:PATH``, ``imagefolder:PATH`` or ``shapes[:N]``.
        data_dir: root folder of torchvision data sets (and of an ImageFolder given without a path).
        download: let torchvision download CIFAR when it is missing.

    Raises:
        UserError: unknown spec, missing files, or an array file with wrong or missing arrays.
    """
    kind, arg = check_data_spec(spec)
    return _DATASETS[kind](arg, data_dir, download)


# ----------------------------------------------------------------------------------------------
# Splits


def split_indices(n: int, held_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into (train, held-out) index tensors, each sorted.

    The same (n, held_out, seed) gives the same split on every machine (NumPy's PCG64 stream);
    BENCH.md's search split is ``split_indices(50_000, 5_000, seed=0)``.
    """
    if not 0 < held_out < n:
        raise UserError(f"held-out size must be between 1 and {n - 1} for {n} examples, got {held_out}")
    perm = np.random.default_rng(seed).permutation(n)
    held = torch.from_numpy(np.sort(perm[:held_out]))
    train = torch.from_numpy(np.sort(perm[held_out:]))
    return train, held


def train_val_split(dataset, held_out: int = 5_000, seed: int = 0):
    """Splits a data set into (train, held-out) parts with :func:`split_indices`."""
    train_idx, held_idx = split_indices(len(dataset), held_out, seed)
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(train_idx), dataset.subset(held_idx)
    return torch.utils.data.Subset(dataset, train_idx.tolist()), torch.utils.data.Subset(dataset, held_idx.tolist())
