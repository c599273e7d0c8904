"""``dais-search``: the command line. Each subcommand is a thin layer over library functions.

    dais-search flops --model resnet56
    dais-search latency runs/search/pruned.pt
    dais-search plot runs/demo/run
    dais-search eval  --model resnet20 --checkpoint resnet20.th --data npz:cifar10.npz
    dais-search train --model resnet20 --data shapes --epochs 3 --out runs/demo/model.pt

Problems a user can fix (:class:`~dais_search.errors.UserError`) print ``error: ...`` and exit 2,
before any long computation starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import distributed
from ._version import __version__
from .budget import load_budget, parse_override
from .channels import ChannelPlan
from .checkpoint import load_checkpoint, model_from_checkpoint
from .cost import count_flops, count_params, flops_breakdown
from .data import DEFAULT_NORMALIZE, NORMALIZATION, check_data_spec, load_dataset
from .errors import UserError
from .finetune import FinetuneConfig, distill_layers
from .models import create_model, describe, input_size, list_models
from .monitor import plot_run
from .pipeline import (
    EvalJob,
    TrainJob,
    check_data_fits,
    finetune_plan,
    model_of_checkpoint,
    model_outputs,
    prepare_out,
    resolve_device,
    run_baseline,
    run_eval,
    run_pipeline,
    run_search,
    run_train,
    student_of,
)
from .report import format_table, human
from .search import list_methods

__all__ = ["main"]

log = logging.getLogger("dais_search")


# ----------------------------------------------------------------------------------------------
# Shared options


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        default=None if required else "shapes",
        help="data set: cifar10, cifar100 (torchvision, under --data-dir), npz:PATH (arrays x_train, y_train, "
        "x_test, y_test; uint8 NHWC images), imagefolder:PATH (train/ and val/ class folders) or shapes[:N] "
        "(procedural, offline, N training images)" + ("" if required else " (default: shapes)"),
    )
    g.add_argument("--data-dir", default="data", help="root folder of torchvision data sets (default: data)")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR if it is missing")
    g.add_argument(
        "--normalize",
        choices=sorted(NORMALIZATION),
        default=None,
        help=f"input normalisation statistics (default: the checkpoint's, else {DEFAULT_NORMALIZE}; "
        "the shared CIFAR-10 teachers expect imagenet)",
    )
    g.add_argument("--batch-size", type=int, default=128, help="examples per batch (default: 128)")
    g.add_argument("--workers", type=int, default=2, help="loader processes for image folders (default: 2)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")


def _parse_size(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 3x32x32 (C x H x W), got {text!r}") from None
    return c, h, w


def _job(cls, args: argparse.Namespace):
    """A job dataclass (``TrainJob``, ``EvalJob``) from the options of the same names."""
    names = {f.name for f in dataclasses.fields(cls)} - {"progress"}
    return cls(**{k: v for k, v in vars(args).items() if k in names}, progress=not args.no_progress)


def _check_model_name(name: str) -> None:
    input_size(name)  # raises a UserError listing the known names


# ----------------------------------------------------------------------------------------------
# flops


def flops_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search flops",
        add_help=add_help,
        description="Count the FLOPs (2 x MACs of conv/linear, torch's FlopCounterMode) and parameters of a model.",
    )
    p.add_argument("--model", help="registry name (see --list) or tv:NAME for any torchvision classifier")
    p.add_argument("--checkpoint", help="count the model a checkpoint holds (its architecture is read from it)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: 10, 1000 for tv:)")
    p.add_argument(
        "--input-size", type=_parse_size, default=None, help="C x H x W, e.g. 3x32x32 (default: the model's own)"
    )
    p.add_argument("--batch", type=int, default=1, help="batch size of the counted forward pass (default: 1)")
    p.add_argument("--per-layer", action="store_true", help="also print a per-layer breakdown")
    p.add_argument(
        "--plan", help="a plan.json: report the model the plan prunes the dense model to, beside the dense one"
    )
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    return p


def cmd_flops(args: argparse.Namespace) -> int:
    if args.list:
        print(format_table([[n, describe(n)] for n in list_models()], ["model", "description"]))
        print("\nand every torchvision classification model as tv:NAME, e.g. tv:resnet50")
        return 0
    plan = ChannelPlan.load(args.plan) if args.plan else None
    name = args.model or (plan.meta.get("model") if plan else None)
    num_classes = args.num_classes or (plan.meta.get("num_classes") if plan else None)
    if args.checkpoint:
        model, name, carried = model_of_checkpoint(load_checkpoint(args.checkpoint), name, num_classes)
        if carried is not None and plan is None:  # a pruned checkpoint: report it beside its dense model
            classes = model_outputs(model, carried.input_shape[1:])
            plan, model = carried, create_model(name, num_classes=classes)
    elif name:
        _check_model_name(name)
        model = create_model(name, num_classes=num_classes or (1000 if name.startswith("tv:") else 10))
    else:
        raise UserError("flops needs --model NAME or --checkpoint PATH (see --list for the model names)")
    size = args.input_size or (plan.input_shape[1:] if plan else input_size(name))
    shape = (args.batch, *size)
    models = [("dense", model)] + ([("pruned", plan.apply(model))] if plan else [])
    if args.per_layer:
        rows = [[r.name, r.type, f"{r.flops:,}", f"{r.params:,}"] for r in flops_breakdown(models[-1][1], shape)]
        print(format_table(rows, ["layer", "type", "FLOPs", "params"]) + "\n")
    dense_flops = count_flops(model, shape)
    rows = []
    for label, m in models:
        flops, params = count_flops(m, shape), count_params(m)
        rows.append([label, f"{flops:,}", human(flops), f"{params:,}", human(params), f"{flops / dense_flops:.4f}"])
    print(f"model: {name}, input {'x'.join(map(str, shape))}" + (f", plan {args.plan}" if plan else ""))
    print(format_table(rows, ["", "FLOPs", "", "params", "", "FLOPs ratio"]))
    return 0


# ----------------------------------------------------------------------------------------------
# latency


def latency_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search latency",
        add_help=add_help,
        description="Measure forward latency, dense vs pruned: CPU always, the GPU when there is one; warm-up, "
        "then medians of interleaved runs (each round runs both models), and the median per-round ratio.",
    )
    p.add_argument("target", metavar="MODEL_OR_BUNDLE",
                   help="a registry model name (dense; with --plan also pruned), a pruned checkpoint (pruned.pt, "
                        "a bundle's model.pt), or a folder holding one (a bundle, a search's --out)")  # fmt: skip
    p.add_argument("--plan", help="with a model name: a plan.json to prune it by")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: 10, 1000 for tv:)")
    p.add_argument("--batch", default="1,128", help="comma-separated batch sizes (default: 1,128)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs of each model first (default: 5)")
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                   help="where to measure (default: all = CPU, and CUDA when available)")  # fmt: skip
    p.add_argument("--channels-last", action="store_true",
                   help="time both models and the input in the channels-last memory format (often faster for "
                        "convolutions on CPU and GPU; the ratio can differ from the default format's)")  # fmt: skip
    return p


def _latency_models(args: argparse.Namespace):
    """(name, input shape, {label: model}) of the latency target: dense, and pruned where there is one."""
    path = Path(args.target)
    if path.is_dir():
        found = [path / f for f in ("model.pt", "pruned.pt") if (path / f).is_file()]
        if not found:
            raise UserError(f"{path} holds no model.pt (a bundle) or pruned.pt (a search's output); give a file or "
                            "a model name")  # fmt: skip
        path = found[0]
    if path.is_file():
        if args.plan:
            raise UserError("--plan goes with a model name; a checkpoint carries its own plan")
        model, name, plan = model_of_checkpoint(load_checkpoint(path), None, args.num_classes, str(path))
        if plan is None:
            return name, input_size(name), {"dense": model}
        dense = create_model(name, num_classes=model_outputs(model, plan.input_shape[1:]))
        return name, plan.input_shape[1:], {"dense": dense, "pruned": model}
    if os.sep in args.target or args.target.endswith((".pt", ".pth", ".th")):
        raise UserError(f"{args.target}: no such file or folder")
    _check_model_name(args.target)
    dense = create_model(args.target, num_classes=args.num_classes or (1000 if args.target.startswith("tv:") else 10))
    if not args.plan:
        return args.target, input_size(args.target), {"dense": dense}
    plan = ChannelPlan.load(args.plan)
    return args.target, plan.input_shape[1:], {"dense": dense, "pruned": plan.apply(dense)}


def cmd_latency(args: argparse.Namespace) -> int:
    import statistics

    import torch

    from .cost import interleaved_latency, median_ratio

    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or args.repeats < 1 or args.warmup < 0:
        raise UserError(f"--batch {args.batch!r}, --repeats {args.repeats}, --warmup {args.warmup}: give positive "
                        "batch sizes separated by commas (e.g. 1,128), --repeats >= 1 and --warmup >= 0")  # fmt: skip
    name, size, models = _latency_models(args)
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows = []
    for device in devices:
        on = {k: m.to(device, memory_format=fmt).eval() for k, m in models.items()}
        for batch in batches:
            x = torch.randn(batch, *size, device=device).contiguous(memory_format=fmt)
            times = interleaved_latency(on, x, args.repeats, args.warmup)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            row = [device, batch, f"{ms['dense']:.2f}"]
            if "pruned" in on:
                row += [f"{ms['pruned']:.2f}", f"{median_ratio(times, 'pruned', 'dense'):.3f}"]
            rows.append(row)
    head = ["device", "batch", "dense ms"] + (["pruned ms", "pruned / dense"] if "pruned" in models else [])
    threads = torch.get_num_threads()
    print(f"model: {name}, input {'x'.join(map(str, size))}; {args.repeats} interleaved rounds after {args.warmup} "
          f"warm-up runs, medians; CPU threads {threads}{'; channels-last' if args.channels_last else ''}")  # fmt: skip
    print(format_table(rows, head))
    return 0


# ----------------------------------------------------------------------------------------------
# eval


def eval_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search eval",
        add_help=add_help,
        description="Evaluate a checkpoint: top-1/top-5 accuracy and loss on a data set's test split.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (ours, or a foreign state dict)")
    p.add_argument("--model", help="architecture (default: the one recorded in the checkpoint)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: from the checkpoint)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="split to evaluate (default: test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    _add_data_args(p)
    _add_run_args(p)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    run_eval(_job(EvalJob, args))
    return 0


# ----------------------------------------------------------------------------------------------
# train


def train_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search train",
        add_help=add_help,
        description="Train a model with SGD (Nesterov) and a per-step cosine schedule; write an atomic checkpoint "
        "after every epoch and print accuracy, FLOPs and params at the end.",
    )
    p.add_argument("--model", required=True, help="registry name (dais-search flops --list) or tv:NAME")
    p.add_argument("--out", required=True, help="checkpoint path to write (e.g. runs/demo/model.pt)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training data (default: 10)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate, decayed to 0 by cosine (default: 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay of conv/linear weights (5e-4)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up (default: 0)")
    p.add_argument(
        "--held-out",
        type=int,
        default=0,
        help="hold out this many training images (seeded split) and report accuracy on them after every epoch "
        "(default: 0; the search uses 5000)",
    )
    p.add_argument("--init", help="start from the weights of this checkpoint (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is at --out")
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many batches")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, split, shuffling, augmentation")
    _add_data_args(p, required=False)
    _add_run_args(p)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    run_train(_job(TrainJob, args))
    return 0


# ----------------------------------------------------------------------------------------------
# search


def search_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search search",
        add_help=add_help,
        description="Search which channels to keep under the FLOPs budget of a budget file (DAIS indicators + DSA "
        "keep ratios, bi-level), binarise onto the budget, and write OUT/plan.json and the pruned model.",
    )
    p.add_argument("budget", help="budget file (TOML), e.g. budgets/resnet56_cifar10_keep50.toml")
    p.add_argument("--out", help="output folder (default: runs/<budget file name>)")
    p.add_argument("--resume", action="store_true", help="continue the search whose state is in --out")
    p.add_argument("--epochs", type=int, help="override search.epochs")
    p.add_argument("--checkpoint", help="override model.checkpoint (the dense weights to prune)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any budget field, e.g. --set search.mode=dais --set data.batch_size=64 (repeatable)",
    )
    _add_run_args(p)
    return p


def _budget_job(args: argparse.Namespace, job) -> int:
    """Loads the budget with the command line's overrides and runs ``job`` (search, baseline or the main job)."""
    overrides = dict(parse_override(text) for text in args.set)
    if args.epochs is not None:
        overrides["search.epochs"] = args.epochs
    if args.checkpoint is not None:
        overrides["model.checkpoint"] = args.checkpoint
    budget = load_budget(args.budget, overrides)
    out = args.out or os.path.join("runs", Path(args.budget).stem)
    job(budget, args.budget, out, args.resume, str(resolve_device(args.device)), not args.no_progress, overrides)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    return _budget_job(args, run_search)


# ----------------------------------------------------------------------------------------------
# run


def run_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = search_parser(add_help=False)
    parser = argparse.ArgumentParser(
        "dais-search run",
        add_help=add_help,
        parents=[p],
        description="The main job: search -> prune -> over-parameterised fine-tune with distillation -> fold -> "
        "export, resumable per stage (--resume); prints dense vs pruned accuracy, FLOPs, params and CPU latency. "
        "Fine-tune settings come from the budget's [finetune] table (--set finetune.overparam=2 ...).",
    )
    parser.add_argument("--method", default="dais", help="dais (the search; default) or a baseline method such as "
                        "l1-uniform, fpgm-global or eagleeye (all of them: dais-search baseline --help)")  # fmt: skip
    parser.add_argument("--random-teacher", action="store_true",
                        help="run without model.checkpoint: prune and distil from the random initialisation "
                        "(smoke tests only; refused otherwise)")  # fmt: skip
    _add_fold_bn_arg(parser)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    return _budget_job(args, functools.partial(run_pipeline, method=args.method, random_teacher=args.random_teacher,
                                               fold_bn=args.fold_bn))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# baseline


def _method_help() -> str:
    return ("how to choose the plan: <criterion>-uniform (one keep fraction for every group), <criterion>-global "
            "(scores normalised per group, one threshold) or eagleeye (random ratios, adaptive-BN selection); "
            f"one of: {', '.join(list_methods())}")  # fmt: skip


def baseline_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = search_parser(add_help=False)
    parser = argparse.ArgumentParser(
        "dais-search baseline",
        add_help=add_help,
        parents=[p],
        description="A plan without a search, under the same budget file: uniform or global allocation by an "
        "importance criterion, or EagleEye. Writes what search writes (OUT/plan.json, pruned.pt, metrics.json) "
        "for dais-search finetune; dais-search run --method takes it through fine-tune, fold and export.",
    )
    parser.add_argument("--method", required=True, help=_method_help())
    return parser


def cmd_baseline(args: argparse.Namespace) -> int:
    return _budget_job(args, functools.partial(run_baseline, method=args.method))


# ----------------------------------------------------------------------------------------------
# finetune


def _add_fold_bn_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fold-bn", action="store_true",
                   help="fold each BatchNorm that follows a conv into it in the exported model.ts, model.pt2 and "
                   "model.onnx (model.pt keeps the unfolded weights the plan rebuilds)")  # fmt: skip


def finetune_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search finetune",
        add_help=add_help,
        description="Fine-tune the model a plan prunes to (BENCH.md schedule), with linear over-parameterisation "
        "and distillation from the dense teacher; fold, check, and export TorchScript, torch.export (.pt2), ONNX, "
        "state dict + plan.",
    )
    p.add_argument("--plan", required=True, help="plan.json from dais-search search")
    p.add_argument("--checkpoint", required=True, help="the dense model's weights (the teacher)")
    p.add_argument("--student", help="pruned weights to start from (default: pruned.pt beside the plan, if any)")
    p.add_argument("--model", help="architecture (default: the plan's meta.model)")
    p.add_argument("--out", required=True, help="output folder of the exported bundle")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (default: 5)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate, cosine to 0 (default: 0.01)")
    p.add_argument("--overparam", type=int, default=4, help="expansion ratio r of every layer; 0 = off (default: 4)")
    p.add_argument("--kd", choices=["sp", "logit", "sp+logit", "none"], default="sp", help="distillation (default: sp)")
    p.add_argument("--kd-layers", default="stages",
                   help="where SP-KD matches student and teacher: stages (end of each stage), blocks (every block "
                   "output) or comma-separated module paths (default: stages)")  # fmt: skip
    p.add_argument("--sp-weight", type=float, default=3000.0,
                   help="SP-KD weight, of the mean over the matched layers (default: 3000)")  # fmt: skip
    p.add_argument("--logit-weight", type=float, default=1.0, help="logit-KD weight (default: 1)")
    p.add_argument("--temperature", type=float, default=4.0, help="logit-KD temperature (default: 4)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many batches (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seeds expansion, shuffling and augmentation")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast the forward passes to bfloat16 (weights stay float32; default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the convolutions")
    p.add_argument("--resume", action="store_true",
                   help="continue the fine-tune whose state (state.pt) is in --out, exactly where it stopped")
    p.add_argument("--checkpoint-every", type=int, default=200,
                   help="steps between saves of the fine-tune state to --out/state.pt (default: 200)")  # fmt: skip
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="weight grain, after the fold: zero this fraction of the conv/linear weights by magnitude, "
                        "then fine-tune with the zeros held; reported as parameter compression, it gives no dense "
                        "speed-up (default: 0, off)")
    p.add_argument("--sparsity-scope", choices=["global", "layer"], default="global",
                   help="global: one magnitude threshold over all layers; layer: the fraction in every layer")
    p.add_argument("--sparse-epochs", type=int, default=1,
                   help="fine-tune epochs with the zeros held, after --epochs (default: 1)")  # fmt: skip
    _add_fold_bn_arg(p)
    _add_data_args(p)
    _add_run_args(p)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    check_data_spec(args.data)
    prepare_out(args.out, [args.plan, args.checkpoint, args.student], args.resume)
    if args.resume and not (Path(args.out) / "state.pt").is_file():
        raise UserError(f"--resume: {args.out} holds no fine-tune state (state.pt); start without --resume")
    plan = ChannelPlan.load(args.plan)
    name = args.model or plan.meta.get("model")
    if not name:
        raise UserError("the plan does not name its model; pass --model NAME")
    _check_model_name(name)
    target = plan.meta.get("target_flops")
    if target is not None and plan.flops > target:
        raise UserError(f"the plan has {plan.flops:,} FLOPs, over its own budget meta.target_flops = {target:,}; "
                        "search again, or delete target_flops from the plan to fine-tune it anyway")  # fmt: skip
    try:
        config = FinetuneConfig(args.epochs, args.lr, overparam=args.overparam, kd=args.kd, kd_layers=args.kd_layers,
                                sp_weight=args.sp_weight, logit_weight=args.logit_weight, temperature=args.temperature,
                                max_steps=args.max_steps, seed=args.seed, precision=args.precision,
                                channels_last=args.channels_last, checkpoint_every=args.checkpoint_every,
                                sparsity=args.sparsity, sparsity_scope=args.sparsity_scope,
                                sparse_epochs=args.sparse_epochs)  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("plan"):
        raise UserError(f"{args.checkpoint} holds a pruned model (it carries its plan), but --checkpoint is the "
                        "dense teacher; give the dense checkpoint there and the pruned weights as --student")
    teacher, name = model_from_checkpoint(ckpt, name, plan.meta.get("num_classes"))
    student_path = args.student or str(Path(args.plan).with_name("pruned.pt"))
    student = student_of(plan, teacher, student_path if args.student or os.path.isfile(student_path) else None)
    try:
        distill_layers(teacher, config)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    normalize = args.normalize or ckpt.get("normalize") or DEFAULT_NORMALIZE
    splits = load_dataset(args.data, args.data_dir, args.download)
    check_data_fits(teacher, splits, f"{name} (checkpoint {args.checkpoint!r})")
    teacher.to(device).eval()
    student.to(device)
    budget = Path(args.plan).with_name("budget.toml")
    num_classes = plan.meta.get("num_classes") or splits.num_classes
    metrics = finetune_plan(plan, teacher, student, splits, config, args.out, name, num_classes, normalize,
                            args.batch_size, args.workers, str(budget) if budget.is_file() else None,
                            not args.no_progress, args.resume, args.fold_bn)  # fmt: skip
    if not distributed.is_main():
        return 0
    rows = [
        [h["epoch"], f"{h['loss']:.4f}", f"{h['kd_loss']:.4f}", f"{h['top1']:.2f}", f"{h['test_top1_folded']:.2f}",
         f"{h['seconds']:.0f}"]
        for h in metrics["history"]
    ]  # fmt: skip
    print(format_table(rows, ["epoch", "loss", "kd loss", "train top-1 %", "test top-1 % (folded)", "s"]))
    structured = metrics.get("test_top1_structured", metrics["test_top1"])
    print(f"folded: {metrics['flops']:,} FLOPs, {metrics['params']:,} params, test top-1 {structured:.2f}%, "
          f"fold error {metrics['fold_max_rel_error']:.1e}; bundle: {args.out}")  # fmt: skip
    if "sparsity" in metrics:
        sp = metrics["sparsity"]
        top1 = f", test top-1 {sp['test_top1']:.2f}%" if "test_top1" in sp else ""
        print(f"sparse: {100 * sp['weight_sparsity']:.1f}% of conv/linear weights zero, {sp['nonzero_params']:,} "
              f"non-zero params, {sp['compression_vs_dense']:.1f}x fewer than the dense model{top1} (no dense "
              "speed-up: FLOPs and latency are the structured model's)")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------------------------
# plot


def plot_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "dais-search plot",
        add_help=add_help,
        description="Draw a search's figures as PNG files (for papers and READMEs): the final indicator heatmap, "
        "every group's keep ratio against progress, and soft FLOPs against the target.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of `dais-search search` or `run` (holds tb/)")
    p.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots)")
    return p


def cmd_plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


# ----------------------------------------------------------------------------------------------
# entry point

COMMANDS = {
    "flops": (flops_parser, cmd_flops),
    "latency": (latency_parser, cmd_latency),
    "eval": (eval_parser, cmd_eval),
    "train": (train_parser, cmd_train),
    "search": (search_parser, cmd_search),
    "baseline": (baseline_parser, cmd_baseline),
    "finetune": (finetune_parser, cmd_finetune),
    "run": (run_parser, cmd_run),
    "plot": (plot_parser, cmd_plot),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "dais-search", description="Budgeted, differentiable channel pruning for PyTorch CNNs."
    )
    parser.add_argument("--version", action="version", version=f"dais-search {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (make, _) in COMMANDS.items():
        child = make(add_help=False)
        sub.add_parser(name, parents=[child], help=child.description, description=child.description)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``dais-search``; returns the exit status (0 ok, 2 for a user error)."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if distributed.launched() and hasattr(args, "device"):
            # torchrun: join the process group before anything looks at --out (see prepare_out)
            resolve_device(args.device)
        # Under torchrun rank 0 alone logs progress (and prints reports); the others warn only.
        logging.basicConfig(level=logging.INFO if distributed.is_main() else logging.WARNING, format="%(message)s")
        status = COMMANDS[args.command][1](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    log.debug("%s took %.1f s", args.command, time.perf_counter() - started)
    return status


if __name__ == "__main__":
    sys.exit(main())
