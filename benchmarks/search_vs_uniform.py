"""What the search contributes: searched widths vs uniform-L1 widths at the same FLOPs, both
fine-tuned the same way (LOP r=4 + SP-KD, BENCH.md schedule), at equal total training epochs.

The search trains the weights for ``search.epochs`` epochs over the 45k split; the uniform plan,
cut from the dense teacher, gets those epochs as extra fine-tune epochs (BENCH.md "equal total
epochs": the cosine schedule stretched over the longer run). A search that keeps the teacher's
weights (``--set search.train_weights=false``) spends none, and its plan is fine-tuned for all of
them too. With ``--equal-finetune`` the
uniform plan is also fine-tuned for the searched plan's epochs alone (BENCH.md's other row).
Each stage is skipped when its output exists, so the script resumes.

    python benchmarks/search_vs_uniform.py --budget budgets/resnet56_cifar10_keep30.toml \\
        --out runs/ev/k30 --json benchmarks/results/search_vs_uniform_resnet56_keep30.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dais_search.budget import load_budget, parse_override
from dais_search.cli import main as cli_main
from dais_search.report import format_table, library_versions


def run(argv: list[str]) -> None:
    print(f"== dais-search {shlex.join(argv)}", flush=True)
    if cli_main(argv) != 0:
        sys.exit(f"dais-search {argv[0]} failed")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", required=True, help="budget file of the search (its checkpoint is the teacher)")
    p.add_argument("--out", required=True, help="folder for the search and the fine-tuned bundles")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs of the searched plan (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="fine-tune seed (default: 0)")
    p.add_argument("--equal-finetune", action="store_true", help="also fine-tune uniform for --epochs alone")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="budget override of the search, e.g. search.train_weights=false (repeatable)")  # fmt: skip
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)

    budget = load_budget(args.budget, dict(parse_override(s) for s in args.set))
    sets = [f for s in args.set for f in ("--set", s)]
    out, search = Path(args.out), Path(args.out) / "search"
    if not (search / "metrics.json").is_file():
        resume = ["--resume"] if (search / "state.pt").is_file() else []
        run(["search", args.budget, "--out", str(search), "--no-progress", *sets, *resume])
    found = json.loads((search / "metrics.json").read_text())
    # Equal total weight epochs: --epochs plus the epochs of a search that trains the weights. The
    # searched plan is fine-tuned for what its own search did not spend (all of them with
    # search.train_weights = false), the uniform plan for all of them.
    extra = budget.search.epochs if budget.search.train_weights else 0
    total = args.epochs + budget.search.epochs
    name = f"searched ({budget.search.mode}{'' if budget.search.train_weights else ', teacher weights frozen'})"
    runs = [(name, search / "plan.json", total - extra, "searched"),
            ("uniform L1, equal total epochs", search / "uniform_l1" / "plan.json", total,
             "uniform_total")]  # fmt: skip
    if args.equal_finetune:
        runs.append(("uniform L1, equal fine-tune", search / "uniform_l1" / "plan.json", args.epochs, "uniform_ft"))
    rows = []
    for name, plan, epochs, folder in runs:
        bundle = out / folder
        if not (bundle / "metrics.json").is_file():
            run(["finetune", "--plan", str(plan), "--checkpoint", budget.model.checkpoint, "--data",
                 budget.data.dataset, "--epochs", str(epochs), "--seed", str(args.seed), "--out", str(bundle),
                 "--no-progress", *(["--resume"] if (bundle / "state.pt").is_file() else [])])  # fmt: skip
        m = json.loads((bundle / "metrics.json").read_text())
        plan_data = json.loads(Path(plan).read_text())
        before = found["pruned_test_top1"] if folder == "searched" else found["uniform_l1"]["test_top1"]
        rows.append({
            "method": name, "plan": str(plan), "finetune_epochs": epochs,
            "total_weight_epochs": epochs + (extra if folder == "searched" else 0),
            "search_overrides": args.set if folder == "searched" else [],
            "flops": m["flops"], "flops_ratio": plan_data["pruned"]["flops_ratio"], "params": m["params"],
            "test_top1_before_finetune": before, "test_top1": m["test_top1"],
            "test_top1_per_epoch": [h["test_top1_folded"] for h in m["history"]],
            "finetune_seconds": m["finetune_seconds"],
        })  # fmt: skip
    table = [[r["method"], f"{r['flops']:,}", f"{r['flops_ratio']:.3f}", f"{r['params']:,}",
              f"{r['finetune_epochs']} ({r['total_weight_epochs']})", f"{r['test_top1_before_finetune']:.2f}",
              f"{r['test_top1']:.2f}"] for r in rows]  # fmt: skip
    print(format_table(table, ["method", "FLOPs", "ratio", "params", "fine-tune epochs (total)",
                               "top-1 % before", "top-1 % after"]))  # fmt: skip
    print(f"dense {found['dense_test_top1']:.2f}%; search {found['search_seconds']:.0f} s, "
          f"FLOPs / target {found['flops_over_target']:.4f}")
    if args.json:
        summary = {k: v for k, v in found.items() if k != "history"}
        Path(args.json).write_text(json.dumps({"rows": rows, "search": summary, "versions": library_versions(),
                                               "command": shlex.join(["python", *sys.argv])}, indent=1))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
