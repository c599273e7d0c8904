"""Torch-Pruning (``pip install torch-pruning``) as a peer: its L1 pruner, uniform or global, cut to our FLOPs budget
and written as our :class:`~dais_search.channels.ChannelPlan`, so ``dais-search finetune`` trains it like ours.

What runs is Torch-Pruning's own pruner (``BasePruner``; ``MetaPruner`` is its deprecated alias) with
``MagnitudeImportance(p=1)`` as its CIFAR benchmark runs it (``benchmarks/main.py``, method ``l1``):
``pruning_ratio=1.0`` split into ``iterative_steps=400`` small steps, stepped until the FLOPs are at or under the
target. ``uniform`` is its local pruning (``global_pruning=False``: every layer loses the same fraction of its
channels); ``global`` ranks all channels together (``global_pruning=True``, scores mean-normalised per layer). The
budget is decided by our count (:func:`dais_search.cost.count_flops`), not Torch-Pruning's: the first step at or
under the target is taken, the largest model on its trajectory that fits. Local pruning keeps
``int(size * (1 - ratio))`` channels of every layer, so on networks whose widths are multiples of each other
(16/32/64) every layer loses a channel in the same step: ResNet-20/56 at 50% land at 0.93-0.94 of the target,
the step before being over it. Global pruning lands within 0.3% of it.

Torch-Pruning may only cut what our plans can express: every conv/linear layer that does not produce a prunable
channel group of ours (:func:`~dais_search.channels.trace_channels`, with the same ``ignore``) is in its
``ignored_layers``, and Torch-Pruning drops any of its groups that would cut such a layer. For the option-A CIFAR
ResNets that leaves exactly the inner channel of each block (conv1's output, conv2's input). The channels it
removes are read from the indices of the groups it yields (``pruner.step(interactive=True)``), and the plan is
accepted only if ``plan.apply(dense)`` is Torch-Pruning's model: every parameter and buffer equal (a wrong index
mapping puts another filter in some row), the same FLOPs, the same outputs (eval mode, random input, 1e-5).

Importance: ``group`` (default) is Torch-Pruning's ``MagnitudeImportance(p=1)`` as shipped: the mean over the group's
layers of each channel's L1 norm (conv1's filter, |BN gamma|, conv2's input slice), divided by the layer's mean;
``filter`` is the classic filter L1 (Li et al. 2017), ``MagnitudeImportance(p=1, group_reduction="first")``: the
producing filter alone, as our ``uniform_plan(criterion="l1")`` scores it.

    python benchmarks/peers/tp_peer.py --checkpoint ../shared/pretrained/resnet56-4bfd9763.th --model resnet56 \\
        --flops 50% --mode global --out runs/peers/tp_global_r56_50
    dais-search finetune --plan runs/peers/tp_global_r56_50/plan.json \\
        --checkpoint ../shared/pretrained/resnet56-4bfd9763.th --out runs/peers/tp_global_r56_50/finetune ...

``--flops`` also takes an absolute count (a number above 1), e.g. another plan's FLOPs, to compare at equal cost.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import shlex
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dais_search.channels import ChannelGraph, ChannelPlan, FlopsModel
from dais_search.cost import count_flops, example_input
from dais_search.errors import UserError
from dais_search.files import write_json

try:
    from .common import PRUNABLE, output_difference, parse_flops, peer_graph
    from .common import producers as group_producers
except ImportError:  # run as a script, or imported with benchmarks/peers on sys.path (the tests)
    from common import PRUNABLE, output_difference, parse_flops, peer_graph
    from common import producers as group_producers

__all__ = [
    "IMPORTANCE",
    "MODES",
    "PeerResult",
    "main",
    "prune_with_torch_pruning",
    "torch_pruning_plan",
    "tp_version",
]

MODES = ("uniform", "global")
IMPORTANCE = ("group", "filter")
ITERATIVE_STEPS = 400  # Torch-Pruning's CIFAR benchmark default (--iterative-steps)
MISSING = "the Torch-Pruning peer needs the `bench` extra: pip install -e '.[bench]' (package torch-pruning)"


def _tp():
    try:
        import torch_pruning
    except ImportError as exc:
        raise UserError(MISSING) from exc
    return torch_pruning


def tp_version() -> str:
    """The installed torch-pruning distribution's version (its ``__version__`` attribute can lag behind)."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(_tp(), "__version__", "unknown"))


@dataclass
class PeerResult:
    """What :func:`prune_with_torch_pruning` found.

    Attributes:
        plan: the plan (kept channels per group) equivalent to ``model``.
        model: Torch-Pruning's pruned copy of the dense model.
        target_flops: the budget.
        steps: pruner steps taken (each ``1 / iterative_steps`` of the channels).
        iterative_steps: the pruner's step count for a pruning ratio of 1.
        previous_flops: FLOPs one step earlier (over the target; the granularity of the trajectory).
        max_abs_diff: largest |plan.apply(dense)(x) - model(x)| on the check input.
        seconds: wall time of the pruning (tracing, stepping and checks).
        version: torch-pruning's version.
        widths: (kept, size) of every prunable group, by group id.
    """

    plan: ChannelPlan
    model: nn.Module
    target_flops: float
    steps: int
    iterative_steps: int
    previous_flops: int | None
    max_abs_diff: float
    seconds: float
    version: str
    widths: dict[int, tuple[int, int]] = field(default_factory=dict)


@contextmanager
def _single_thread() -> Iterator[None]:
    # Torch-Pruning's steps are hundreds of tiny tensor ops; intra-op threads only add overhead (25x on a
    # loaded 2-core machine). The caller's setting is restored.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


class _Survivors:
    """Which dense output channels of every conv/linear layer of the copy Torch-Pruning cuts survive, followed
    through the indices of the groups it prunes (indices into the layer as it is at that moment)."""

    def __init__(self, model: nn.Module) -> None:
        self.name_of = {m: n for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
        self.dense = {n: _out_channels(m) for m, n in self.name_of.items()}
        self.alive = {n: list(range(c)) for n, c in self.dense.items()}

    def record(self, dg, group) -> None:
        """Call before ``group.prune()``."""
        for dep, idxs in group:
            name = self.name_of.get(dep.target.module)
            if name is None or not dg.is_out_channel_pruning_fn(dep.handler):
                continue
            cut = {int(getattr(i, "idx", i)) for i in idxs}  # plain ints or _HybridIndex(idx, root_idx)
            if cut and max(cut) >= len(self.alive[name]):
                raise RuntimeError(f"Torch-Pruning cuts channel {max(cut)} of {name}, of {len(self.alive[name])}")
            self.alive[name] = [d for j, d in enumerate(self.alive[name]) if j not in cut]

    def widths(self, producers: dict[int, list]) -> dict[int, int]:
        """Kept width per group, from its first producer (cheap; :meth:`kept` checks everything)."""
        out = {}
        for gid, members in producers.items():
            m = members[0]
            out[gid] = len(m.positions) - (self.dense[m.name] - len(self.alive[m.name]))
        return out

    def kept(self, producers: dict[int, list]) -> dict[int, list[int]]:
        """Kept channels (group classes) per group; raises if Torch-Pruning cut anything else."""
        touched = {m.name for members in producers.values() for m in members}
        for name, alive in self.alive.items():
            if name not in touched and len(alive) != self.dense[name]:
                raise RuntimeError(f"Torch-Pruning cut output channels of {name}, which produces no prunable group")
        kept = {}
        for gid, members in producers.items():
            sets = []
            for m in members:
                live = set(self.alive[m.name])
                outside = set(range(self.dense[m.name])) - set(m.positions)
                if not outside <= live:
                    raise RuntimeError(
                        f"Torch-Pruning cut channels {sorted(outside - live)} of {m.name}, outside group {gid}"
                    )
                sets.append(sorted({c for pos, c in zip(m.positions, m.classes, strict=True) if pos in live}))
            if any(s != sets[0] for s in sets):
                raise RuntimeError(f"Torch-Pruning cut the producers of group {gid} differently: {sets}")
            kept[gid] = sets[0]
        return kept


def _check_same(plan: ChannelPlan, dense: nn.Module, graph: ChannelGraph, pruned: nn.Module, input_shape, seed: int,
                atol: float) -> float:  # fmt: skip
    """The plan applied to ``dense`` must be Torch-Pruning's model: same tensors, FLOPs and outputs."""
    replay = plan.apply(dense, graph)
    ours, theirs = replay.state_dict(), pruned.state_dict()
    if ours.keys() != theirs.keys():
        raise RuntimeError(f"plan and Torch-Pruning differ in tensors: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    for key, t in ours.items():
        if t.shape != theirs[key].shape or not torch.equal(t, theirs[key].to(t.device)):
            raise RuntimeError(
                f"plan.apply(dense) and Torch-Pruning's model differ at {key} ({tuple(t.shape)} vs "
                f"{tuple(theirs[key].shape)}): the channel index mapping is wrong"
            )
    flops = count_flops(pruned, input_shape)
    if flops != plan.flops:
        raise RuntimeError(f"Torch-Pruning's model has {flops:,} FLOPs, the plan {plan.flops:,}")
    diff = output_difference(replay, pruned, input_shape, seed)
    if not diff <= atol:
        raise RuntimeError(f"plan.apply(dense) and Torch-Pruning's model differ in outputs by {diff:.3g} (> {atol})")
    return diff


def prune_with_torch_pruning(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    mode: str = "uniform",
    seed: int = 0,
    importance: str = "group",
    iterative_steps: int = ITERATIVE_STEPS,
    atol: float = 1e-5,
) -> PeerResult:
    """Torch-Pruning's L1 pruner stepped to ``flops_target`` on a copy of ``model``; the plan and the pruned copy.

    Args:
        model: the dense model (not modified).
        input_shape: example input shape (with the batch dimension) for FLOPs and tracing.
        flops_target: the budget in FLOPs (our count).
        ignore: module paths whose outputs are not pruned (as in our plans).
        mode: ``uniform`` (local pruning) or ``global``.
        seed: seed of the random input of the equivalence check.
        importance: ``group`` (``MagnitudeImportance(p=1)``) or ``filter`` (``group_reduction="first"``).
        iterative_steps: steps for a pruning ratio of 1 (the granularity of the trajectory).
        atol: tolerance of the output check.

    Raises:
        UserError: torch-pruning missing, a bad option, a budget below the narrowest model.
        RuntimeError: the plan is not equivalent to Torch-Pruning's model (a bug in the mapping).
    """
    with _single_thread():
        return _prune(_tp(), model, input_shape, flops_target, ignore, mode, seed, importance, iterative_steps, atol)


def _prune(tp, model, input_shape, flops_target, ignore, mode, seed, importance, iterative_steps, atol) -> PeerResult:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if importance not in IMPORTANCE:
        raise UserError(f"unknown importance {importance!r}; use one of {', '.join(IMPORTANCE)}")
    if iterative_steps < 1:
        raise UserError(f"iterative_steps must be positive, not {iterative_steps}")
    start = time.perf_counter()
    input_shape, ignore = tuple(int(s) for s in input_shape), tuple(ignore)
    dense = copy.deepcopy(model).eval()
    example = example_input(dense, input_shape)
    graph = peer_graph(dense, example, ignore)
    producers = group_producers(graph, dense, "Torch-Pruning")
    if not producers:
        raise UserError("the model has no prunable channel groups (see the warnings of trace_channels)")
    fm = FlopsModel(graph, dense, example)
    floor = float(fm.flops({g.id: g.min_keep for g in fm.groups}))
    if floor > flops_target:
        raise UserError(f"cannot meet {flops_target:,.0f} FLOPs: the model has {floor:,.0f} at the minimum width of "
                        "every group; raise the budget")  # fmt: skip

    pruned = copy.deepcopy(dense)
    names = {m.name for members in producers.values() for m in members}
    ignored = [m for n, m in pruned.named_modules() if isinstance(m, PRUNABLE) and n not in names]
    if importance == "group":
        imp = tp.importance.MagnitudeImportance(p=1)
    else:
        imp = tp.importance.MagnitudeImportance(p=1, group_reduction="first")
    pruner_class = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
    survivors = _Survivors(pruned)
    pruner = pruner_class(pruned, example.clone(), importance=imp, global_pruning=mode == "global",
                          pruning_ratio=1.0, iterative_steps=iterative_steps, max_pruning_ratio=1.0,
                          ignored_layers=ignored, root_module_types=list(PRUNABLE))  # fmt: skip
    flops, previous = float(fm.flops(survivors.widths(producers))), None
    while flops > flops_target:
        if pruner.current_step >= iterative_steps:
            raise UserError(f"Torch-Pruning ({mode}) stopped at {flops:,.0f} FLOPs after {iterative_steps} steps, "
                            f"over the target {flops_target:,.0f}")  # fmt: skip
        for group in pruner.step(interactive=True):
            survivors.record(pruner.DG, group)
            group.prune()
        previous, flops = flops, float(fm.flops(survivors.widths(producers)))
    steps = pruner.current_step

    version = tp_version()
    meta = {"method": f"torch-pruning-{mode}", "torch_pruning": version, "importance": importance,
            "iterative_steps": iterative_steps, "steps": steps, "target_flops": int(flops_target)}  # fmt: skip
    plan = ChannelPlan.create(dense, survivors.kept(producers), input_shape, ignore, meta, graph)
    if plan.flops > flops_target:  # the FLOPs model and the exact count disagree
        raise RuntimeError(f"the plan has {plan.flops:,} FLOPs, over the target {flops_target:,.0f}")
    diff = _check_same(plan, dense, graph, pruned, input_shape, seed, atol)
    return PeerResult(plan=plan, model=pruned, target_flops=float(flops_target), steps=steps,
                      iterative_steps=iterative_steps, previous_flops=None if previous is None else round(previous),
                      max_abs_diff=diff, seconds=time.perf_counter() - start, version=version,
                      widths={g.id: (len(plan.kept.get(g.id, range(g.size))), g.size) for g in fm.groups})  # fmt: skip


def torch_pruning_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    ignore: Iterable[str] = (),
    mode: str = "uniform",
    seed: int = 0,
    **kwargs: Any,
) -> ChannelPlan:
    """The :class:`ChannelPlan` of :func:`prune_with_torch_pruning` (same arguments)."""
    return prune_with_torch_pruning(model, input_shape, flops_target, ignore, mode, seed, **kwargs).plan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from dais_search.checkpoint import load_checkpoint, model_from_checkpoint
    from dais_search.models import input_size
    from dais_search.pipeline.common import load_dense

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="dense weights (without: random weights, for smoke tests)")
    p.add_argument("--model", required=True, help="model name, e.g. resnet56")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's, else 10)")
    p.add_argument("--flops", required=True, help="budget: 50%% or 0.5 of the dense FLOPs, or a FLOPs count")
    p.add_argument("--mode", choices=MODES, default="uniform", help="uniform (local) or global pruning")
    p.add_argument("--importance", choices=IMPORTANCE, default="group",
                   help="group: MagnitudeImportance(p=1) as shipped; filter: the producing filter's L1")  # fmt: skip
    p.add_argument("--steps", type=int, default=ITERATIVE_STEPS, help=f"iterative_steps (default {ITERATIVE_STEPS})")
    p.add_argument("--ignore", nargs="*", default=[], help="module paths whose outputs are not pruned")
    p.add_argument("--seed", type=int, default=0, help="seed of the equivalence check's input")
    p.add_argument("--out", required=True, help="folder for plan.json and metrics.json")
    args = p.parse_args(argv)

    try:
        _tp()
        if args.checkpoint:
            dense, name = model_from_checkpoint(load_checkpoint(args.checkpoint), args.model, args.num_classes)
        else:
            dense, name = load_dense(args.model, None, args.num_classes or 10), args.model
        shape = (1, *input_size(name))
        with torch.no_grad():
            num_classes = args.num_classes or int(dense.eval()(example_input(dense, shape)).shape[-1])
        dense_flops = count_flops(dense, shape)
        target = parse_flops(args.flops, dense_flops)
        result = prune_with_torch_pruning(dense, shape, target, args.ignore, args.mode, args.seed,
                                          importance=args.importance, iterative_steps=args.steps)  # fmt: skip
    except UserError as exc:
        sys.exit(f"error: {exc}")
    plan = result.plan
    plan.meta.update(model=name, num_classes=num_classes, checkpoint=args.checkpoint)
    plan.save(f"{args.out}/plan.json")
    metrics = {
        "method": plan.meta["method"],
        "model": name,
        "checkpoint": args.checkpoint,
        "mode": args.mode,
        "importance": args.importance,
        "flops": plan.flops,
        "dense_flops": plan.dense_flops,
        "flops_ratio": plan.flops_ratio,
        "target_flops": result.target_flops,
        "target_ratio": result.target_flops / plan.dense_flops,
        "flops_over_target": plan.flops / result.target_flops,
        "previous_step_flops": result.previous_flops,
        "params": plan.params,
        "dense_params": plan.dense_params,
        "params_ratio": plan.params / plan.dense_params,
        "widths": {str(gid): {"kept": k, "size": n} for gid, (k, n) in result.widths.items()},
        "steps": result.steps,
        "iterative_steps": result.iterative_steps,
        "max_abs_diff": result.max_abs_diff,
        "seconds": result.seconds,
        "torch_pruning": result.version,
        "command": shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
    }
    write_json(f"{args.out}/metrics.json", metrics)
    print(f"{plan.meta['method']} ({args.importance}): {plan.flops:,} FLOPs = {plan.flops_ratio:.4f} of dense, "
          f"{plan.flops / result.target_flops:.4f} of the target; {plan.params:,} params; {result.steps} steps, "
          f"{result.seconds:.1f} s -> {args.out}/plan.json")  # fmt: skip
    return metrics



if __name__ == "__main__":
    main()
