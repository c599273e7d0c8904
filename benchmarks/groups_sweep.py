"""Channel groups on every torchvision classification model: found, prunable, and correct.

For each model in ``torchvision.models.list_models(module=torchvision.models)`` (10-class head,
random weights with calibrated-then-perturbed BN statistics): trace the channel groups, measure
the fraction of conv/linear FLOPs that touch a prunable group, cut 30% of every prunable group at
random, and check that the physically pruned model runs, has the right output shape and equals
the masked dense model (relative error <= 1e-4). Then the same in train mode (dropout and
stochastic depth off, BN on batch statistics, auxiliary heads on): the pruned model equals the
dense model gated with the plan's 0/1 masks (``GatedModel``, the search's gating), and one
training step of the pruned model runs. A train-mode error above 1e-4 is measured again in
float64: deep models on the batch statistics of 2 images at 2x2 pixels amplify float32 rounding,
which float64 removes, while a wrong gate stays wrong.

Status per model: ``ok``; ``not-supported`` (no prunable group; the op that blocked the first
one is listed); ``wrong`` (pruned != masked, or wrong output shape); ``exception``.

    python benchmarks/groups_sweep.py [--models resnet18 vit_b_16] [--json sweep.json]

The last line reads ``models: N ok: N not-supported: N wrong: N exceptions: N``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
import warnings
from math import prod

import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

from dais_search import models
from dais_search.channels import check_plan, handler_for, random_plan, randomize_norms, trace_channels
from dais_search.cost import count_flops
from dais_search.report import format_table
from dais_search.search import ChannelGates, attach_gates
from dais_search.train import classification_loss

# Models whose positional embeddings or window sizes fix the input resolution.
FIXED_SIZE = ("vit_", "swin_", "maxvit_")


def input_size(name: str) -> int:
    if name.startswith(FIXED_SIZE) or name == "inception_v3":
        return models.input_size(f"tv:{name}")[-1]
    return 64  # small inputs keep 80 models affordable on a CPU


def prunable_flops_fraction(model, graph, shape) -> float:
    """FLOPs of conv/linear calls that read or write a prunable group, over all counted FLOPs
    (conv, linear and matmul, including those inside modules the analysis treats as opaque)."""
    prunable = {g.id for g in graph.groups if g.prunable}
    touched = 0
    for path, in_shape, out_shape in graph.calls:
        module = model.get_submodule(path)
        terms = handler_for(module).flops(module, in_shape, out_shape)
        if not terms:
            continue
        flops = sum(t.coef * prod(len(graph.sites[(path, r)]) for r in t.roles) for t in terms)
        atoms = graph.sites.get((path, "in"), []) + graph.sites.get((path, "out"), [])
        if any(graph.atom_class.get(a, (None,))[0] in prunable for a in atoms):
            touched += flops
    total = count_flops(model, shape)
    return touched / total if total else 0.0


def train_mode_check(model, graph, plan, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Relative error of the pruned model against the gated dense one in train mode, after one
    training step of the pruned model has run (dropout and stochastic depth off: both sides
    would draw masks of different sizes)."""
    dense = randomize_norms(copy.deepcopy(model), x)
    for m in dense.modules():
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            m.p = 0.0
    pruned = plan.apply(dense).train().to(dtype)
    gate_graph = graph_of(dense, plan)
    dense, x = dense.to(dtype), x.to(dtype)
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, "dais")
    gates.fixed_masks = [
        torch.tensor([float(c in plan.kept.get(g.id, range(g.size))) for c in range(g.size)], dtype=dtype)
        for g in groups
    ]
    gated = attach_gates(dense, gate_graph, gates).train()
    with torch.no_grad():
        expected, actual = pruned(x), gated(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    actual = actual[0] if isinstance(actual, tuple) else actual
    loss, _ = classification_loss(pruned(x), torch.arange(len(x)) % 10)
    loss.backward()  # a training step of the pruned model runs (auxiliary heads included)
    scale = expected.abs().max().clamp(min=1e-12)
    return float((actual - expected).abs().max() / scale)


def graph_of(model, plan):
    return trace_channels(model, torch.zeros(plan.input_shape), plan.ignore, warn=False)


def sweep_one(name: str) -> dict:
    row: dict = {"model": name}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
            size = input_size(name)
            shape = (1, 3, size, size)
            graph = trace_channels(model, torch.zeros(shape))
        prunable = [g for g in graph.groups if g.prunable]
        row.update(
            size=size,
            groups=len(graph.groups),
            prunable=len(prunable),
            prunable_flops=round(prunable_flops_fraction(model, graph, shape), 4),
            dense_flops=count_flops(model, shape),
            warnings=[str(w.message) for w in caught if "dais_search" in str(w.message)],
        )
        if not prunable:
            reasons = [g.reason for g in graph.groups if g.reason != "model output"]
            row.update(status="not-supported", blocked_by=reasons[0] if reasons else "model output only")
            return row
        plan = random_plan(model, shape, keep=0.7, seed=0, graph=graph)
        check = check_plan(model, plan, torch.randn(2, *shape[1:]))
        x = torch.randn(2, *shape[1:])
        train_error = train_mode_check(model, graph, plan, x)
        if train_error > 1e-4:
            # Deep nets in train mode (BN on the statistics of 2 images at 2x2 pixels) amplify float32
            # rounding; float64 tells rounding (error ~1e-12) from a wrong gate (no better than float32).
            row["train_max_rel_error_float32"] = train_error
            train_error = train_mode_check(model, graph, plan, x, torch.float64)
        row.update(
            flops_ratio=round(plan.flops_ratio, 4),
            max_rel_error=check.max_rel_error,
            train_max_rel_error=train_error,
            status="ok" if check.ok and train_error <= 1e-4 else "wrong",
        )
        if check.flops != plan.flops:
            row.update(status="wrong", note=f"plan says {plan.flops} FLOPs, pruned model has {check.flops}")
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure and goes on
        row.update(status="exception", error=f"{type(exc).__name__}: {exc}"[:500], trace=traceback.format_exc()[-2000:])
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="torchvision model names (default: every classification model)")
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th model from the K-th (parallel runs)")
    p.add_argument(
        "--combine", nargs="+", help="print the table of these --json files (shards; later ones win) instead of running"
    )
    args = p.parse_args(argv)
    if args.combine:
        by_model = {}  # a later file's row replaces an earlier one (a re-run of one model)
        for path in args.combine:
            with open(path) as f:
                by_model.update({row["model"]: row for row in json.load(f)})
        return report(sorted(by_model.values(), key=lambda r: r["model"]), args.json)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    k, n = (int(v) for v in args.shard.split("/"))
    names = names[k::n]
    torch.manual_seed(0)
    rows = []
    for name in names:
        row = sweep_one(name)
        rows.append(row)
        print(
            f"{name}: {row['status']} ({row['seconds']} s)"
            + (f" {row.get('error', '')}" if row["status"] == "exception" else ""),
            file=sys.stderr,
            flush=True,
        )
    return report(rows, args.json)


def report(rows: list[dict], json_path: str | None) -> list[dict]:
    table = [
        [
            r["model"], r["status"], r.get("size", ""), r.get("groups", ""), r.get("prunable", ""),
            f"{100 * r['prunable_flops']:.1f}" if "prunable_flops" in r else "",
            f"{r['flops_ratio']:.3f}" if "flops_ratio" in r else "",
            f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "",
            f"{r['train_max_rel_error']:.1e}" if "train_max_rel_error" in r else "",
            r.get("blocked_by", r.get("error", "")),
        ]
        for r in rows
    ]  # fmt: skip
    headers = ["model", "status", "input", "groups", "prunable", "prunable FLOPs %", "FLOPs after 30% cut",
               "max rel err", "train-mode rel err", "blocked by / error"]  # fmt: skip
    print(format_table(table, headers))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "not-supported", "wrong", "exception")}
    print(
        f"models: {len(rows)} ok: {counts['ok']} not-supported: {counts['not-supported']} "
        f"wrong: {counts['wrong']} exceptions: {counts['exception']}"
    )
    return rows


if __name__ == "__main__":
    main()
