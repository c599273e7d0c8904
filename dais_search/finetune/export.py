"""Export: the deployable bundle of a folded model.

    OUT/model.ts      TorchScript (torch.jit.trace): plain torch.jit.load, no dais_search needed
    OUT/model.pt2     torch.export program, dynamic batch: torch.export.load(path).module()
    OUT/model.onnx    ONNX, opset ONNX_OPSET (18), dynamo exporter, dynamic batch (input "input", output
                      "output"): onnxruntime.InferenceSession(path). Needs the export extra
                      (pip install 'dais-search[export]': onnx, onnxscript, onnxruntime); without it
                      it is skipped with one warning and the rest is written
    OUT/model.pt      state dict + plan: ChannelPlan.from_dict(ckpt["plan"]).apply(create_model(name))
    OUT/plan.json     the plan;  OUT/budget.toml the budget file (when given);  OUT/metrics.json

With ``fold_bn`` the deployable formats (model.ts, model.pt2, model.onnx) hold the model with each
BatchNorm that follows a conv folded into it (:func:`~dais_search.finetune.fold_bn.fold_batchnorm`);
model.pt keeps the unfolded weights, which the plan rebuilds. metrics.json records ``fold_bn`` and
``export``: the opset, the formats written, whether the batch is dynamic, each format's largest
relative error against the model on a batch of 3, and why a format was skipped.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
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
from .fold_bn import fold_batchnorm

__all__ = ["ONNX_OPSET", "export"]

log = logging.getLogger("dais_search")

ONNX_OPSET = 18
"""The ONNX opset of model.onnx (onnxruntime >= 1.14 runs it)."""

TOLERANCE = 1e-4
"""Largest relative error (max |difference| / max |output|) an exported format may show against the model."""

ONNX_HINT = "pip install 'dais-search[export]'"


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def _check(fmt: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    error = _rel_error(actual, expected)
    if not error <= TOLERANCE:  # NaN fails too
        raise RuntimeError(f"{fmt} differs from the model (relative error {error:.2e} on a batch of 3)")
    return error


def _torch_export(model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` with a dynamic batch (traced at batch 2: torch.export specialises a size of 1),
    or a static one where the model fixes its batch; returns the program and whether the batch is dynamic."""
    example = torch.zeros((2, *shape[1:]))
    try:
        batch = torch.export.Dim("batch", min=1)
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), True
    except Exception as exc:  # torch._dynamo.exc.UserError (constraint violated) and kin
        log.warning("export: model.pt2 / model.onnx get a fixed batch of %d: the batch does not export as "
                    "dynamic (%s)", shape[0], _first_line(exc))  # fmt: skip
        return torch.export.export(model, (torch.zeros(shape),)), False


def _onnx_bytes(program: torch.export.ExportedProgram) -> bytes:
    """The ONNX model of ``program`` (dynamo exporter, opset :data:`ONNX_OPSET`); ``ImportError``
    when onnx or onnxscript is missing."""
    import onnx  # noqa: F401  (the dynamo exporter needs both; fail early with a clear ImportError)
    import onnxscript  # noqa: F401

    # onnxscript and onnx_ir log every optimiser pass at INFO, which the CLI's logging would print.
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                                         input_names=["input"], output_names=["output"])  # fmt: skip
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return onnx_program.model_proto.SerializeToString()


def _onnx_check(data: bytes, x: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The relative error of the ONNX model under onnxruntime (None when onnxruntime is missing)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    return _check("model.onnx", torch.from_numpy(y), expected)


def export(folded: nn.Module, plan: ChannelPlan, metrics: dict[str, Any], out: str | Path,
           model_name: str, num_classes: int, normalize: str, budget_file: str | None = None,
           fold_bn: bool = False) -> Path:  # fmt: skip
    """Writes the deployable bundle: TorchScript, torch.export (.pt2), ONNX (opset :data:`ONNX_OPSET`),
    state dict + plan, plan.json, budget, metrics; every file atomically.

    ``model.ts`` loads with plain ``torch.jit.load``, ``model.pt2`` with ``torch.export.load(path).module()``
    and ``model.onnx`` with ``onnxruntime.InferenceSession(path)`` (no dais_search needed); the last two
    take any batch size. ``model.pt`` rebuilds with ``ChannelPlan.from_dict(ckpt["plan"]).apply(create_model(name))``
    and ``load_state_dict``. ``fold_bn`` folds the BatchNorms that follow convs into them in the first
    three (:func:`~dais_search.finetune.fold_bn.fold_batchnorm`; checked to 1e-4 relative error).

    model.pt2 and model.onnx are optional: when one cannot be produced (no onnx installed, an
    exporter error, outputs that differ from the model) a warning says why, the file is not written
    (an older one is removed) and ``metrics.json`` lists the formats that were.
    """
    check_finite_model(folded, "export")  # a NaN model is never shipped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folded = folded.eval()
    device = next(folded.parameters()).device
    # The checks run in float32 on the CPU, where the .pt2 / .onnx files are made: no TF32 / cuDNN
    # differences between the reference and what is checked against it.
    cpu = copy.deepcopy(folded).cpu().eval()
    x = torch.randn((3, *plan.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = cpu(x)
    info: dict[str, Any] = {"onnx_opset": ONNX_OPSET, "formats": [], "max_rel_error": {}, "skipped": {}}
    deploy = folded
    if fold_bn:
        cpu = fold_batchnorm(cpu).eval()
        with torch.no_grad():
            info["fold_bn_max_rel_error"] = _check("the BatchNorm-folded model", cpu(x), expected)
        deploy = copy.deepcopy(cpu).to(device)

    example = torch.zeros(plan.input_shape, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated; it is still the format plain torch.jit.load reads
        # with no Python source of the model, which is what a deployable bundle needs here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.trace(deploy, example)
        atomic_write(out / "model.ts", lambda f: torch.jit.save(scripted, f))
    info["formats"].append("model.ts")

    program = None  # torch.export and ONNX from the CPU copy: the files load on any machine
    try:
        program, info["dynamic_batch"] = _torch_export(cpu, tuple(plan.input_shape))
        with torch.no_grad():
            info["max_rel_error"]["model.pt2"] = _check("model.pt2", program.module()(x), expected)
        atomic_write(out / "model.pt2", lambda f: torch.export.save(program, f))
        info["formats"].append("model.pt2")
    except Exception as exc:
        _skip(out, "model.pt2", f"torch.export failed: {_first_line(exc)}", info)
    if program is None:
        _skip(out, "model.onnx", "needs model.pt2's torch.export program", info)
    else:
        try:
            data = _onnx_bytes(program)
            error = _onnx_check(data, x, expected)
            if error is not None:
                info["max_rel_error"]["model.onnx"] = error
            atomic_write(out / "model.onnx", lambda f: f.write(data))
            info["formats"].append("model.onnx")
        except ImportError as exc:
            _skip(out, "model.onnx", f"{exc.name or _first_line(exc)} is not installed; get it with {ONNX_HINT}", info)
        except Exception as exc:
            _skip(out, "model.onnx", f"ONNX export failed: {_first_line(exc)}", info)

    save_checkpoint(out / "model.pt", folded, model_name, num_classes, normalize=normalize, plan=plan.to_dict())
    info["formats"] += ["model.pt", "plan.json"]
    plan.save(out / "plan.json")
    if budget_file:
        shutil.copyfile(budget_file, out / "budget.toml")
    write_json(out / "metrics.json", {**metrics, "fold_bn": bool(fold_bn), "export": info,
                                      "versions": {**library_versions(), **_export_versions()}})  # fmt: skip
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _skip(out: Path, name: str, why: str, info: dict[str, Any]) -> None:
    """Records and warns (one line) that ``name`` was not written; removes an older one from ``out``."""
    (out / name).unlink(missing_ok=True)  # a stale file from an earlier export would not match this bundle
    info["skipped"][name] = why
    log.warning("export: %s skipped (%s); the rest of the bundle is written", name, why)


def _export_versions() -> dict[str, str]:
    """The installed versions of the export extra's packages (none of them when it is not installed)."""
    versions = {}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
