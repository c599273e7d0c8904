"""Data: sets by spec string (``npz:PATH``, ``cifar10``, ``imagefolder:PATH``, ``shapes[:N]``),
seeded splits, and loaders. Imports no pruning code.

    datasets.py   data set specs, ArrayDataset, load_dataset, train/held-out splits
    loaders.py    normalisation presets, batch-wise augmentation, BatchLoader, make_loader
    shapes.py     the procedural offline data set
"""

from .datasets import ArrayDataset, DataSplits, check_data_spec, load_dataset, split_indices, train_val_split
from .loaders import DEFAULT_NORMALIZE, NORMALIZATION, BatchLoader, augment_batch, make_loader
from .shapes import SHAPES_CLASSES, make_shapes

__all__ = [
    "DEFAULT_NORMALIZE",
    "NORMALIZATION",
    "SHAPES_CLASSES",
    "ArrayDataset",
    "BatchLoader",
    "DataSplits",
    "augment_batch",
    "check_data_spec",
    "load_dataset",
    "make_loader",
    "make_shapes",
    "split_indices",
    "train_val_split",
]
