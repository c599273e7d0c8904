"""The benchmark suite (../shared/BENCH.md): every method under one budget, fine-tuned by one schedule,
in two fairness rows, one JSON per method x budget x seed, then a Markdown table and a PNG.

    python benchmarks/suite.py --suite quick                  # ResNet-20, keep 50%, every width method, seed 0
    python benchmarks/suite.py --suite standard               # ResNet-56, keep 50% and 30%, seed 0
    python benchmarks/suite.py --suite standard --budgets keep30 --seeds 0,1,2 --methods ours,fpgm-uniform
    python benchmarks/suite.py --suite quick --render         # the table and PNG from the JSONs alone
    python benchmarks/suite.py --suite quick --retime         # search cost measured again, on a quiet machine
    python benchmarks/suite.py --suite depth-resnet56         # block + channel vs channel only, keep 30%
    python benchmarks/suite.py --suite depth-vgg19            # layer + channel vs channel only (train VGG-19 first)

Methods:
  ours                  the search (budget file), LOP + SP-KD fine-tune (the budget's [finetune]), fold
  ours-frozen           the same with search.train_weights = false (the teacher's weights stay; gates only)
  ours[-frozen]-blocks  multi-grain: the same search with granularity = ["block", "channel"] (residual blocks)
  ours[-frozen]-layers  multi-grain: granularity = ["layer", "channel"] (layers of plain chains, VGG)
  ours-vanilla-ft       ablation: the searched widths, plain fine-tune (no over-parameterisation, no KD)
  uniform-ours-ft       ablation: l1-uniform widths, our LOP + SP-KD fine-tune
  <criterion>-uniform   one keep fraction, channels by the criterion (l1 l2 fpgm bn taylor apoz entropy random)
  l1-global, eagleeye   global threshold on per-group-normalised L1; EagleEye (random ratios, adaptive BN)
  tp-uniform, tp-global the Torch-Pruning peer (benchmarks/peers/tp_peer.py; `bench` extra)
  modelopt-fastnas      NVIDIA ModelOpt FastNAS (benchmarks/peers/modelopt_peer.py; `modelopt` extra), channel
                        divisor 4, scored on [baseline] score_batches held-out batches

Baselines and peers get a plain fine-tune (a method's own extra losses are part of the method, BENCH.md);
the schedule is the same for all. Two rows per run: **equal fine-tune** (the suite's epochs for everyone)
and **equal total epochs** (a method whose plan stage trained no weights gets the search's weight epochs
as extra fine-tune epochs). When the search trains no weights (search.train_weights = false) the rows
coincide and run once.

Every stage is skipped when its output exists, so an interrupted suite resumes where it stopped (a search
from its last epoch). Runs go to --work (default runs/suite/<suite>), JSONs to --results.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dais_search.budget import load_budget, parse_override  # noqa: E402
from dais_search.channels import ChannelPlan  # noqa: E402
from dais_search.checkpoint import save_checkpoint  # noqa: E402
from dais_search.cli import main as cli_main  # noqa: E402
from dais_search.cost import interleaved_latency  # noqa: E402
from dais_search.errors import UserError  # noqa: E402
from dais_search.files import write_json  # noqa: E402
from dais_search.pipeline.common import load_budget_inputs, load_dense  # noqa: E402
from dais_search.report import format_table, library_versions, machine  # noqa: E402
from dais_search.search import list_methods  # noqa: E402
from dais_search.train import recalibrate_bn, time_train_steps  # noqa: E402

DEEPER = {f"ours{f}-{g}s": g for f in ("", "-frozen") for g in ("block", "layer")}  # method -> the grain added
SEARCHES = ("ours", "ours-frozen", *DEEPER)
ABLATION_PARENTS = {"ours-vanilla-ft": "ours", "uniform-ours-ft": "l1-uniform"}  # each fine-tunes its parent's plan
ABLATIONS = tuple(ABLATION_PARENTS)
PEERS = ("tp-uniform", "tp-global", "modelopt-fastnas")
PEER_PACKAGES = {"tp-uniform": "torch_pruning", "tp-global": "torch_pruning", "modelopt-fastnas": "modelopt"}


@dataclass(frozen=True)
class Suite:
    """A benchmark configuration: budget files by label, fine-tune epochs, seeds and methods."""

    name: str
    budgets: dict[str, str]
    finetune_epochs: int
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ()
    finetune_args: tuple[str, ...] = ()  # extra `dais-search finetune` options (tests: --max-steps)
    latency_repeats: int = 20
    search_sets: tuple[str, ...] = ()  # --set overrides of the search and baselines


UNIFORM = tuple(f"{c}-uniform" for c in ("l1", "l2", "fpgm", "bn", "taylor", "apoz", "entropy", "random"))
SUITES = {
    "quick": Suite("quick", {"keep50": "budgets/resnet20_cifar10_keep50.toml"}, 3,
                   methods=("ours", "ours-frozen", *ABLATIONS, *UNIFORM, "l1-global", "eagleeye", *PEERS)),
    "standard": Suite("standard", {"keep50": "budgets/resnet56_cifar10_keep50.toml",
                                   "keep30": "budgets/resnet56_cifar10_keep30.toml"}, 5,
                      methods=("ours", "ours-frozen", *ABLATIONS, "l1-uniform", "fpgm-uniform", "l1-global",
                               "eagleeye", *PEERS)),
    # Issue 14's benchmark: depth and width searched together vs width alone, at equal FLOPs and fine-tune.
    "depth-resnet56": Suite("depth-resnet56", {"keep30": "budgets/resnet56_cifar10_keep30.toml"}, 5,
                            methods=("ours", "ours-blocks", "ours-frozen", "ours-frozen-blocks")),
    "depth-vgg19": Suite("depth-vgg19", {"keep10": "budgets/vgg19_cifar10_keep10.toml"}, 5,
                         methods=("ours", "ours-layers", "ours-frozen", "ours-frozen-layers")),
}  # fmt: skip


def _cli(argv: list[str]) -> None:
    print(f"== dais-search {shlex.join(argv)}", flush=True)
    if cli_main(argv) != 0:
        raise SystemExit(f"dais-search {argv[0]} failed")


def known_methods() -> list[str]:
    return [*SEARCHES, *ABLATIONS, *list_methods(), *PEERS]


class Runner:
    """Runs (or resumes) one suite: plan stages, fine-tunes and measurements, one JSON per run."""

    def __init__(self, suite: Suite, work: Path, results: Path) -> None:
        self.suite, self.work, self.results = suite, work, results
        self.timings: dict[tuple[str, int], float] = {}
        self._retimed: set[Path] = set()  # the retime folders this runner has emptied

    # -- plan stages -------------------------------------------------------------------------
    def plan_dir(self, label: str, seed: int, method: str, stage: str = "plans") -> Path:
        """Where the plan of ``method`` lives; ablations share their parent's plan."""
        source = ABLATION_PARENTS.get(method, method)
        return self.work / label / f"seed{seed}" / stage / source

    def make_plan(self, label: str, seed: int, method: str, stage: str = "plans") -> dict:
        """The plan stage's metrics (``search`` or ``baseline`` or the peer), run when missing."""
        budget = self.suite.budgets[label]
        folder = self.plan_dir(label, seed, method, stage)
        sets = [f for s in (*self.suite.search_sets, f"search.seed={seed}") for f in ("--set", s)]
        if not (folder / "metrics.json").is_file():
            if folder.name in SEARCHES:
                resume = ["--resume"] if (folder / "state.pt").is_file() else []
                frozen = ["--set", "search.train_weights=false"] if "-frozen" in folder.name else []
                if folder.name in DEEPER:
                    frozen += ["--set", f'search.granularity=["{DEEPER[folder.name]}", "channel"]']
                _cli(["search", budget, "--out", str(folder), "--no-progress", *sets, *frozen, *resume])
            elif folder.name in PEERS:
                self._peer(label, seed, folder)
            else:  # a baseline has no state to resume: --resume makes it again over what an interruption left
                resume = ["--resume"] if folder.is_dir() and any(folder.iterdir()) else []
                _cli(["baseline", budget, "--method", folder.name, "--out", str(folder), "--no-progress", *sets,
                      *resume])  # fmt: skip
        return json.loads((folder / "metrics.json").read_text())

    def _budget(self, label: str, seed: int):
        overrides = dict(parse_override(s) for s in (*self.suite.search_sets, f"search.seed={seed}"))
        return load_budget(self.suite.budgets[label], overrides)

    def _peer(self, label: str, seed: int, folder: Path) -> None:
        """Torch-Pruning's plan; then, like our stages, pruned.pt (BN recalibrated) and its accuracy."""
        budget = self._budget(label, seed)
        peer_dir = folder / "peer"
        common = ["--checkpoint", budget.model.checkpoint, "--model", budget.model.name, "--flops",
                  str(budget.budget.flops), "--out", str(peer_dir)]  # fmt: skip
        if not (peer_dir / "metrics.json").is_file() and folder.name == "modelopt-fastnas":
            from peers import modelopt_peer

            d = budget.data
            modelopt_peer.main([*common, "--data", d.dataset, "--held-out", str(d.held_out), "--split-seed",
                                str(d.split_seed), "--normalize", d.normalize, "--batch-size", str(d.batch_size),
                                "--score-batches", str(budget.baseline.score_batches),
                                "--seed", str(seed)])  # fmt: skip
        elif not (peer_dir / "metrics.json").is_file():
            from peers import tp_peer

            tp_peer.main([*common, "--mode", folder.name.split("-")[1]])
        peer = json.loads((peer_dir / "metrics.json").read_text())
        plan = ChannelPlan.load(peer_dir / "plan.json")
        inputs = load_budget_inputs(budget, "cpu")
        started = time.perf_counter()
        pruned = recalibrate_bn(plan.apply(inputs.dense), inputs.train_loader, budget.search.recalibrate_batches)
        recal = time.perf_counter() - started
        plan.meta["budget"] = self.suite.budgets[label]
        plan.save(folder / "plan.json")
        save_checkpoint(folder / "pruned.pt", pruned, budget.model.name, inputs.num_classes,
                        normalize=budget.data.normalize, plan=plan.to_dict())  # fmt: skip
        steps = len(inputs.train_loader)
        dense_epoch = time_train_steps(copy.deepcopy(inputs.dense), inputs.train_loader, min(20, steps)) * steps
        write_json(folder / "metrics.json", {
            "method": folder.name, "flops": plan.flops, "flops_ratio": plan.flops_ratio,
            "target_flops": peer["target_flops"], "flops_over_target": peer["flops_over_target"],
            "params": plan.params, "weight_epochs": 0, "baseline_seconds": peer["seconds"] + recal,
            "dense_epoch_seconds": dense_epoch, "pruned_test_top1": inputs.accuracy(pruned, inputs.splits.test),
            "dense_test_top1": inputs.accuracy(inputs.dense, inputs.splits.test), "peer": peer,
        })  # fmt: skip

    # -- fine-tune -----------------------------------------------------------------------------
    def finetune(self, label: str, seed: int, method: str, epochs: int) -> dict:
        budget = self._budget(label, seed)
        plan_dir = self.plan_dir(label, seed, method)
        out = self.work / label / f"seed{seed}" / "finetune" / f"{method}_e{epochs}"
        ours_ft = method in (*SEARCHES, "uniform-ours-ft")
        ft = budget.finetune
        recipe = (["--overparam", str(ft.overparam), "--kd", ft.kd, "--kd-layers", ft.kd_layers, "--sp-weight",
                   str(ft.sp_weight)] if ours_ft else ["--overparam", "0", "--kd", "none"])  # fmt: skip
        if not (out / "metrics.json").is_file():
            _cli(["finetune", "--plan", str(plan_dir / "plan.json"), "--checkpoint", budget.model.checkpoint,
                  "--data", budget.data.dataset, "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
                  "--lr", str(ft.lr), "--batch-size", str(budget.data.batch_size), "--normalize",
                  budget.data.normalize, "--no-progress", *recipe, *self.suite.finetune_args,
                  *(["--resume"] if (out / "state.pt").is_file() else [])])  # fmt: skip
        return json.loads((out / "metrics.json").read_text())

    def latency(self, label: str, seed: int, method: str) -> dict:
        """CPU ms of dense and pruned (batch 1 and the budget's batch), medians of interleaved runs."""
        budget = self._budget(label, seed)
        plan = ChannelPlan.load(self.plan_dir(label, seed, method) / "plan.json")
        dense = load_dense(budget.model.name, budget.model.checkpoint, plan.meta.get("num_classes") or 10).eval()
        pruned = plan.apply(dense).eval()
        out = {}
        with torch.no_grad():
            for batch in (1, budget.data.batch_size):
                x = torch.randn(batch, *plan.input_shape[1:])
                times = interleaved_latency({"dense": dense, "pruned": pruned}, x, self.suite.latency_repeats, 5)
                out[str(batch)] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        return out

    # -- one run -------------------------------------------------------------------------------
    def run(self, label: str, seed: int, method: str) -> dict:
        path = self.results / f"{method}_{label}_seed{seed}.json"
        if path.is_file():
            return json.loads(path.read_text())
        found = self.make_plan(label, seed, method)
        found_epochs = found.get("weight_epochs", 0)
        search_weight_epochs = found_epochs if method == "ours" else self.search_weight_epochs(label, seed)
        own = found_epochs if method in (*SEARCHES, "ours-vanilla-ft") else 0
        epochs = self.suite.finetune_epochs
        rows = {"equal_finetune": epochs, "equal_total": epochs + search_weight_epochs - own}
        results = {}
        for row, e in rows.items():
            m = self.finetune(label, seed, method, e)
            results[row] = {"finetune_epochs": e, "total_weight_epochs": e + own, "test_top1": m["test_top1"],
                            "finetune_seconds": m["finetune_seconds"],
                            "test_top1_per_epoch": [h["test_top1_folded"] for h in m["history"]]}  # fmt: skip
        seconds = _plan_seconds(found)  # an ablation's plan is its parent's: the parent's seconds
        budget = self._budget(label, seed)
        plan = ChannelPlan.load(self.plan_dir(label, seed, method) / "plan.json")
        record = {
            "suite": self.suite.name, "method": method, "budget": label, "budget_file": self.suite.budgets[label],
            "seed": seed, "teacher": budget.model.name, "checkpoint": budget.model.checkpoint,
            "dense_test_top1": found["dense_test_top1"],
            "target_flops_ratio": found["target_flops"] / plan.dense_flops, "flops": plan.flops,
            "flops_ratio": plan.flops_ratio, "flops_over_target": plan.flops / found["target_flops"],
            "params": plan.params, "dense_params": plan.dense_params, "removed_blocks": list(plan.removed_blocks),
            "search_sets": list(self.suite.search_sets),
            "test_top1_before_finetune": found["pruned_test_top1"], "rows": results,
            "search_seconds": seconds, "dense_epoch_seconds": found["dense_epoch_seconds"],
            "search_cost_ratio": seconds / max(found["dense_epoch_seconds"], 1e-9),
            "search_weight_epochs": own, "latency_ms": self.latency(label, seed, method),
            "finetune": "LOP + SP-KD" if method in (*SEARCHES, "uniform-ours-ft") else "plain",
            "versions": library_versions(), "machine": machine(), "command": shlex.join(["python", *sys.argv]),
        }  # fmt: skip
        if method in PEERS:
            peer = found["peer"]
            record["versions"]["peer"] = peer.get("torch_pruning") or peer.get("modelopt")
            if "channel_divisor" in peer:
                record["note"] = f"channel divisor {peer['channel_divisor']}"
        write_json(path, record)
        return record

    def search_weight_epochs(self, label: str, seed: int) -> int:
        """The weight epochs ours' search spent (the equal-total row's extra epochs): from ours' committed
        JSON where it exists, so that a fresh clone does not search again only to count them."""
        done = self.results / f"ours_{label}_seed{seed}.json"
        if done.is_file():
            return json.loads(done.read_text())["search_weight_epochs"]
        return self.make_plan(label, seed, "ours").get("weight_epochs", 0)

    # -- timing again --------------------------------------------------------------------------
    def retime(self, label: str, seed: int, method: str) -> dict | None:
        """Measure a finished run's plan-stage seconds and dense epoch again, on this (quiet) machine.

        The plan stage runs again from scratch into ``<work>/<label>/seed<N>/retime/``; its plan must be
        the run's (the same FLOPs, params and top-1 before the fine-tune), or the JSON is left as it is:
        seconds of another plan would not be this run's cost. Only the three timing fields change; what
        they were is kept under ``retimed``. Returns the new record, or None when the run has no JSON.
        """
        path = self.results / f"{method}_{label}_seed{seed}.json"
        if not path.is_file():
            print(f"note: {method} {label} seed {seed} has no results JSON: nothing to retime")
            return None
        record = json.loads(path.read_text())
        folder = self.plan_dir(label, seed, method, "retime")
        if folder not in self._retimed:  # a folder left by an earlier --retime is stale: time a fresh stage
            shutil.rmtree(folder, ignore_errors=True)
            self._retimed.add(folder)
        found = self.make_plan(label, seed, method, "retime")
        again = {"flops": found["flops"], "params": found["params"], "test_top1_before_finetune":
                 found["pruned_test_top1"]}  # fmt: skip
        differs = _plan_differences(again, record)
        if differs:
            detail = ", ".join(f"{k} {again[k]} now vs {record[k]}" for k in differs)
            raise PlanChanged(f"error: {method} {label} seed {seed}: the plan stage run again gives another plan "
                              f"({detail}), so its seconds would time a different run; {path} is left as it was. "
                              "Delete that JSON and run the suite to replace the whole run")  # fmt: skip
        seconds, dense_epoch = _plan_seconds(found), found["dense_epoch_seconds"]
        record["retimed"] = {
            "was": {k: record[k] for k in ("search_seconds", "dense_epoch_seconds", "search_cost_ratio")},
            "date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", *sys.argv]),
        }  # fmt: skip
        record.update(search_seconds=seconds, dense_epoch_seconds=dense_epoch,
                      search_cost_ratio=seconds / max(dense_epoch, 1e-9))  # fmt: skip
        write_json(path, record)
        print(f"{method} {label} seed {seed}: search cost {record['retimed']['was']['search_cost_ratio']:.3f} -> "
              f"{record['search_cost_ratio']:.3f} x a dense epoch ({seconds:.0f} s / {dense_epoch:.0f} s)")
        return record


class PlanChanged(Exception):
    """A finished run's plan stage, run again, gave another plan: its seconds cannot be swapped in."""


def _plan_seconds(found: dict) -> float:
    """The plan stage's wall seconds: a search's, or a baseline's or peer's."""
    return found["search_seconds"] if "search_seconds" in found else found["baseline_seconds"]


# -- rendering -------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f} (n={len(values)})"


def _params(values: list[int]) -> str:
    """One count where the seeds' plans agree (a baseline's do), else their mean and range (a search's)."""
    if len(set(values)) == 1:
        return f"{values[0]:,}"
    return f"{statistics.mean(values):,.0f} ({min(values):,}-{max(values):,})"


def render(records: list[dict], out_md: Path, out_png: Path | None) -> str:
    """A Markdown table per budget (methods by equal-total accuracy) and an accuracy-vs-FLOPs PNG."""
    text = []
    for label in sorted({r["budget"] for r in records}):
        rows, by_method = [], {}
        for r in records:
            if r["budget"] == label:
                by_method.setdefault(r["method"], []).append(r)
        order = sorted(by_method, key=lambda m: -statistics.mean(x["rows"]["equal_total"]["test_top1"]
                                                                  for x in by_method[m]))  # fmt: skip
        first = next(iter(by_method.values()))[0]
        depth = any(m in DEEPER for m in by_method)  # a column of the blocks / layers each plan removed
        for m in order:
            rs = by_method[m]
            lat = rs[0]["latency_ms"]
            big = max(lat, key=int)
            name = m + (f" ({rs[0]['note']})" if rs[0].get("note") else "")
            name += "".join(f" [{x}]" for x in rs[0].get("search_sets", []))  # --set overrides of the plan stage
            rows.append([name, rs[0]["finetune"], f"{statistics.mean(x['flops_ratio'] for x in rs):.4f}",
                         f"{min(x['flops_over_target'] for x in rs):.4f}", _params([x["params"] for x in rs]),
                         f"{statistics.mean(x['search_cost_ratio'] for x in rs):.2f}",
                         _mean_std([x["test_top1_before_finetune"] for x in rs]),
                         _mean_std([x["rows"]["equal_finetune"]["test_top1"] for x in rs]),
                         _mean_std([x["rows"]["equal_total"]["test_top1"] for x in rs]),
                         f"{rs[0]['rows']['equal_total']['total_weight_epochs']}",
                         f"{lat[big]['pruned'] / lat[big]['dense']:.2f}"])  # fmt: skip
            if depth:
                rows[-1].insert(5, ", ".join(rs[0].get("removed_blocks", [])) or "none")
        text.append(f"### {first['teacher']} keep {first['target_flops_ratio']:.0%} ({label}), dense "
                    f"{first['dense_test_top1']:.2f}%")  # fmt: skip
        headers = ["method", "fine-tune", "FLOPs ratio", "FLOPs / target (min)", "params",
                   "search cost (x dense epoch)", "top-1 % before ft", "top-1 % equal fine-tune",
                   "top-1 % equal total epochs", "total epochs", f"CPU latency pruned/dense (batch {big})"]
        if depth:
            headers.insert(5, "removed blocks / layers (first seed)")
        text.append(format_table(rows, headers))
        text.extend(_other_plans(records, label))
    md = "\n\n".join(text) + "\n"
    out_md.write_text(md)
    if out_png is not None:
        _plot(records, out_png)
    return md


PLAN_KEYS = ("flops", "params", "test_top1_before_finetune")  # what tells two runs' plans apart


def _plan_differences(a: dict, b: dict) -> list[str]:
    """The plan fields where two runs differ (top-1 to the 0.01 it is rounded to)."""
    return [k for k in PLAN_KEYS if not math.isclose(a[k], b[k], rel_tol=0, abs_tol=0.011)]


def _other_plans(records: list[dict], label: str) -> list[str]:
    """A line for each ablation run whose plan is not its parent's run of the same seed. The ablation
    fine-tunes its parent's plan; in a fresh clone that plan stage runs again, and a search repeats
    exactly only on the same kind of CPU (float rounding differs), so the widths can differ."""
    runs = {(r["method"], r["seed"]): r for r in records if r["budget"] == label}
    lines = []
    for (method, seed), r in sorted(runs.items()):
        parent = runs.get((ABLATION_PARENTS.get(method, ""), seed))
        if parent and _plan_differences(r, parent):
            lines.append(f"Note: {method} seed {seed} fine-tuned another plan than {parent['method']} seed {seed}: the "
                         "plan stage ran again (" + ", ".join(f"{k} {r[k]:,} vs {parent[k]:,}" for k in PLAN_KEYS) +
                         f"; CPUs: {r.get('machine', {}).get('cpu', 'not recorded')} vs "
                         f"{parent.get('machine', {}).get('cpu', 'not recorded')}).")  # fmt: skip
    return lines


def _plot(records: list[dict], path: Path) -> None:
    """Several budgets: accuracy against FLOPs ratio, a marker per method. One budget (the FLOPs
    ratios then differ by rounding only): a dot per method and fairness row, sorted by accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in records})
    teacher = records[0]["teacher"]
    if len(budgets) == 1:
        by_method: dict[str, list[dict]] = {}
        for r in records:
            by_method.setdefault(r["method"], []).append(r)

        def stats(rs: list[dict], row: str) -> tuple[float, float]:
            acc = [x["rows"][row]["test_top1"] for x in rs]
            return statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0

        order = sorted(by_method, key=lambda m: stats(by_method[m], "equal_total")[0])
        fig, ax = plt.subplots(figsize=(9, 0.9 + 0.42 * len(order)), dpi=120)
        rows = {row: [stats(by_method[m], row) for m in order] for row in ("equal_finetune", "equal_total")}
        styles = (("equal_finetune", 0.16, "o", "tab:blue", "equal fine-tune epochs"),
                  ("equal_total", -0.16, "s", "tab:red", "equal total epochs"))  # fmt: skip
        for row, dy, marker, colour, label in styles:
            means, stds = zip(*rows[row], strict=True)  # each row a little above or below: no marker hides another
            ax.errorbar(means, [y + dy for y in range(len(order))], xerr=stds, marker=marker, color=colour,
                        linestyle="none", capsize=3, label=label)  # fmt: skip
            for y, (mean, _) in enumerate(rows[row]):  # right of both rows' error bars
                right = max(m + e for m, e in (rows["equal_finetune"][y], rows["equal_total"][y]))
                ax.annotate(f"{mean:.2f}", (right, y + dy), textcoords="offset points", xytext=(6, -3), fontsize=7,
                            color=colour)  # fmt: skip
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([m + "".join(f" [{x}]" for x in by_method[m][0].get("search_sets", []))
                            + (f" ({len(by_method[m])} seeds)" if len(by_method[m]) > 1 else "") for m in order])
        lo, hi = ax.get_xlim()
        if hi - lo < 2.0:  # at least 2 points wide: a gap of a few tenths must not fill the chart
            lo, hi = (lo + hi) / 2 - 1.0, (lo + hi) / 2 + 1.0
        ax.set_xlim(lo, hi + 0.06 * (hi - lo))  # room for the labels right of the rightmost markers
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.set_xlabel("CIFAR-10 test top-1 (%)")
        first = records[0]
        ax.set_title(f"{teacher} at {first['target_flops_ratio']:.0%} of its FLOPs ({budgets[0]}): "
                     f"dense {first['dense_test_top1']:.2f}%; bars: std over seeds", fontsize=10)  # fmt: skip
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: hides no point
    else:
        markers = "osD^v<>pP*XhH8d"
        fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
        for i, m in enumerate(sorted({r["method"] for r in records})):
            by_budget: dict[str, list[dict]] = {}
            for r in records:
                if r["method"] == m:
                    by_budget.setdefault(r["budget"], []).append(r)
            xs, ys, es = [], [], []
            for rs in by_budget.values():
                acc = [x["rows"]["equal_total"]["test_top1"] for x in rs]
                xs.append(statistics.mean(x["flops_ratio"] for x in rs))
                ys.append(statistics.mean(acc))
                es.append(statistics.stdev(acc) if len(acc) > 1 else 0.0)
            ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], linestyle="none", capsize=3, label=m)
        ax.set_xlabel("FLOPs of the pruned network / dense FLOPs")
        ax.set_ylabel("CIFAR-10 test top-1 (%), equal total epochs")
        ax.set_title(f"{teacher}: accuracy vs FLOPs (mean +- std over seeds where there are several)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: hides no point
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None, suites: dict[str, Suite] | None = None) -> list[dict]:
    suites = suites or SUITES
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", choices=sorted(suites), required=True, help="which configuration (BENCH.md)")
    p.add_argument("--methods", help="comma-separated subset of the suite's methods (or any known method)")
    p.add_argument("--budgets", help="comma-separated subset of the suite's budget labels, e.g. keep30")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="budget override of the plan stages, e.g. search.train_weights=false (repeatable)")
    p.add_argument("--work", help="folder of the runs (default: runs/suite/<suite>)")
    p.add_argument("--results", help="folder of the JSONs, table and PNG (default: benchmarks/results/suite/<suite>)")
    p.add_argument("--render", action="store_true", help="only render the table and PNG from the JSONs")
    p.add_argument("--retime", action="store_true",
                   help="run the plan stages of finished runs again, on a quiet machine, and replace their\n"
                        "search seconds, dense epoch and search cost ratio (the plan must come out the same)")
    args = p.parse_args(argv)
    if args.render and args.retime:
        raise SystemExit("error: --render and --retime exclude each other: --retime renders the table when done")
    suite = suites[args.suite]
    if args.set:
        suite = dataclasses.replace(suite, search_sets=tuple(args.set))
    results = Path(args.results or f"benchmarks/results/suite/{suite.name}")
    work = Path(args.work or f"runs/suite/{suite.name}")
    methods = args.methods.split(",") if args.methods else list(suite.methods)
    unknown = [m for m in methods if m not in known_methods()]
    labels = args.budgets.split(",") if args.budgets else list(suite.budgets)
    bad = [b for b in labels if b not in suite.budgets]
    if unknown:
        raise SystemExit(f"error: unknown method {unknown[0]!r}; known: {', '.join(known_methods())}")
    if bad:
        raise SystemExit(f"error: unknown budget {bad[0]!r}; the {suite.name} suite has {', '.join(suite.budgets)}")
    for package in sorted({PEER_PACKAGES[m] for m in methods if m in PEERS}):
        if importlib.util.find_spec(package) is None:
            skipped = [m for m in methods if PEER_PACKAGES.get(m) == package]
            extra = "bench" if package == "torch_pruning" else "modelopt"
            print(f"note: {package} is not installed (pip install -e '.[{extra}]'); skipping {', '.join(skipped)}")
            methods = [m for m in methods if m not in skipped]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(suite.seeds)
    results.mkdir(parents=True, exist_ok=True)
    changed: list[str] = []  # --retime: the runs left alone because their plan came out different
    if not args.render:
        runner = Runner(suite, work, results)
        for label in labels:
            for seed in seeds:
                for method in methods:
                    try:
                        runner.retime(label, seed, method) if args.retime else runner.run(label, seed, method)
                    except UserError as exc:
                        raise SystemExit(f"error: {method} {label} seed {seed}: {exc}") from None
                    except PlanChanged as exc:  # the others can still be timed again
                        print(exc, flush=True)
                        changed.append(str(exc))
    records = [json.loads(f.read_text()) for f in sorted(results.glob("*_seed*.json"))]
    if not records:
        raise SystemExit(f"error: no results in {results}; run the suite first")
    md = render(records, results / "table.md", results / "accuracy_vs_flops.png")
    print(md)
    if changed:
        raise SystemExit("\n".join(changed))
    return records


if __name__ == "__main__":
    main()
