"""Fine-tune ablation on one searched plan: vanilla vs LOP vs LOP + SP-KD vs SP-KD alone.

Each variant is ``dais-search finetune`` on the same plan and pruned weights (BENCH.md schedule:
batch 128, SGD Nesterov 0.9, wd 5e-4, lr 0.01 cosine per step, all 50,000 training images), run one
after another so their epoch times are comparable. A variant whose bundle already has
``metrics.json`` is not run again (the script resumes); the table is rendered from those files.

    python benchmarks/finetune_ablation.py --plan runs/r56k30/search/plan.json \\
        --checkpoint ../shared/pretrained/resnet56-4bfd9763.th --out runs/r56k30/ft --seeds 0

``--variant NAME="ARGS"`` adds a variant (e.g. ``--variant 'LOP + SP-KD w10k=--sp-weight 10000'``);
``--only NAME ...`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from dais_search.cli import main as cli_main
from dais_search.report import format_table, library_versions

VARIANTS = {
    "vanilla": "--overparam 0 --kd none",
    "LOP r=4": "--overparam 4 --kd none",
    "LOP r=4 + SP-KD": "--overparam 4 --kd sp",
    "SP-KD": "--overparam 0 --kd sp",
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True, help="plan.json of a search (pruned.pt beside it is the start)")
    p.add_argument("--checkpoint", required=True, help="dense teacher weights")
    p.add_argument("--data", default="npz:../shared/data/cifar10.npz", help="data spec (default: the shared npz)")
    p.add_argument("--out", required=True, help="folder for one bundle per variant and seed")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (default: 5, BENCH.md standard)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS", help="extra variant")
    p.add_argument("--only", nargs="+", help="run only these variants (names as in the table)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    variants = dict(VARIANTS)
    for spec in args.variant:
        name, sep, extra = spec.partition("=")
        if not sep:
            p.error(f"--variant {spec!r}: write NAME=ARGS")
        variants[name] = extra
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            p.error(f"--only: unknown variant(s) {unknown}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only}

    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        for name, extra in variants.items():
            bundle = out / f"{slug(name)}_seed{seed}"
            if not (bundle / "metrics.json").is_file():
                argv_ft = ["finetune", "--plan", args.plan, "--checkpoint", args.checkpoint, "--data", args.data,
                           "--epochs", str(args.epochs), "--seed", str(seed), "--out", str(bundle), "--no-progress",
                           *shlex.split(extra), *(["--resume"] if (bundle / "state.pt").is_file() else [])]  # fmt: skip
                print(f"== {name}, seed {seed}: dais-search {shlex.join(argv_ft[1:])}", flush=True)
                if cli_main(argv_ft) != 0:
                    sys.exit(f"variant {name!r} failed")
            m = json.loads((bundle / "metrics.json").read_text())
            epoch_seconds = [h["seconds"] for h in m["history"]]
            rows.append({
                "variant": name, "seed": seed, "args": extra, "test_top1": m["test_top1"],
                "test_top1_per_epoch": [h["test_top1_folded"] for h in m["history"]],
                "flops": m["flops"], "params": m["params"], "fold_max_rel_error": m["fold_max_rel_error"],
                "median_epoch_seconds": statistics.median(epoch_seconds), "finetune_seconds": m["finetune_seconds"],
                "config": m["config"],
            })  # fmt: skip
    base = {r["seed"]: r["median_epoch_seconds"] for r in rows if r["variant"] == "vanilla"}
    table = [
        [r["variant"], r["seed"], f"{r['test_top1']:.2f}", " ".join(f"{a:.2f}" for a in r["test_top1_per_epoch"]),
         f"{r['median_epoch_seconds']:.0f}",
         f"{r['median_epoch_seconds'] / base[r['seed']]:.2f}" if r["seed"] in base else "",
         f"{r['fold_max_rel_error']:.1e}"]
        for r in rows
    ]  # fmt: skip
    headers = ["variant", "seed", "test top-1 %", "per epoch (folded)", "s / epoch", "x vanilla", "fold error"]
    print(format_table(table, headers))
    summary = {}
    for name in variants:
        accs = [r["test_top1"] for r in rows if r["variant"] == name]
        if len(accs) > 1:
            summary[name] = {"seeds": len(accs), "mean": statistics.mean(accs), "std": statistics.stdev(accs)}
    if summary:
        print(format_table([[k, v["seeds"], f"{v['mean']:.2f}", f"{v['std']:.2f}"] for k, v in summary.items()],
                           ["variant", "seeds", "mean test top-1 %", "std"]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "versions": library_versions(),
                                               "command": shlex.join(["python", *sys.argv])}, indent=1))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
