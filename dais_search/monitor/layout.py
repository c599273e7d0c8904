"""Which groups share a chart: stages of the network, and TensorBoard's custom-scalars layout."""

from __future__ import annotations

import re

__all__ = ["custom_scalars_layout", "stages"]

COST_LABELS = {"flops": "FLOPs", "latency": "latency"}
MAX_PER_CHART = 16  # more lines than this in one chart cannot be told apart


def stages(names: list[str], max_per_chart: int = MAX_PER_CHART) -> dict[str, list[str]]:
    """Groups by stage, in trace order: the first component of the module path (``layer2`` of
    ``layer2.3.conv1``; top-level layers are the ``stem``). A stage with more than
    ``max_per_chart`` groups is cut into consecutive charts, ``features (1/3)`` and so on."""
    by_stage: dict[str, list[str]] = {}
    for name in names:
        by_stage.setdefault(name.split(".")[0] if "." in name else "stem", []).append(name)
    out: dict[str, list[str]] = {}
    for stage, members in by_stage.items():
        parts = -(-len(members) // max_per_chart)
        if parts == 1:
            out[stage] = members
            continue
        size = -(-len(members) // parts)
        for k in range(parts):
            out[f"{stage} ({k + 1}/{parts})"] = members[k * size : (k + 1) * size]
    return out


def _exact(tag: str) -> str:
    return f"^{re.escape(tag)}$"


def custom_scalars_layout(names: list[str], cost_name: str = "flops", blocks: list[str] = ()) -> dict:
    """The CUSTOM SCALARS dashboard of a search: the budget terms and losses, then one chart per
    stage holding every group's soft keep ratio (and one of the searched blocks' and layers' indicators)."""
    search = {
        f"soft {COST_LABELS.get(cost_name, cost_name)} / target": ["Multiline", [_exact(f"search/{cost_name}_ratio")]],
        "losses (train: weight steps, held-out: gate steps)": [
            "Multiline", [_exact("search/task_loss"), _exact("search/val_loss")],
        ],
        "temperature": ["Multiline", [_exact("search/temperature")]],
        "multiplier": ["Multiline", [_exact("search/lambda"), _exact("search/lambda_params")]],
        "binarization gap": ["Multiline", [_exact("search/binarization_gap")]],
    }  # fmt: skip
    keep = {stage: ["Multiline", [_exact(f"keep/{n}") for n in members]] for stage, members in stages(names).items()}
    layout = {"search": search, "keep ratio per stage": keep}
    if blocks:
        layout["blocks and layers"] = {"indicators": ["Multiline", [_exact(f"block/{b}") for b in blocks]]}
    return layout
