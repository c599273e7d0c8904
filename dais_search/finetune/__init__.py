"""Fine-tuning the pruned network: LOP (expand, fold), distillation, the loop, export. Never imports the search.

    overparam/   expand(model, r): every conv/linear a linear chain with an exact init; fold(model) back
    distill.py   SP-KD and logit KD from a frozen teacher (DistillTask)
    loop.py      finetune(pruned, teacher, loader, config) -> FinetuneResult (folded model, metrics)
    fold_bn.py   fold_batchnorm(model): each eval-mode BatchNorm2d after a Conv2d folded into it (deployment)
    export.py    the deployable bundle: TorchScript, torch.export (.pt2), ONNX, state dict + plan, plan.json,
                 metrics.json
"""

from .distill import DistillTask, auto_layers, logit_kd_loss, resolve_layers, sp_loss
from .export import ONNX_OPSET, export
from .fold_bn import fold_batchnorm
from .loop import FinetuneConfig, FinetuneResult, distill_layers, finetune
from .overparam import ExpandedConv2d, ExpandedLinear, Foldable, expand, fold

__all__ = [
    "DistillTask",
    "ExpandedConv2d",
    "ExpandedLinear",
    "FinetuneConfig",
    "FinetuneResult",
    "Foldable",
    "ONNX_OPSET",
    "auto_layers",
    "distill_layers",
    "expand",
    "export",
    "finetune",
    "fold",
    "fold_batchnorm",
    "logit_kd_loss",
    "resolve_layers",
    "sp_loss",
]
