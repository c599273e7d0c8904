"""Which search settings make the searched widths beat uniform ones at equal total epochs?

Runs the search of one budget file once per variant (``name:section.key=value,...``, applied with
``dais-search search --set``), fine-tunes each searched plan the same way (the budget's LOP + KD
settings) for ``--epochs``, and compares with, all at the same total weight epochs:

* uniform L1 widths at the default variant's FLOPs, fine-tuned ``--epochs + search.epochs``;
* the default variant's searched widths on the *teacher's* weights (its ``plan.json`` without
  the search's ``pruned.pt``), fine-tuned ``--epochs + search.epochs``: the widths alone, without
  the weight training of the search.

Every row starts from the same teacher, sees the same data and the same fine-tune recipe, and
ends at ``--epochs + search.epochs`` weight epochs (a variant with ``search.train_weights=false``
spends none in its search and is fine-tuned for all of them), except one marked "equal fine-tune": uniform
L1 fine-tuned for ``--epochs`` only (BENCH.md's second comparison, fewer total epochs). Each
stage is skipped when its output exists, so the script resumes.

    python benchmarks/search_ablation.py --budget budgets/resnet20_cifar10_keep50.toml \\
        --set budget.flops=30% --set search.epochs=2 --epochs 1 --out runs/ablation/r20k30 \\
        --variant gate_lr_0.2:search.gate_lr=0.2 --variant gate_every_3:search.gate_every=3 \\
        --variant warmup_0.25:search.warmup=0.25 --variant cosine:search.temperature_schedule=cosine \\
        --json benchmarks/results/search_ablation_resnet20_keep30.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from dais_search.budget import load_budget, parse_override
from dais_search.cli import main as cli_main
from dais_search.errors import UserError
from dais_search.report import format_table, library_versions


def run(argv: list[str]) -> None:
    print(f"== dais-search {shlex.join(argv)}", flush=True)
    if cli_main(argv) != 0:
        sys.exit(f"dais-search {argv[0]} failed")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:section.key=value,section.key=value`` -> (name, ["section.key=value", ...])."""
    name, sep, sets = text.partition(":")
    if not sep or not name or not sets:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: write NAME:SECTION.KEY=VALUE[,SECTION.KEY=VALUE]")
    items = [s for s in sets.split(",") if s]
    for item in items:
        try:
            parse_override(item)  # a typo fails here, before any search runs
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return name, items


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", required=True, help="budget file of the search (its checkpoint is the teacher)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override applied to every variant (repeatable)")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME:SECTION.KEY=VALUE,...",
                   help="a search variant besides the default (repeatable)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after a search (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="fine-tune seed (default: 0)")
    p.add_argument("--out", required=True, help="folder of the runs (one subfolder per variant)")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    for item in args.set:
        parse_override(item)
    names = [name for name, _ in args.variant]
    if "default" in names or len(set(names)) != len(names):
        p.error("variant names must be unique and not 'default'")

    base_sets = [f for s in args.set for f in ("--set", s)]
    budget = load_budget(args.budget, dict(parse_override(s) for s in args.set))
    weight_epochs = {"default": _weight_epochs(budget)}
    for name, sets in args.variant:  # every variant's budget validates before the first search starts
        overrides = dict(parse_override(s) for s in [*args.set, *sets])
        weight_epochs[name] = _weight_epochs(load_budget(args.budget, overrides))
    extra = weight_epochs["default"]
    out = Path(args.out)
    ft_args = ["--checkpoint", budget.model.checkpoint, "--data", budget.data.dataset, "--seed", str(args.seed),
               "--overparam", str(budget.finetune.overparam), "--kd", budget.finetune.kd, "--no-progress"]  # fmt: skip

    def finetune(plan: Path, epochs: int, folder: Path) -> dict:
        if not (folder / "metrics.json").is_file():
            resume = ["--resume"] if (folder / "state.pt").is_file() else []
            run(["finetune", "--plan", str(plan), "--epochs", str(epochs), "--out", str(folder), *ft_args, *resume])
        return json.loads((folder / "metrics.json").read_text())

    rows = []
    for name, sets in [("default", []), *args.variant]:
        search = out / name / "search"
        if not (search / "metrics.json").is_file():
            resume = ["--resume"] if (search / "state.pt").is_file() else []
            run(["search", args.budget, "--out", str(search), "--no-progress", *base_sets,
                 *[f for s in sets for f in ("--set", s)], *resume])  # fmt: skip
        found = json.loads((search / "metrics.json").read_text())
        epochs = args.epochs + extra - weight_epochs[name]  # a search without weight training: more fine-tune
        m = finetune(search / "plan.json", epochs, out / name / "finetune")
        rows.append(_row(f"searched: {name}", sets, found["pruned_test_top1"], epochs, args.epochs + extra, m,
                         found["dense_flops"], found))  # fmt: skip
        if name == "default":
            default = found

    default_search = out / "default" / "search"
    uniform = default_search / "uniform_l1" / "plan.json"
    m = finetune(uniform, args.epochs + extra, out / "uniform_l1")
    rows.append(_row("uniform L1 widths", [], default["uniform_l1"]["test_top1"], args.epochs + extra,
                     args.epochs + extra, m, default["dense_flops"]))  # fmt: skip
    m = finetune(uniform, args.epochs, out / "uniform_l1_equal_finetune")  # BENCH.md's other row
    rows.append(_row("uniform L1 widths, equal fine-tune", [], default["uniform_l1"]["test_top1"], args.epochs,
                     args.epochs, m, default["dense_flops"]))  # fmt: skip
    widths_only = out / "searched_widths_teacher_weights"
    widths_only.mkdir(parents=True, exist_ok=True)
    if not (widths_only / "plan.json").is_file():  # the plan alone: no pruned.pt, so the teacher's weights
        shutil.copyfile(default_search / "plan.json", widths_only / "plan.json")
    m = finetune(widths_only / "plan.json", args.epochs + extra, widths_only / "finetune")
    rows.append(_row("default's widths, teacher weights", [], None, args.epochs + extra, args.epochs + extra, m,
                     default["dense_flops"]))  # fmt: skip

    table = [[r["method"], " ".join(r["settings"]) or "-", f"{r['flops_ratio']:.3f}", f"{r['params']:,}",
              f"{r['finetune_epochs']} ({r['total_weight_epochs']})",
              "-" if r["test_top1_before_finetune"] is None else f"{r['test_top1_before_finetune']:.2f}",
              f"{r['test_top1']:.2f}", "-" if r["search_seconds"] is None else f"{r['search_seconds']:.0f}"]
             for r in rows]  # fmt: skip
    print(format_table(table, ["run", "settings", "FLOPs ratio", "params", "fine-tune epochs (total)",
                               "top-1 % before", "top-1 % after", "search s"]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "budget": args.budget, "overrides": args.set,
                                               "versions": library_versions(),
                                               "command": shlex.join(["python", *sys.argv])}, indent=1))  # fmt: skip
    return rows


def _weight_epochs(budget) -> int:
    """Weight epochs the search spends (BENCH.md's equal-total-epochs rule counts them)."""
    return budget.search.epochs if budget.search.train_weights else 0


def _row(method, settings, before, epochs, total, m, dense_flops, found=None) -> dict:
    row = {
        "method": method, "settings": list(settings), "finetune_epochs": epochs, "total_weight_epochs": total,
        "flops": m["flops"], "flops_ratio": m["flops"] / dense_flops,
        "params": m["params"], "test_top1_before_finetune": before, "test_top1": m["test_top1"],
        "test_top1_per_epoch": [h["test_top1_folded"] for h in m["history"]],
        "finetune_seconds": m["finetune_seconds"], "search_seconds": None,
    }  # fmt: skip
    if found is not None:
        row |= {"search_seconds": found["search_seconds"], "flops_over_target": found["flops_over_target"],
                "binarization_gap": found["binarization_gap"], "held_out_top1_before_finetune":
                found["pruned_held_out_top1"]}  # fmt: skip
    return row


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
