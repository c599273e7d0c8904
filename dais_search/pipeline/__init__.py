"""The stages end to end, from budget files and data specs, resumable: what the command line runs.

    common.py           device, dense model from a checkpoint, early input checks
    search_stage.py     run_search: budget file -> OUT/plan.json, pruned.pt, metrics.json, tb/
    baseline_stage.py   run_baseline: the same outputs from a baseline method (uniform, global, EagleEye)
    finetune_stage.py   the student of a plan fine-tuned, folded and exported (finetune_plan)
    main_job.py         run_pipeline: search -> fine-tune -> fold -> export -> report
    train_job.py        run_train: dense training from a data spec (TrainJob)
    eval_job.py         run_eval: a checkpoint's accuracy on a split (EvalJob)
"""

from .baseline_stage import run_baseline
from .common import (
    check_budget_inputs,
    check_data_fits,
    load_dense,
    model_of_checkpoint,
    model_outputs,
    prepare_out,
    resolve_device,
)
from .eval_job import EvalJob, run_eval
from .finetune_stage import finetune_plan, student_of
from .main_job import run_pipeline
from .search_stage import run_search
from .train_job import TrainJob, run_train

__all__ = [
    "EvalJob",
    "TrainJob",
    "check_budget_inputs",
    "check_data_fits",
    "finetune_plan",
    "load_dense",
    "model_of_checkpoint",
    "model_outputs",
    "prepare_out",
    "resolve_device",
    "run_baseline",
    "run_eval",
    "run_pipeline",
    "run_search",
    "run_train",
    "student_of",
]
