"""Distillation: SP-KD formula, layer matching by path, frozen teacher, loss parts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dais_search import create_model
from dais_search.channels import random_plan
from dais_search.finetune.distill import DistillTask, auto_layers, logit_kd_loss, resolve_layers, sp_loss


def test_sp_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 8, 3, 3, generator=g)  # channel counts differ
    fs, ft = s.reshape(6, -1).numpy().astype(np.float64), t.reshape(6, -1).numpy().astype(np.float64)
    gs, gt = fs @ fs.T, ft @ ft.T
    gs /= np.linalg.norm(gs, axis=1, keepdims=True)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    assert float(sp_loss(s, t)) == pytest.approx(((gs - gt) ** 2).sum() / 36, rel=1e-5)
    assert float(sp_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    assert float(sp_loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_logit_kd_is_zero_for_equal_logits_and_scaled_by_t_squared():
    logits = torch.randn(5, 10)
    assert float(logit_kd_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(5, 10)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits / 2, 1), torch.softmax(other / 2, 1), reduction="batchmean"
    )
    assert float(logit_kd_loss(logits, other, 2.0)) == pytest.approx(4 * float(kl), rel=1e-5)


def test_auto_layers_at_stages_or_blocks():
    resnet = create_model("resnet20")
    assert auto_layers(resnet) == ["layer1", "layer2", "layer3"]
    assert auto_layers(resnet, "blocks") == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert auto_layers(create_model("vgg16"), "blocks") == auto_layers(create_model("vgg16")) == ["features"]
    assert auto_layers(create_model("mobilenetv2"), "blocks")[:2] == ["features.0", "features.1"]
    assert resolve_layers(resnet, " layer1.0, fc") == ["layer1.0", "fc"]
    with pytest.raises(ValueError, match="no stages"):
        resolve_layers(torch.nn.Conv2d(3, 3, 1), "stages")
    with pytest.raises(ValueError, match="'stages' or 'blocks'"):
        auto_layers(resnet, "stage")


def test_distill_task_on_a_pruned_student():
    torch.manual_seed(0)
    teacher = create_model("resnet20")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = random_plan(teacher, (1, 3, 32, 32), keep=0.5, seed=0).apply(teacher)
    task = DistillTask(student, teacher, sp_weight=3000.0, logit_weight=1.0)
    task.train()
    assert not task.teacher[0].training and task.student.training
    out = task(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert set(out) == {"loss", "output", "task_loss", "kd_loss"}
    assert float(out["kd_loss"]) > 0
    torch.testing.assert_close(out["loss"], out["task_loss"] + out["kd_loss"])
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not any(k.startswith("teacher") for k in task.state_dict())
    # Without distillation the loss is the task loss alone.
    plain = DistillTask(student, teacher, sp_weight=0.0, logit_weight=0.0)(
        torch.randn(4, 3, 32, 32), torch.zeros(4).long()
    )
    assert float(plain["kd_loss"]) == 0.0
    task.remove_hooks()
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    with pytest.raises(ValueError, match="not found in both"):
        DistillTask(student, teacher, layers=["layer9.0"])


def test_sp_term_is_the_mean_over_matched_layers():
    """The weight means the same whatever the depth: weight x mean of the per-layer SP losses."""
    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = random_plan(teacher, (1, 3, 32, 32), keep=0.5, seed=1).apply(teacher).eval()
    layers = ["layer1", "layer2.1", "layer3"]
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    with torch.no_grad():
        feats = {}
        for side, model in (("s", student), ("t", teacher)):
            captured = {}
            handles = [model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n, captured=captured: captured.__setitem__(n, o)) for n in layers]  # fmt: skip
            model(x)
            for h in handles:
                h.remove()
            feats[side] = captured
        per_layer = [float(sp_loss(feats["s"][n], feats["t"][n])) for n in layers]
        task = DistillTask(student, teacher, layers=layers, sp_weight=100.0)
        task.eval()
        out = task(x, y)
    assert min(per_layer) > 0 and max(per_layer) > 1.5 * min(per_layer)  # the layers differ: mean != any one
    assert float(out["kd_loss"]) == pytest.approx(100.0 * sum(per_layer) / 3, rel=1e-5)
    assert float(out["kd_loss"]) != pytest.approx(100.0 * sum(per_layer), rel=1e-2)  # not the sum
