"""The DAIS + DSA search: which channels to keep under a FLOPs budget. Never imports fine-tuning.

    gates.py        ChannelGates (indicators alpha, keep ratios theta) and where they act (attach_gates)
    allocation.py   DSA's differentiable allocation: masks with an exact mean, implicit gradients
    schedules.py    temperature schedules, a registry (register_schedule)
    importance.py   channel criteria shared with the baselines, a registry (register_importance)
    repair.py       a hard plan moved onto the budget by whole units
    searcher.py     Searcher: the bi-level steps, epochs, binarisation, state
    run.py          search(model, budget, train_loader, held_out_loader, example_input) -> SearchResult
    baselines.py    fixed-ratio baselines (uniform by a criterion)
"""

from .allocation import allocate, solve_threshold
from .baselines import uniform_plan
from .gates import ChannelGates, attach_gates
from .importance import get_importance, list_importance, log_importance, register_importance
from .repair import repair, whole_units
from .run import SearchResult, search
from .schedules import get_schedule, list_schedules, register_schedule, temperature_at
from .searcher import Searcher

__all__ = [
    "ChannelGates",
    "SearchResult",
    "Searcher",
    "allocate",
    "attach_gates",
    "get_importance",
    "get_schedule",
    "list_importance",
    "list_schedules",
    "log_importance",
    "register_importance",
    "register_schedule",
    "repair",
    "search",
    "solve_threshold",
    "temperature_at",
    "uniform_plan",
    "whole_units",
]
