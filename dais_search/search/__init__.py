"""The DAIS + DSA search: which channels to keep under a FLOPs budget. Never imports fine-tuning.

    gates.py        ChannelGates (indicators alpha, keep ratios theta) and where they act (attach_gates,
                    reading_sites: where each group's channels are read, also where data criteria look)
    allocation.py   DSA's differentiable allocation: masks with an exact mean, implicit gradients
    schedules.py    temperature schedules, a registry (register_schedule)
    importance.py   channel criteria (weights or held-out data) shared with the baselines, a registry
    granularity.py  the widths a group may keep (whole blocks, min_keep, multiples of round_to)
    repair.py       a hard plan moved onto the budget by allowed steps
    searcher.py     Searcher: the bi-level steps, epochs, binarisation, state
    run.py          search(model, budget, train_loader, held_out_loader, example_input) -> SearchResult
    baselines.py    baselines without a search: uniform and global allocation by a criterion, EagleEye
"""

from .allocation import allocate, solve_threshold
from .baselines import baseline_plan, eagleeye_plan, global_plan, list_methods, parse_method, uniform_plan
from .gates import ChannelGates, attach_gates, reading_sites
from .granularity import Granularity, whole_units
from .importance import Probe, get_importance, list_importance, log_importance, register_importance, score_groups
from .repair import repair
from .run import SearchResult, search
from .schedules import get_schedule, list_schedules, register_schedule, temperature_at
from .searcher import Searcher

__all__ = [
    "ChannelGates",
    "Granularity",
    "Probe",
    "SearchResult",
    "Searcher",
    "allocate",
    "attach_gates",
    "baseline_plan",
    "eagleeye_plan",
    "get_importance",
    "get_schedule",
    "global_plan",
    "list_importance",
    "list_methods",
    "list_schedules",
    "log_importance",
    "parse_method",
    "reading_sites",
    "register_importance",
    "register_schedule",
    "repair",
    "score_groups",
    "search",
    "solve_threshold",
    "temperature_at",
    "uniform_plan",
    "whole_units",
]
