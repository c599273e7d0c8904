"""dais_search: budgeted, differentiable channel pruning for PyTorch CNNs.

The pipeline, one subpackage a stage (data flows top to bottom)::

    budget.py    Budget: the FLOPs target and the search / fine-tune settings (TOML file or Python)
    channels/    channel groups from an fx trace; ChannelPlan (slice, mask, replay); FlopsModel
    search/      DAIS indicators + DSA keep ratios, bi-level, repaired onto the budget -> a plan
    finetune/    LOP expansion + distillation from the dense teacher, folded back exactly; export

under them ``cost/`` (exact FLOPs, params, latency), ``train.py`` (the one training loop),
``data/``, ``models/`` and ``checkpoint.py``; over them ``pipeline/`` (stages from budget files,
resumable) and ``cli.py``.

Example:
    >>> import dais_search as ds
    >>> model = ds.create_model("resnet56")
    >>> ds.count_flops(model, (1, 3, 32, 32)), ds.count_params(model)
    (250971392, 853018)
"""

from ._version import __version__
from .budget import (
    BaselineSpec,
    Budget,
    BudgetSpec,
    DataSpec,
    FinetuneSpec,
    ModelSpec,
    MonitorSpec,
    SearchSpec,
    load_budget,
)
from .channels import ChannelGroup, ChannelPlan, FlopsModel, find_channel_groups
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .cost import count_flops, count_params, flops_breakdown
from .data import BatchLoader, load_dataset, make_loader, split_indices, train_val_split
from .errors import UserError
from .finetune import DistillTask, FinetuneConfig, FinetuneResult, expand, export, finetune, fold
from .models import create_model, list_models, register_model
from .search import Searcher, SearchResult, baseline_plan, register_importance, search
from .train import cosine_schedule, evaluate, make_sgd, train_one_epoch

__all__ = [
    "BaselineSpec",
    "BatchLoader",
    "Budget",
    "BudgetSpec",
    "ChannelGroup",
    "ChannelPlan",
    "DataSpec",
    "DistillTask",
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneSpec",
    "FlopsModel",
    "ModelSpec",
    "MonitorSpec",
    "SearchResult",
    "SearchSpec",
    "Searcher",
    "UserError",
    "__version__",
    "baseline_plan",
    "cosine_schedule",
    "count_flops",
    "count_params",
    "create_model",
    "evaluate",
    "expand",
    "export",
    "find_channel_groups",
    "finetune",
    "flops_breakdown",
    "fold",
    "list_models",
    "load_budget",
    "load_checkpoint",
    "load_dataset",
    "make_loader",
    "make_sgd",
    "model_from_checkpoint",
    "register_importance",
    "register_model",
    "save_checkpoint",
    "search",
    "split_indices",
    "train_one_epoch",
    "train_val_split",
]
