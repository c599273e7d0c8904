"""NVIDIA ModelOpt FastNAS (``pip install nvidia-modelopt``) as a peer: its search under our FLOPs budget, written as
our :class:`~dais_search.channels.ChannelPlan`, so ``dais-search finetune`` trains it like ours.

What runs is ModelOpt's own FastNAS (``modelopt.torch.nas.convert`` with mode ``fastnas``, then
``modelopt.torch.nas.search``: the two calls ``modelopt.torch.prune.prune`` makes, split so that its search space can
be restricted in between). FastNAS sorts every searchable channel axis by importance (the L2 norm of the consuming
layer's input slice), measures on the score function how much each width choice of each axis alone costs (a
sensitivity table: one score evaluation per choice), then binary-searches one threshold on that cost so that the
subnet (each axis at its narrowest width whose cost is under the threshold) meets the FLOPs constraint. The score is
top-1 accuracy (%) on held-out batches, higher is better. Before scoring a candidate ModelOpt re-estimates its BN
statistics on the calibration batches, but only when it holds at least ``MODELOPT_QUEUE_MAXLEN`` (50) of them;
with fewer it calibrates the dense model once and scores every candidate with those statistics (sliced), and says
so in a warning. The results record which (``bn_recalibration``).

Settings that are not ModelOpt's defaults, to say in the table:

* ``channel_divisor`` / ``feature_divisor`` 4 (ModelOpt: 32) for ``nn.Conv2d`` / ``nn.BatchNorm2d``, as BENCH.md
  says: with 32, only the 64-channel stage of a CIFAR ResNet is searched, between 32 and 64 channels. The ratios
  are FastNAS's own (0.05 to 1 in steps of 0.05), so a 16/32/64-channel group has 4/8/16 widths, multiples of 4.
* The search space is our prunable groups: ModelOpt's searchable hyper-parameters that are not the width of a group
  ours may prune (:func:`~dais_search.channels.trace_channels`, same ``ignore``) are fixed to their full size before
  the search. For the option-A CIFAR ResNets ModelOpt's own tracing finds exactly the inner channel of each block
  (conv1's output, conv2's input) and nothing else, so nothing is fixed there; the result is checked anyway, and a
  subnet that cuts any other layer raises.
* The budget is our count (:func:`dais_search.cost.count_flops`), not ModelOpt's (torchprofile's MACs x 2, BN left
  out, plus a few element-wise ops: 128 FLOPs more than ours on ResNet-20). The constraint passed is the target
  scaled by ModelOpt's count of the dense model over ours; if the subnet is still over the target by our count, the
  constraint is scaled down by the excess and the search rerun (from its checkpoint: the sensitivity table is not
  measured again). Fidelity is our FLOPs / target.

Fidelity is as coarse as the sensitivity table: the subnet is the widest on FastNAS's threshold path that fits, and
one step of the threshold can move several layers at once (ties are common where the score has few distinct
values). ResNet-20 at 50%: 0.935 of the target with the pretrained weights (128 held-out images), 0.935 and 0.982
with two random-weight models scored against their own predictions; a random ResNet-8 lands at 0.78. When no
subnet on its path fits (the path never reaches the narrowest width of the axis whose narrowest width loses the
most), ModelOpt still returns a subnet, over the constraint (all candidates tie at a score of -inf and the last one
wins): that is refused with a UserError.

Cost: one score evaluation per width choice of each group (ResNet-20: 76, ResNet-56: 226), each recalibrating BN on
the calibration batches first. With the whole held-out split (5,000 images) and 50 batches of 128 that is ~11k
images per evaluation, hours for ResNet-56 on 2 CPU cores; ``--score-batches`` subsamples the held-out split.

The plan: ModelOpt's exported model keeps each group's channels in its importance order; each exported filter of a
group's producer is matched to the dense filter with exactly the same weights (and bias), which gives the kept
indices. The plan is accepted only if ``plan.apply(dense)`` is ModelOpt's model: same tensor names and shapes, same
FLOPs, and the same outputs (eval mode, random input, 1e-5). ModelOpt exports without recalibrating (``export``'s
``calib=False``), so the BN statistics of its model are those of the last candidate it calibrated (or of the dense
model), not the plan's; both models therefore have their BN statistics re-estimated on the same calibration batches
(cumulative average, :func:`dais_search.train.recalibrate_bn`) before their outputs are compared. Convolution and BN
parameters are ModelOpt's untouched (it does not train). Like every peer plan, the plan carries only which channels
stay: ``plan.apply`` starts from the dense model's weights and statistics.

    python benchmarks/peers/modelopt_peer.py --checkpoint ../shared/pretrained/resnet56-4bfd9763.th --model resnet56 \\
        --flops 50% --data npz:../shared/data/cifar10.npz --held-out 5000 --out runs/peers/fastnas_r56_50

``--flops`` also takes an absolute count (a number above 1), e.g. another plan's FLOPs, to compare at equal cost.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from dais_search.channels import ChannelGraph, ChannelPlan, FlopsModel
from dais_search.cost import count_flops, example_input
from dais_search.errors import UserError
from dais_search.files import write_json
from dais_search.train import recalibrate_bn, to_model

try:
    from .common import PRUNABLE, output_difference, parse_flops, peer_graph
    from .common import producers as group_producers
except ImportError:  # run as a script, or imported with benchmarks/peers on sys.path (the tests)
    from common import PRUNABLE, output_difference, parse_flops, peer_graph
    from common import producers as group_producers

__all__ = [
    "DIVISOR",
    "RATIOS",
    "FastNASResult",
    "fastnas_plan",
    "main",
    "modelopt_version",
    "prune_with_fastnas",
    "top1_score",
]

MISSING = (
    "the ModelOpt peer needs the `modelopt` extra: pip install -e '.[modelopt]' (nvidia-modelopt, torchprofile==0.0.4)"
)
DIVISOR = 4  # BENCH.md; ModelOpt's default is 32
RATIOS = tuple(0.05 * i for i in range(1, 21))  # FastNAS's default width ratios (modelopt.torch.prune.fastnas)
MAX_TRIES = 5
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _modelopt() -> SimpleNamespace:
    """What this peer uses of ModelOpt, or the UserError telling what to install."""
    try:
        import modelopt  # noqa: F401
        import modelopt.torch.nas as mtn
        import modelopt.torch.prune as mtp
        import torchprofile  # noqa: F401  (FastNAS's FLOPs count)
        from modelopt.torch.nas.autonas import MODELOPT_QUEUE_MAXLEN
        from modelopt.torch.nas.utils import inference_flops
        from modelopt.torch.opt.utils import named_hparams
    except ImportError as exc:
        raise UserError(MISSING) from exc
    return SimpleNamespace(convert=mtn.convert, search=mtn.search, registry=mtp.pruning.PruneModeRegistry,
                           named_hparams=named_hparams, inference_flops=inference_flops,
                           queue_len=MODELOPT_QUEUE_MAXLEN)  # fmt: skip


def modelopt_version() -> str:
    """The installed nvidia-modelopt distribution's version."""
    try:
        return importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        import modelopt

        return str(getattr(modelopt, "__version__", "unknown"))


@dataclass
class FastNASResult:
    """What :func:`prune_with_fastnas` found.

    Attributes:
        plan: the plan (kept channels per group) equivalent to ``model``.
        model: ModelOpt's exported subnet (its own BN statistics, see the module docstring).
        target_flops: the budget (our count).
        flops_limits: the FLOPs constraint (ModelOpt's count) of each try; the last one gave the plan.
        modelopt_flops: ModelOpt's count of the subnet.
        tries: searches run (1 unless the first landed over the target by our count).
        score_evals: score-function calls (the sensitivity table; reruns reuse it).
        original_score: the score of the dense model (after ModelOpt's BN calibration).
        predicted_drop: FastNAS's objective for the subnet: the largest single-axis score drop of its widths.
        subnet_score: the score of the plan's model with BN re-estimated on the calibration batches.
        bn_recalibration: ``per-candidate`` or ``dense only`` (fewer than 50 calibration batches).
        frozen: ModelOpt hyper-parameters fixed to full size because they are not widths of our prunable groups.
        sensitivity: FastNAS's table: score drop of each width of each searched hyper-parameter alone.
        max_abs_diff: largest output difference of the equivalence check.
        seconds: wall time (conversion, search, checks).
        version: nvidia-modelopt's version.
        widths: (kept, size) of every prunable group, by group id.
        choices: the widths ModelOpt could choose for each group, by group id.
    """

    plan: ChannelPlan
    model: nn.Module
    target_flops: float
    flops_limits: list[float]
    modelopt_flops: float
    tries: int
    score_evals: int
    original_score: float | None
    predicted_drop: float | None
    subnet_score: float
    bn_recalibration: str
    frozen: list[str]
    sensitivity: dict[str, dict[int, float]]
    max_abs_diff: float
    seconds: float
    version: str
    widths: dict[int, tuple[int, int]] = field(default_factory=dict)
    choices: dict[int, list[int]] = field(default_factory=dict)


def top1_score(batches: Batches) -> Callable[[nn.Module], float]:
    """ModelOpt's ``score_func``: top-1 (%) on ``batches``. ``model.eval()`` is what makes ModelOpt re-estimate a
    candidate's BN statistics (its patched ``eval`` hook), so the function calls it first."""

    def score(model: nn.Module) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in batches:
                x, y = to_model(x, y, model)
                correct += int((model(x).argmax(-1) == y).sum())
                total += int(y.numel())
        return 100.0 * correct / max(total, 1)

    return score


def _width_hparam(module: nn.Module):
    return module.get_hparam("out_features" if isinstance(module, nn.Linear) else "out_channels")


def _rules(divisor: int) -> dict[str, dict[str, Any]]:
    """FastNAS's rules for Conv2d / BatchNorm2d with ``divisor`` (other layer types keep ModelOpt's defaults)."""
    return {
        "nn.Conv2d": {"channels_ratio": RATIOS, "kernel_size": (), "channel_divisor": divisor},
        "nn.BatchNorm2d": {"features_ratio": RATIOS, "feature_divisor": divisor},
    }


def _convert(mo: SimpleNamespace, dense: nn.Module, producers: dict[int, list], divisor: int):
    """A FastNAS search space on a copy of ``dense``, restricted to our groups' widths.

    Returns:
        (model, frozen names, {group id: width choices} of the groups ModelOpt can search)
    """
    model = mo.convert(copy.deepcopy(dense), [("fastnas", _rules(divisor))], registry=mo.registry)  # as mtp.prune
    ours = {}
    for gid, members in producers.items():
        for m in members:
            try:
                ours[id(_width_hparam(model.get_submodule(m.name)))] = gid
            except (AttributeError, KeyError):  # not converted by ModelOpt: stays at full width
                pass
    frozen, choices = [], {}
    for name, hp in mo.named_hparams(model, configurable=True):
        if id(hp) in ours:
            choices[ours[id(hp)]] = sorted(int(c) for c in hp.choices)
        else:
            hp.choices = [hp.original]  # not a width our plans can express: fixed, never searched
            frozen.append(name)
    return model, frozen, choices


def _kept(subnet: nn.Module, dense: nn.Module, producers: dict[int, list]) -> dict[int, list[int]]:
    """Kept channels per group, matching ModelOpt's (reordered) filters to the dense ones by exact equality.

    Raises RuntimeError if ModelOpt cut a layer outside our groups or a filter has no dense twin."""
    dense_mods, sub_mods = dict(dense.named_modules()), dict(subnet.named_modules())
    touched = {m.name for members in producers.values() for m in members}
    for name, module in dense_mods.items():
        if not isinstance(module, PRUNABLE) or name in touched:
            continue
        sub = sub_mods.get(name)
        if sub is None or sub.weight.shape[0] != module.weight.shape[0]:
            raise RuntimeError(f"ModelOpt cut output channels of {name}, which produces no prunable group of ours")
    kept = {}
    for gid, members in producers.items():
        sets = []
        for m in members:
            d, s = dense_mods[m.name], sub_mods[m.name]
            dw, sw = d.weight.detach().flatten(1), s.weight.detach().flatten(1)
            if d.bias is not None:
                dw = torch.cat([dw, d.bias.detach()[:, None]], 1)
                sw = torch.cat([sw, s.bias.detach()[:, None]], 1)
            if sw.shape[1] != dw.shape[1]:
                raise RuntimeError(f"ModelOpt changed the input width of {m.name}: {tuple(s.weight.shape)}")
            same = (sw[:, None, :] == dw[None, :, :]).all(-1)  # exported row j equals dense row i
            rows, used = [], set()
            for j in range(sw.shape[0]):
                match = next((int(i) for i in same[j].nonzero().flatten() if int(i) not in used), None)
                if match is None:
                    raise RuntimeError(f"filter {j} of ModelOpt's {m.name} equals no unused dense filter")
                used.add(match)
                rows.append(match)
            outside = set(range(dw.shape[0])) - set(m.positions)
            if not outside <= used:
                raise RuntimeError(f"ModelOpt cut channels {sorted(outside - used)} of {m.name}, outside group {gid}")
            sets.append(sorted({c for pos, c in zip(m.positions, m.classes, strict=True) if pos in used}))
        if any(s != sets[0] for s in sets):
            raise RuntimeError(f"ModelOpt cut the producers of group {gid} differently: {sets}")
        kept[gid] = sets[0]
    return kept


def _check_same(plan: ChannelPlan, dense: nn.Module, graph: ChannelGraph, subnet: nn.Module, input_shape,
                calib: Batches, seed: int, atol: float) -> float:  # fmt: skip
    """The plan applied to ``dense`` must be ModelOpt's subnet: same tensor names and shapes, same FLOPs, and the
    same outputs once both have BN statistics re-estimated on the same ``calib`` batches (ModelOpt's own are stale,
    see the module docstring). Channels of a group may be in another order (ModelOpt's importance order)."""
    replay = plan.apply(dense, graph)
    ours, theirs = replay.state_dict(), subnet.state_dict()
    if ours.keys() != theirs.keys():
        raise RuntimeError(f"plan and ModelOpt differ in tensors: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    for key, t in ours.items():
        if t.shape != theirs[key].shape:
            raise RuntimeError(f"plan.apply(dense) and ModelOpt's model differ at {key}: {tuple(t.shape)} vs "
                               f"{tuple(theirs[key].shape)}")  # fmt: skip
    flops = count_flops(subnet, input_shape)
    if flops != plan.flops:
        raise RuntimeError(f"ModelOpt's model has {flops:,} FLOPs, the plan {plan.flops:,}")
    a, b = copy.deepcopy(replay), copy.deepcopy(subnet)
    if calib:
        a, b = recalibrate_bn(a, calib, len(calib)), recalibrate_bn(b, calib, len(calib))
    diff = output_difference(a, b, input_shape, seed)
    if not diff <= atol:
        raise RuntimeError(f"plan.apply(dense) and ModelOpt's model differ in outputs by {diff:.3g} (> {atol}): "
                           "the channel index mapping is wrong")  # fmt: skip
    return diff


def prune_with_fastnas(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    score_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calib_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    ignore: Iterable[str] = (),
    divisor: int = DIVISOR,
    max_tries: int = MAX_TRIES,
    seed: int = 0,
    atol: float = 1e-5,
    verbose: bool = False,
) -> FastNASResult:
    """ModelOpt FastNAS on a copy of ``model`` under ``flops_target`` (our count); the plan and ModelOpt's subnet.

    Args:
        model: the dense model (not modified).
        input_shape: example input shape (with the batch dimension) for FLOPs and tracing.
        flops_target: the budget in FLOPs (our count).
        score_batches: (images, labels) batches of the score function (top-1 on them; held-out data).
        calib_batches: (images, labels) batches for ModelOpt's BN calibration (its ``data_loader``); at least 50
            for it to re-estimate every candidate's statistics. Also used for the equivalence check.
        ignore: module paths whose outputs are not pruned (as in our plans).
        divisor: ``channel_divisor`` / ``feature_divisor`` of Conv2d / BatchNorm2d.
        max_tries: searches at most, tightening the constraint when one lands over the target by our count.
        seed: seed of the random input of the equivalence check.
        atol: tolerance of the output check.
        verbose: ModelOpt's ``verbose`` (search-space and search statistics).

    Raises:
        UserError: nvidia-modelopt missing, a bad option, a budget below FastNAS's narrowest subnet.
        RuntimeError: the plan is not equivalent to ModelOpt's model, or ModelOpt cut outside our groups.
    """
    mo = _modelopt()
    queue_len = mo.queue_len
    if divisor < 1 or max_tries < 1:
        raise UserError(f"divisor and max_tries must be positive, not {divisor} and {max_tries}")
    start = time.perf_counter()
    input_shape, ignore = tuple(int(s) for s in input_shape), tuple(ignore)
    score_batches, calib = list(score_batches), list(calib_batches)
    if not score_batches:
        raise UserError("FastNAS needs score batches (held-out data) for its score function")
    dense = copy.deepcopy(model).eval()
    example = example_input(dense, input_shape)
    graph = peer_graph(dense, example, ignore)
    producers = group_producers(graph, dense, "ModelOpt")
    if not producers:
        raise UserError("the model has no prunable channel groups (see the warnings of trace_channels)")

    fm = FlopsModel(graph, dense, example)
    _, _, choices = _convert(mo, dense, producers, divisor)  # only to read the search space
    if not choices:
        raise UserError("ModelOpt finds none of our prunable groups searchable (no configurable widths)")
    floor = float(fm.flops({gid: c[0] for gid, c in choices.items()}))
    if floor > flops_target:
        raise UserError(f"cannot meet {flops_target:,.0f} FLOPs: FastNAS's narrowest subnet (divisor {divisor}) has "
                        f"{floor:,.0f}; raise the budget")  # fmt: skip

    dense_mo = float(mo.inference_flops(dense, dummy_input=example, unit=1.0))
    dense_ours = count_flops(dense, input_shape)
    limit = flops_target * dense_mo / dense_ours
    score = top1_score(score_batches)
    evals = [0]

    def counted(m: nn.Module) -> float:
        evals[0] += 1
        return score(m)

    limits, plan, subnet, state, frozen = [], None, None, None, []
    with tempfile.TemporaryDirectory(prefix="fastnas-") as tmp, warnings.catch_warnings():
        if len(calib) >= queue_len:  # else keep ModelOpt's "queue not filled" warning: BN is dense-only
            warnings.filterwarnings("ignore", message=".*queue not filled.*")
        warnings.filterwarnings("ignore", message=".*Per-rank checkpoint.*|.*does not exist! Initializing.*")
        for _ in range(max_tries):
            limits.append(limit)
            searchable, frozen, _ = _convert(mo, dense, producers, divisor)
            config = {"score_func": counted, "checkpoint": str(Path(tmp) / "fastnas.pth"), "verbose": verbose}
            if calib:
                config.update(data_loader=calib, max_iter_data_loader=len(calib))
            subnet, state = mo.search(searchable, {"flops": limit}, example.clone(), config)
            if not state["best"].get("is_satisfied", False):  # ModelOpt returns its last (failed) candidate then
                tried = state["best"].get("constraints", {}).get("flops", float("nan"))
                raise UserError(f"FastNAS found no subnet under its constraint of {limit:,.0f} FLOPs (its count; "
                                f"{flops_target:,.0f} ours): the last it tried has {tried:,.0f}; raise the budget")
            kept = _kept(subnet, dense, producers)
            meta = {"method": "modelopt-fastnas", "modelopt": modelopt_version(), "channel_divisor": divisor,
                    "feature_divisor": divisor, "target_flops": int(flops_target)}  # fmt: skip
            plan = ChannelPlan.create(dense, kept, input_shape, ignore, meta, graph)
            if plan.flops <= flops_target:
                break
            limit *= flops_target / plan.flops * (1 - 1e-6)
        else:
            raise UserError(f"FastNAS stayed over {flops_target:,.0f} FLOPs (our count) after {max_tries} searches: "
                            f"{plan.flops:,} with a constraint of {limits[-1]:,.0f}")  # fmt: skip

    subnet.eval()
    diff = _check_same(plan, dense, graph, subnet, input_shape, calib, seed, atol)
    replay = plan.apply(dense, graph)
    if calib:
        replay = recalibrate_bn(replay, calib, len(calib))
    best = state.get("best", {})
    drop = -float(best["metric"]) if isinstance(best.get("metric"), (int, float)) else None
    plan.meta.update(tries=len(limits), flops_limit=limits[-1], score_evals=evals[0])
    table = state.get("sensitivity_map", {})
    return FastNASResult(
        plan=plan, model=subnet, target_flops=float(flops_target), flops_limits=limits,
        modelopt_flops=float(best.get("constraints", {}).get("flops", float("nan"))), tries=len(limits),
        score_evals=evals[0], original_score=state.get("original_score"), predicted_drop=drop,
        subnet_score=score(replay), bn_recalibration="per-candidate" if len(calib) >= queue_len else "dense only",
        frozen=frozen, sensitivity={k: {int(w): float(v) for w, v in t.items()} for k, t in table.items()},
        max_abs_diff=diff, seconds=time.perf_counter() - start, version=modelopt_version(),
        widths={g.id: (len(plan.kept.get(g.id, range(g.size))), g.size) for g in graph.groups if g.id in producers},
        choices=choices,
    )  # fmt: skip


def fastnas_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_target: float,
    score_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calib_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    ignore: Iterable[str] = (),
    **kwargs: Any,
) -> ChannelPlan:
    """The :class:`ChannelPlan` of :func:`prune_with_fastnas` (same arguments)."""
    return prune_with_fastnas(model, input_shape, flops_target, score_batches, calib_batches, ignore, **kwargs).plan


def _take(loader: Iterable, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of one pass over ``loader`` (0: all of them)."""
    out = []
    for i, (x, y) in enumerate(loader):
        if n and i >= n:
            break
        out.append((x, y))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from dais_search.checkpoint import load_checkpoint, model_from_checkpoint
    from dais_search.data import load_dataset, make_loader, train_val_split
    from dais_search.models import input_size
    from dais_search.pipeline.common import load_dense

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="dense weights (without: random weights, for smoke tests)")
    p.add_argument("--model", required=True, help="model name, e.g. resnet56")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's, else the data's)")
    p.add_argument("--flops", required=True, help="budget: 50%% or 0.5 of the dense FLOPs, or a FLOPs count")
    p.add_argument("--data", default="npz:../shared/data/cifar10.npz", help="data set spec (dais_search.data)")
    p.add_argument("--data-dir", default="data", help="root of torchvision data sets")
    p.add_argument("--held-out", type=int, default=5000, help="held-out split of the training images (BENCH.md)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split (BENCH.md: 0)")
    p.add_argument("--normalize", default="imagenet", help="input normalisation (the teachers': imagenet)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of score and calibration batches")
    p.add_argument("--score-batches", type=int, default=0,
                   help="held-out batches the score function uses (0: the whole held-out split)")  # fmt: skip
    p.add_argument("--calib-batches", type=int, default=50,
                   help="augmented held-out batches for ModelOpt's BN calibration (>= 50: per candidate)")  # fmt: skip
    p.add_argument("--divisor", type=int, default=DIVISOR, help=f"Conv2d/BatchNorm2d divisor (default {DIVISOR})")
    p.add_argument("--ignore", nargs="*", default=[], help="module paths whose outputs are not pruned")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration loader and the check's input")
    p.add_argument("--verbose", action="store_true", help="ModelOpt's verbose search output")
    p.add_argument("--out", required=True, help="folder for plan.json and metrics.json")
    args = p.parse_args(argv)

    try:
        _modelopt()
        splits = load_dataset(args.data, args.data_dir)
        if args.checkpoint:
            dense, name = model_from_checkpoint(load_checkpoint(args.checkpoint), args.model, args.num_classes)
        else:
            dense, name = load_dense(args.model, None, args.num_classes or splits.num_classes), args.model
        shape = (1, *input_size(name))
        with torch.no_grad():
            num_classes = int(dense.eval()(example_input(dense, shape)).shape[-1])
        _, held = train_val_split(splits.train, args.held_out, args.split_seed)
        image = shape[-1]
        # as our search and EagleEye: scored on plain held-out batches, BN calibrated on augmented ones
        score = _take(make_loader(held, args.batch_size, False, args.normalize, image_size=image), args.score_batches)
        loader = make_loader(held, args.batch_size, True, args.normalize, args.seed + 1, image_size=image,
                             drop_last=True)  # fmt: skip
        calib = []
        while len(calib) < args.calib_batches:  # a small held-out split: round it again (new shuffle and crops)
            more = _take(loader, args.calib_batches - len(calib))
            if not more:
                raise UserError(f"the held-out split ({len(held)} images) has no full batch of {args.batch_size}")
            calib += more
        target = parse_flops(args.flops, count_flops(dense, shape))
        result = prune_with_fastnas(dense, shape, target, score, calib, args.ignore, divisor=args.divisor,
                                    seed=args.seed, verbose=args.verbose)  # fmt: skip
    except UserError as exc:
        sys.exit(f"error: {exc}")
    plan = result.plan
    plan.meta.update(model=name, num_classes=num_classes, checkpoint=args.checkpoint)
    plan.save(f"{args.out}/plan.json")
    metrics = {
        "method": plan.meta["method"],
        "model": name,
        "checkpoint": args.checkpoint,
        "data": args.data,
        "held_out": args.held_out,
        "score_images": sum(int(y.numel()) for _, y in score),
        "calib_batches": len(calib),
        "bn_recalibration": result.bn_recalibration,
        "channel_divisor": args.divisor,
        "feature_divisor": args.divisor,
        "flops": plan.flops,
        "dense_flops": plan.dense_flops,
        "flops_ratio": plan.flops_ratio,
        "target_flops": result.target_flops,
        "target_ratio": result.target_flops / plan.dense_flops,
        "flops_over_target": plan.flops / result.target_flops,
        "modelopt_flops": result.modelopt_flops,
        "modelopt_flops_limits": result.flops_limits,
        "tries": result.tries,
        "params": plan.params,
        "dense_params": plan.dense_params,
        "params_ratio": plan.params / plan.dense_params,
        "widths": {str(gid): {"kept": k, "size": n} for gid, (k, n) in result.widths.items()},
        "width_choices": {str(gid): c for gid, c in result.choices.items()},
        "frozen_hparams": result.frozen,
        "sensitivity": {k: {str(w): v for w, v in t.items()} for k, t in result.sensitivity.items()},
        "score_evals": result.score_evals,
        "dense_held_out_top1": result.original_score,
        "predicted_drop": result.predicted_drop,
        "pruned_held_out_top1": result.subnet_score,
        "max_abs_diff": result.max_abs_diff,
        "seconds": result.seconds,
        "modelopt": result.version,
        "torch": torch.__version__,
        "command": shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
    }
    write_json(f"{args.out}/metrics.json", metrics)
    print(f"{plan.meta['method']} (divisor {args.divisor}): {plan.flops:,} FLOPs = {plan.flops_ratio:.4f} of dense, "
          f"{plan.flops / result.target_flops:.4f} of the target; {plan.params:,} params; {result.score_evals} score "
          f"evaluations, {result.tries} search(es), {result.seconds:.1f} s -> {args.out}/plan.json")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
