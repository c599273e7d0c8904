"""dais_search: budgeted, differentiable channel pruning for PyTorch CNNs.

Example:
    >>> import dais_search as ds
    >>> model = ds.create_model("resnet56")
    >>> ds.count_flops(model, (1, 3, 32, 32)), ds.count_params(model)
    (250971392, 853018)
"""

__version__ = "0.1.0"

from .budget import Budget, load_budget
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import BatchLoader, load_dataset, make_loader, split_indices, train_val_split
from .errors import UserError
from .flops import FlopsModel, count_flops, count_params, flops_breakdown
from .graph import ChannelGroup, find_channel_groups
from .loops import cosine_schedule, evaluate, make_sgd, train_one_epoch
from .models import create_model, list_models, register_model
from .plan import ChannelPlan
from .search import Searcher

__all__ = [
    "BatchLoader",
    "Budget",
    "ChannelGroup",
    "ChannelPlan",
    "FlopsModel",
    "Searcher",
    "UserError",
    "__version__",
    "cosine_schedule",
    "count_flops",
    "count_params",
    "create_model",
    "evaluate",
    "find_channel_groups",
    "flops_breakdown",
    "list_models",
    "load_budget",
    "load_checkpoint",
    "load_dataset",
    "make_loader",
    "make_sgd",
    "model_from_checkpoint",
    "register_model",
    "save_checkpoint",
    "split_indices",
    "train_one_epoch",
    "train_val_split",
]
