"""Export: the deployable bundle of a folded model.

    OUT/model.ts      TorchScript: loads with plain torch.jit.load, no dais_search needed
    OUT/model.pt      state dict + plan: ChannelPlan.from_dict(ckpt["plan"]).apply(create_model(name))
    OUT/plan.json     the plan;  OUT/budget.toml the budget file (when given);  OUT/metrics.json
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..channels import ChannelPlan
from ..checkpoint import save_checkpoint
from ..files import atomic_write, write_json
from ..report import library_versions
from ..train import check_finite_model

__all__ = ["export"]


def export(folded: nn.Module, plan: ChannelPlan, metrics: dict[str, Any], out: str | Path,
           model_name: str, num_classes: int, normalize: str, budget_file: str | None = None) -> Path:  # fmt: skip
    """Writes the deployable bundle: TorchScript, state dict + plan, plan.json, budget, metrics.

    ``model.ts`` loads with plain ``torch.jit.load`` (no dais_search needed); ``model.pt``
    rebuilds with ``ChannelPlan.from_dict(ckpt["plan"]).apply(create_model(name))`` and
    ``load_state_dict``.
    """
    check_finite_model(folded, "export")  # a NaN model is never shipped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folded = folded.eval()
    example = torch.zeros(plan.input_shape, device=next(folded.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated; it is still the format plain torch.jit.load reads
        # with no Python source of the model, which is what a deployable bundle needs here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.trace(folded, example)
        atomic_write(out / "model.ts", lambda f: torch.jit.save(scripted, f))
    save_checkpoint(out / "model.pt", folded, model_name, num_classes, normalize=normalize, plan=plan.to_dict())
    plan.save(out / "plan.json")
    if budget_file:
        shutil.copyfile(budget_file, out / "budget.toml")
    write_json(out / "metrics.json", {**metrics, "versions": library_versions()})
    return out
