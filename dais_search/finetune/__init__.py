"""Fine-tuning the pruned network: LOP (expand, fold), distillation, the loop, export. Never imports the search.

    overparam/   expand(model, r): every conv/linear a linear chain with an exact init; fold(model) back
    distill.py   SP-KD and logit KD from a frozen teacher (DistillTask)
    loop.py      finetune(pruned, teacher, loader, config) -> FinetuneResult (folded model, metrics)
    export.py    the deployable bundle: TorchScript, state dict + plan, plan.json, metrics.json
"""

from .distill import DistillTask, auto_layers, logit_kd_loss, resolve_layers, sp_loss
from .export import export
from .loop import FinetuneConfig, FinetuneResult, distill_layers, finetune
from .overparam import ExpandedConv2d, ExpandedLinear, Foldable, expand, fold

__all__ = [
    "DistillTask",
    "ExpandedConv2d",
    "ExpandedLinear",
    "FinetuneConfig",
    "FinetuneResult",
    "Foldable",
    "auto_layers",
    "distill_layers",
    "expand",
    "export",
    "finetune",
    "fold",
    "logit_kd_loss",
    "resolve_layers",
    "sp_loss",
]
