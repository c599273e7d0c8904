"""Distillation from the frozen dense teacher: similarity-preserving KD (SP-KD) and logit KD.

SP-KD (Tung & Mori, ICCV 2019; RepDistiller's ``SP.py``): for a batch of b examples and matched
feature maps, ``G = row_normalise(F F^T)`` with ``F`` the (b, -1) flattened map, and
``L = ||G_s - G_t||_F^2 / b^2``. It compares b x b similarity matrices, so the student's maps may
have fewer channels than the teacher's: it suits a pruned student and its dense teacher.
Layers are matched by module path, which pruning keeps: by default at the end of each stage
(the SP paper's placement), optionally at every block output or at named paths. The SP term is
the **mean** over the matched layers, so one weight means the same however many layers are
matched: a sum would multiply the distillation pressure by their number (ResNet-56 uniformly
L1-pruned to 30% FLOPs from the shared teacher, one training batch: the 27 block terms at weight
3000 sum to 14.0 against a cross-entropy of 1.7, their mean is 0.52; the 3 stage terms are
0.03, 0.24 and 4.18).

Example:
    >>> task = DistillTask(student, teacher, layers="stages", sp_weight=3000.0)
    >>> out = task(x, y)
    >>> out["loss"].backward()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..train import classification_loss

__all__ = ["DistillTask", "auto_layers", "logit_kd_loss", "resolve_layers", "sp_loss"]


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss between two feature maps of the same batch."""
    b = student.shape[0]
    g_s = F.normalize(student.reshape(b, -1) @ student.reshape(b, -1).t(), dim=1)
    g_t = F.normalize(teacher.reshape(b, -1) @ teacher.reshape(b, -1).t(), dim=1)
    return (g_s - g_t).pow(2).sum() / (b * b)


def logit_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, batch mean (the T^2 keeps
    gradient sizes comparable across temperatures)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True) * t * t  # fmt: skip


def auto_layers(model: nn.Module, level: str = "stages") -> list[str]:
    """Module paths to distil at, found from the model's top-level ``nn.Sequential`` children.

    ``"stages"``: the outputs of those children (ResNet's ``layer1..3``, VGG's or MobileNetV2's
    ``features``), the SP paper's placement at the end of each stage. ``"blocks"``: the outputs of
    their composite children (every residual block); a stage of plain layers is matched at its own
    output. On ResNet-56 pruned to 30% FLOPs, block-level SP-KD makes a fine-tune step 2.29 x a
    vanilla one (27 b x b Gram matrices each for student and teacher;
    ``benchmarks/bench_finetune_cost.py --kd-layers blocks``), stage-level SP-KD an epoch 1.41 x
    (``benchmarks/finetune_ablation.py``), the teacher's forward pass included in both.
    """
    if level not in ("stages", "blocks"):
        raise ValueError(f"distillation level must be 'stages' or 'blocks', got {level!r}")
    names = []
    for name, child in model.named_children():
        if not isinstance(child, nn.Sequential):
            continue
        blocks = [f"{name}.{n}" for n, c in child.named_children() if any(True for _ in c.children())]
        names += blocks if level == "blocks" and blocks else [name]
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str] | str) -> list[str]:
    """``"stages"``, ``"blocks"`` (:func:`auto_layers`), a comma-separated string or a list of paths."""
    if isinstance(layers, str):
        if layers in ("stages", "blocks"):
            found = auto_layers(model, layers)
            if not found:
                raise ValueError(f"SP-KD found no {layers} in {type(model).__name__} (it looks for top-level "
                                 "nn.Sequential children); name the layers to match, e.g. kd_layers = "
                                 "'layer1,layer2', or use kd = 'logit'")  # fmt: skip
            return found
        layers = [p.strip() for p in layers.split(",") if p.strip()]
    if not layers:
        raise ValueError("SP-KD needs at least one layer to match")
    return list(layers)


class DistillTask(nn.Module):
    """Student loss = cross-entropy + ``sp_weight`` x mean SP-KD over the matched layers + ``logit_weight`` x logit KD.

    The teacher is kept in eval mode with no gradients whatever mode the task is put in.

    Args:
        student: the model being fine-tuned (e.g. the expanded pruned model).
        teacher: the dense model.
        layers: ``"stages"`` (default) or ``"blocks"`` (:func:`auto_layers` of the teacher), or module
            paths present in both (a list or a comma-separated string).
        sp_weight: weight of the SP-KD term, a mean over ``layers`` (3000, RepDistiller's weight of its
            one layer); 0 turns it off.
        logit_weight: weight of logit KD; 0 turns it off.
        temperature: logit KD temperature.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layers: Sequence[str] | str = "stages",
        sp_weight: float = 3000.0,
        logit_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not in state_dict
        self.sp_weight, self.logit_weight, self.temperature = sp_weight, logit_weight, temperature
        self.layers = resolve_layers(teacher, layers) if sp_weight else []
        student_names = dict(student.named_modules())
        teacher_names = dict(teacher.named_modules())
        missing = [n for n in self.layers if n not in student_names or n not in teacher_names]
        if missing:
            raise ValueError(f"distillation layers not found in both models: {', '.join(missing[:5])}")
        self._features: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
        self._handles = [
            names[name].register_forward_hook(self._hook(side, name))
            for side, names in (("s", student_names), ("t", teacher_names))
            for name in self.layers
        ]

    def remove_hooks(self) -> None:
        """Detaches the feature hooks from both models (call when done distilling)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, side: str, name: str):
        def store(module, inputs, output):
            self._features[side][name] = output

        return store

    def train(self, mode: bool = True) -> DistillTask:
        self.student.train(mode)
        self.teacher[0].eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        task_loss, output = classification_loss(self.student(x), y)  # auxiliary heads add their CE
        kd_loss = output.new_zeros(())
        if self.sp_weight or self.logit_weight:
            with torch.no_grad():
                teacher_out = self.teacher[0](x)
            if self.sp_weight:
                sp = sum(sp_loss(self._features["s"][n], self._features["t"][n]) for n in self.layers)
                kd_loss = kd_loss + self.sp_weight * sp / len(self.layers)
            if self.logit_weight:
                kd_loss = kd_loss + self.logit_weight * logit_kd_loss(output, teacher_out, self.temperature)
        return {"loss": task_loss + kd_loss, "output": output, "task_loss": task_loss, "kd_loss": kd_loss}
