"""Export formats: model.pt2 and model.onnx load and match in a process that never imports dais_search
(batch 1 and 3, from a batch-1 example), BatchNorm folding is exact, a missing onnx skips model.onnx."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dais_search import create_model, save_checkpoint
from dais_search.channels import random_plan, randomize_norms
from dais_search.cli import finetune_parser, main, run_parser
from dais_search.finetune import export, fold_batchnorm
from dais_search.finetune.export import ONNX_OPSET
from dais_search.finetune.fold_bn import foldable_pairs
from dais_search.pipeline import finetune_stage

SHAPE = (1, 3, 16, 16)  # resnet8 is fully convolutional with a global pool: tiny images are enough


def rel_error(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def base():
    """A pruned resnet8 with non-trivial BN statistics (a fresh BN is the identity and would fold trivially)."""
    torch.manual_seed(0)
    dense = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, SHAPE, keep=0.5, seed=0)
    return randomize_norms(plan.apply(dense), torch.zeros(SHAPE)), plan


@pytest.fixture
def pruned(base):
    """A fresh copy of ``base``'s model, and its plan."""
    return copy.deepcopy(base[0]), base[1]


# Runs with a bare environment: no PYTHONPATH, cwd a temporary folder, so the repository is not importable
# from it, and asserts that nothing imported dais_search.
LOADER = """
import sys, numpy as np, torch
folder = sys.argv[1]
program = torch.export.load(folder + "/model.pt2").module()
try:
    import onnxruntime
    session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
except ImportError:
    session = None
for batch in (1, 3):
    x = np.load(f"{folder}/x{batch}.npy")
    with torch.no_grad():
        np.save(f"{folder}/pt2_{batch}.npy", program(torch.from_numpy(x)).numpy())
    if session is not None:
        np.save(f"{folder}/onnx_{batch}.npy", session.run(None, {"input": x})[0])
assert not any(k.startswith("dais_search") for k in sys.modules), "the loader imported dais_search"
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, base):
    """The pruned resnet8 exported with BatchNorm folding, its artifacts run in a fresh process."""
    out = tmp_path_factory.mktemp("bundle")
    model, plan = copy.deepcopy(base[0]), base[1]
    export(model, plan, {"note": "test"}, out, "resnet8", 10, "cifar10", fold_bn=True)
    inputs = {b: torch.randn((b, *SHAPE[1:]), generator=torch.Generator().manual_seed(b)) for b in (1, 3)}
    for b, x in inputs.items():
        np.save(out / f"x{b}.npy", x.numpy())
    subprocess.run([sys.executable, "-c", LOADER, str(out)], check=True, cwd=out, env={"PATH": "/usr/bin:/bin"})
    with torch.no_grad():
        expected = {b: model(x) for b, x in inputs.items()}
    return out, model, inputs, expected


def test_metrics_record_the_formats_the_opset_and_fold_bn(bundle):
    out, *_ = bundle
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["note"] == "test" and metrics["fold_bn"] is True
    info = metrics["export"]
    assert info["onnx_opset"] == ONNX_OPSET == 18 and info["dynamic_batch"] is True
    assert info["fold_bn_max_rel_error"] <= 1e-5 and info["max_rel_error"]["model.pt2"] <= 1e-5
    for name in info["formats"]:
        assert (out / name).is_file(), name
    assert {"model.ts", "model.pt2", "model.pt", "plan.json"} <= set(info["formats"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]  # no half-written files


@pytest.mark.parametrize("batch", [1, 3])
def test_pt2_matches_the_model_without_dais_search(bundle, batch):
    out, _, _, expected = bundle
    assert rel_error(np.load(out / f"pt2_{batch}.npy"), expected[batch]) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_the_model_without_dais_search(bundle, batch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out, _, _, expected = bundle
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert "model.onnx" in json.loads((out / "metrics.json").read_text())["export"]["formats"]
    assert rel_error(np.load(out / f"onnx_{batch}.npy"), expected[batch]) <= 1e-5


def test_a_perturbed_weight_fails_the_comparison(bundle):
    """The control: the check above can fail. The first conv's weight x 1.01 after the export."""
    out, model, inputs, _ = bundle
    changed = fold_batchnorm(model)
    conv = next(m for m in changed.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight.mul_(1.01)
        actual = changed(inputs[3])
    assert rel_error(np.load(out / "pt2_3.npy"), actual) > 1e-3


def test_missing_onnx_skips_model_onnx_with_one_clear_line(tmp_path, monkeypatch, caplog, pruned):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    (tmp_path / "model.onnx").write_bytes(b"stale")  # from an earlier export: removed, it would not match
    model, plan = pruned
    with caplog.at_level(logging.WARNING, logger="dais_search"):
        export(model, plan, {}, tmp_path, "resnet8", 10, "cifar10")
    lines = [r.getMessage() for r in caplog.records if "model.onnx" in r.getMessage()]
    assert len(lines) == 1 and "skipped" in lines[0] and "pip install 'dais-search[export]'" in lines[0]
    assert "\n" not in lines[0]
    assert not (tmp_path / "model.onnx").exists()
    for name in ("model.ts", "model.pt2", "model.pt", "plan.json", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fold_bn"] is False and "model.onnx" not in metrics["export"]["formats"]
    assert "not installed" in metrics["export"]["skipped"]["model.onnx"]


def test_an_onnx_exporter_error_leaves_the_rest_of_the_bundle(tmp_path, monkeypatch, caplog, pruned):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded\nwith a traceback")

    monkeypatch.setattr(torch.onnx, "export", broken)
    model, plan = pruned
    with caplog.at_level(logging.WARNING, logger="dais_search"):
        export(model, plan, {}, tmp_path, "resnet8", 10, "cifar10")
    assert any("model.onnx skipped" in r.getMessage() and "exporter exploded" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "model.onnx").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["export"]["formats"] == ["model.ts", "model.pt2", "model.pt", "plan.json"]


# ----------------------------------------------------------------------------------------------
# BatchNorm folding


def test_fold_bn_resnet_is_exact_and_leaves_no_batchnorm(pruned):
    model, _ = pruned
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(foldable_pairs(model)) == n_bn > 0  # every BN of a ResNet follows its conv
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # the input is not changed
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) <= 1e-5


def test_fold_bn_mobilenetv2_with_depthwise_convs_is_exact():
    torch.manual_seed(0)
    model = randomize_norms(create_model("mobilenetv2", width_mult=0.5), torch.zeros(1, *SHAPE[1:]))
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    folded_convs = {conv for conv, _ in foldable_pairs(model)}
    assert depthwise and set(depthwise) <= folded_convs
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) <= 1e-5  # float32 rounding over 52 folded layers: ~2e-6
        # In float64 the fold is exact to rounding: the float32 difference is rounding, not the algebra.
        assert rel_error(fold_batchnorm(model.double())(x.double()), model(x.double())) <= 1e-12


def test_fold_bn_refuses_a_batchnorm_in_training_mode(pruned):
    model, _ = pruned
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(model)


def test_fold_bn_control_a_perturbed_running_var_breaks_equality(pruned):
    model, _ = pruned
    folded = fold_batchnorm(model)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var.mul_(1.5)  # the folded copy keeps the old statistics
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) > 1e-3


class _Odd(nn.Module):
    """BNs that must stay: after a ReLU, on a conv output read twice, on a conv called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn_after_relu = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn_shared_input = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv3, self.bn_twice_called_conv = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv4, self.bn_ok = nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn_after_relu(torch.relu(self.conv1(x)))
        y = self.conv2(x)
        x = self.bn_shared_input(y) + y
        x = self.bn_twice_called_conv(self.conv3(x)) + self.conv3(x)
        return self.bn_ok(self.conv4(x))


def test_fold_bn_leaves_batchnorms_without_a_sole_conv_input():
    model = randomize_norms(_Odd(), torch.zeros(1, 3, 8, 8))
    assert foldable_pairs(model) == [("conv4", "bn_ok")]
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn_ok, nn.Identity)
    assert all(isinstance(getattr(folded, n), nn.BatchNorm2d) for n in
               ("bn_after_relu", "bn_shared_input", "bn_twice_called_conv"))  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) <= 1e-5


def test_fold_bn_flag_on_the_exporting_commands():
    for parser, argv in ((finetune_parser(), ["--plan", "p", "--checkpoint", "c", "--out", "o", "--data", "shapes"]),
                         (run_parser(), ["budget.toml"])):  # fmt: skip
        assert parser.parse_args(argv).fold_bn is False
        assert parser.parse_args([*argv, "--fold-bn"]).fold_bn is True


def test_finetune_fold_bn_reaches_the_export(tmp_path, monkeypatch):
    """dais-search finetune --fold-bn: one fine-tune step, the export gets fold_bn=True (recorded, not run)."""
    calls = []
    monkeypatch.setattr(finetune_stage, "export", lambda *args, **kwargs: calls.append(args[7:]))
    dense = create_model("resnet8")
    save_checkpoint(tmp_path / "dense.pt", dense, "resnet8", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(dense, SHAPE, keep=0.5, seed=0)
    plan.meta.update(model="resnet8", num_classes=10)
    plan.save(tmp_path / "plan.json")
    argv = ["finetune", "--plan", str(tmp_path / "plan.json"), "--checkpoint", str(tmp_path / "dense.pt"),
            "--data", "shapes:40", "--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--overparam", "0",
            "--kd", "none", "--out", str(tmp_path / "b"), "--no-progress", "--fold-bn"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    assert calls == [(None, True)]  # budget_file, fold_bn
