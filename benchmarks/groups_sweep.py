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
which float64 removes, while a wrong gate stays wrong. An eval-mode error above 1e-4 is measured again
in float64 the same way (timm's HaloNet: attention on random weights turns float32 rounding of the pruned
convolutions' shorter sums into 0.01-1 relative error; float64 gives 1e-12).

Status per model: ``ok``; ``not-supported`` (no prunable group; the op that blocked the first
one is listed); ``wrong`` (pruned != masked, or wrong output shape); ``exception``.

    python benchmarks/groups_sweep.py [--models resnet18 vit_b_16] [--json sweep.json] [--shard K/N]

The last line reads ``models: N ok: N not-supported: N wrong: N exceptions: N``.

``--source timm`` runs the same checks on timm models (``pip install 'dais-search[timm]'``; random
weights, nothing downloaded): by default on :data:`TIMM_MODELS`, the two smallest architectures of
every timm module (family), chosen by :func:`choose_timm_models`. Input: 64x64 unless the model's
pretrained config says ``fixed_input_size`` (positional embeddings, windows) or names a
``min_input_size`` above 64, or the model fails to run at 64; then its config's ``input_size``. timm's
layer scales (``gamma``), initialised near 0, get U(0.5, 1.5) first, as ``randomize_norms`` does for
``*layer_scale*``, so that a pruned channel cannot hide behind a scale of 1e-6. Its last line adds the
share of models with a prunable group beside torch-dag's 585 of 945 timm models (61.9%), and the
median fraction of FLOPs in prunable groups::

    python benchmarks/groups_sweep.py --source timm --json groups_sweep_timm.json [--resume]

With ``--json`` the file is rewritten after every model; ``--resume`` keeps its ok and not-supported rows
and runs the other models (again).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from math import prod
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

from dais_search import models
from dais_search.channels import ChannelPlan, check_plan, handler_for, random_plan, randomize_norms, trace_channels
from dais_search.channels.blocks import find_blocks
from dais_search.channels.chain import find_chain_layers
from dais_search.cost import count_flops
from dais_search.report import format_table
from dais_search.search import ChannelGates, attach_gates
from dais_search.train import classification_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm models are built with random weights: never download

# Models whose positional embeddings or window sizes fix the input resolution.
FIXED_SIZE = ("vit_", "swin_", "maxvit_")
SMALL = 64  # small inputs keep 80 torchvision (and 184 timm) models affordable on a CPU
TORCH_DAG = (585, 945)  # torch-dag's count of channel-prunable timm models (61.9%)

# The default timm models: choose_timm_models() on timm 1.0.31 (printed by `--list-timm`), the two
# architectures with the fewest parameters (ties: by name) of each of timm's 98 modules (families),
# skipping timm's own test_* models, anything over 150M parameters and a second input resolution of
# an architecture already chosen. Frozen here so that a new
# timm release does not change the sweep silently; models a later timm lacks are reported as missing.
TIMM_MODELS = [
    "beit_base_patch16_224", "beitv2_base_patch16_224", "halonet_h1", "eca_botnext26ts_256", "mobileone_s1",
    "mobileone_s0", "cait_xxs24_224", "cait_xxs36_224", "coat_tiny", "coat_lite_tiny", "convit_tiny",
    "convit_small", "convmixer_768_32", "convmixer_1024_20_ks9_p14", "convnext_zepto_rms",
    "convnext_zepto_rms_ols", "cpubone_nano", "cpubone_t0", "crossvit_tiny_240", "crossvit_9_240", "csatv2",
    "csatv2_21m", "cs3darknet_focus_s", "cs3darknet_s", "cspnext_tiny", "cspnext_s", "davit_tiny",
    "davit_small", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "densenet121",
    "densenetblur121d", "dla46x_c", "dla46_c", "dpn48b", "dpn68", "edgenext_xx_small", "edgenext_x_small",
    "efficientformer_l1", "efficientformer_l3", "efficientformerv2_s0", "efficientformerv2_s1",
    "mobilenetv2_035", "mobilenetv2_050", "efficientvim_m1", "efficientvim_m1_dist", "efficientvit_b0",
    "efficientvit_b1", "efficientvit_m0", "efficientvit_m1", "vit_tiny_patch16_dinov3_qkvb",
    "eva02_tiny_patch14_224", "fasternet_t0", "fasternet_t1", "fastvit_t8", "fastvit_t12", "focalnet_tiny_srf",
    "focalnet_tiny_lrf", "gcvit_xxtiny", "gcvit_xtiny", "ghostnet_050", "ghostnetv3_050", "hardcorenas_b",
    "hardcorenas_a", "hgnetv2_b0", "hgnetv2_b1", "hiera_tiny_224", "hiera_small_abswin_256", "sam2_hiera_tiny",
    "sam2_hiera_small", "hrnet_w18_small", "hrnet_w18_small_v2", "iformer_t", "iformer_s",
    "inception_next_atto", "inception_next_tiny", "inception_resnet_v2", "inception_v3", "inception_v4",
    "lcnetv2_small", "lcnetv2_base", "levit_128s", "levit_conv_128s", "lowformer_b0", "lowformer_b1",
    "mambaout_femto", "mambaout_kobe", "maxvit_pico_rw_256", "maxvit_rmlp_pico_rw_256", "poolformerv2_s12",
    "poolformer_s12", "gmlp_ti16_224", "gmixer_12_224", "lcnet_035", "mobilenetv3_small_050",
    "mobilenetv5_base", "mobilevit_xxs", "mobilevitv2_050", "mvitv2_tiny", "mvitv2_small",
    "naflexvit_base_patch16_parfac_gap", "naflexvit_base_patch16_gap", "nasnetalarge", "nest_tiny",
    "nest_tiny_jx", "nextvit_small", "nextvit_base", "nf_regnet_b0", "nf_regnet_b1", "pit_ti_224",
    "pit_ti_distilled_224", "pnasnet5large", "pvt_v2_b0", "pvt_v2_b1", "qwen3_vit_88m", "qwen3_vit_88m_enc",
    "rdnet_tiny", "rdnet_small", "regnetx_002", "regnety_002", "repghostnet_050", "repghostnet_058",
    "repvit_m1", "repvit_m0_9", "res2next50", "res2net50_14w_8s", "resnest14d", "resnest26d", "resnet10t",
    "resnet14t", "resnetv2_18", "resnetv2_18d", "rexnet_100", "rexnetr_100", "selecsls42", "selecsls60",
    "legacy_seresnet18", "legacy_seresnext26_32x4d", "sequencer2d_s", "sequencer2d_m", "shvit_s1", "shvit_s2",
    "skresnet18", "skresnet34", "starnet_s050", "starnet_s100", "swiftformer_xs", "swiftformer_s",
    "swin_tiny_patch4_window7_224", "swin_s3_tiny_224", "swinv2_tiny_window16_256", "swinv2_tiny_window8_256",
    "swinv2_cr_tiny_224", "swinv2_cr_tiny_ns_224", "tiny_vit_5m_224", "tiny_vit_11m_224",
    "tnt_s_legacy_patch16_224", "tnt_s_patch16_224", "tresnet_m", "tresnet_v2_l", "twins_svt_small",
    "twins_pcpvt_small", "vgg11", "vgg11_bn", "visformer_tiny", "visformer_small", "vit_tiny_patch16_224",
    "vit_xsmall_patch16_clip_224", "vit_tiny_r_s16_p8_224", "vit_small_r26_s32_224",
    "vit_srelpos_small_patch16_224", "vit_relpos_small_patch16_rpn_224", "samvit_base_patch16_224",
    "vitamin_small_224", "vitamin_base_224", "volo_d1_224", "volo_d2_224", "ese_vovnet19b_slim_dw",
    "ese_vovnet19b_slim", "legacy_xception", "xception41p", "xception41", "xcit_nano_12_p8_224",
    "xcit_nano_12_p16_224",
]  # fmt: skip


def input_size(name: str) -> int:
    if name.startswith(FIXED_SIZE) or name == "inception_v3":
        return models.input_size(f"tv:{name}")[-1]
    return SMALL


def _resolution_free(name: str) -> str:
    """``vit_tiny_patch16_384`` -> ``vit_tiny_patch16``: the architecture without its input resolution
    (a trailing number >= 160; width multipliers such as ``mobilenetv2_035`` stay)."""
    stem, _, last = name.rpartition("_")
    return stem if stem and last.isdigit() and int(last) >= 160 else name


def choose_timm_models(per_module: int = 2, max_params: float = 150e6) -> list[str]:
    """The ``per_module`` timm architectures with the fewest parameters (ties: by name) in every timm
    module, none over ``max_params``, none of timm's test_* models, and no two that differ only in
    their input resolution (``_224`` / ``_384``); parameters counted on the meta device."""
    import timm

    chosen = []
    for module in sorted(timm.list_modules()):
        sizes = []
        for name in timm.list_models(module=module):
            if name.startswith("test_"):
                continue
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False, num_classes=10)
            except Exception:  # noqa: BLE001 - a model that cannot be built on meta is not counted
                continue
            params = sum(p.numel() for p in model.parameters())
            if params <= max_params:
                sizes.append((params, name))
        picked: dict[str, str] = {}
        for _, name in sorted(sizes):
            if len(picked) < per_module:
                picked.setdefault(_resolution_free(name), name)
        chosen += picked.values()
    return chosen


def timm_families() -> dict[str, str]:
    """timm model name -> its timm module (family)."""
    import timm

    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def timm_input_shape(name: str, model: nn.Module) -> tuple[int, int, int, int]:
    """64x64 where the model takes it, else its pretrained config's input size (see the module doc)."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    native = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    min_size = cfg.min_input_size if cfg is not None else None
    if (cfg is not None and cfg.fixed_input_size) or (min_size and max(min_size[1:]) > SMALL):
        return (1, *native)
    try:
        with torch.no_grad():
            model(torch.zeros(1, native[0], SMALL, SMALL))
    except Exception:  # noqa: BLE001 - too small for this model: its own size
        return (1, *native)
    return (1, native[0], SMALL, SMALL)


@torch.no_grad()
def spread_layer_scales(model: nn.Module, seed: int = 0) -> None:
    """timm's layer scales (parameters named ``gamma*``: 1e-6 to 1e-5 at init) to U(0.5, 1.5), in place."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.split(".")[-1].startswith("gamma"):  # gamma, gamma_1 (BEiT, EVA), gamma1 (XCiT)
            p.copy_(torch.rand(p.shape, generator=g).to(p.dtype) + 0.5)


def build(name: str, source: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model (10-class head, random weights, eval mode) and its input shape."""
    if source == "timm":
        model = models.create_model(f"timm:{name}", num_classes=10).eval()
        spread_layer_scales(model)
        return model, timm_input_shape(name, model)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    size = input_size(name)
    return model, (1, 3, size, size)


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


def _no_dropout(model: nn.Module) -> None:
    """Dropout and stochastic depth off: torchvision's modules, timm's DropPath (``drop_prob``) and
    the ``drop_rate`` attributes timm models pass to ``F.dropout``."""
    for m in model.modules():
        if isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)):
            m.p = 0.0
        for attr in ("drop_prob", "drop_rate"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def train_mode_check(model, graph, plan, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Relative error of the pruned model against the gated dense one in train mode, after one
    training step of the pruned model has run (dropout and stochastic depth off: both sides
    would draw masks of different sizes)."""
    dense = randomize_norms(copy.deepcopy(model), x)
    _no_dropout(dense)
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
    out = pruned(x)
    logits = out[0] if isinstance(out, tuple) else out
    if logits.dim() == 2 and logits.shape[1] == 10:
        loss, _ = classification_loss(out, torch.arange(len(x)) % 10)
    else:  # an encoder without a classifier (timm's *_enc models): a loss on its features
        loss = logits.float().square().mean()
    loss.backward()  # a training step of the pruned model runs (auxiliary heads included)
    scale = expected.abs().max().clamp(min=1e-12)
    return float((actual - expected).abs().max() / scale)


@torch.no_grad()
def eval_mode_check(model, plan, x: torch.Tensor, dtype: torch.dtype) -> float:
    """``check_plan``'s comparison (pruned vs masked, eval mode, randomised norms) in ``dtype``."""
    dense = randomize_norms(copy.deepcopy(model), x)
    graph = graph_of(dense, plan)
    pruned, masked = plan.apply(dense, graph).eval().to(dtype), plan.mask(dense, graph).eval().to(dtype)
    expected, actual = masked(x.to(dtype)), pruned(x.to(dtype))
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def graph_of(model, plan):
    return trace_channels(model, torch.zeros(plan.input_shape), plan.ignore, warn=False)


def removable_units(model, graph) -> list:
    """The model's removable residual blocks, then its removable chain layers outside them (what a
    ``granularity = ["block", "layer", "channel"]`` search gates)."""
    blocks = find_blocks(model, graph.gm, graph.infos)
    taken = {b.owner for b in blocks} | {m for b in blocks for m in b.modules}
    return blocks + [x for x in find_chain_layers(model, graph) if x.owner not in taken and not set(x.modules) & taken]


def depth_check(model, graph, plan, shape, x: torch.Tensor, row: dict) -> None:
    """Every other removable block and chain layer removed on top of ``plan``'s channels: pruned vs
    masked in eval mode (float64 again above 1e-4, as the channel check), and the counted FLOPs."""
    units = removable_units(model, graph)
    row.update(blocks=sum(u.kind == "residual" for u in units), layers=sum(u.kind == "layer" for u in units))
    if not units:
        return
    deeper = ChannelPlan.create(model, plan.kept, shape, plan.ignore, graph=graph,
                                removed_blocks=[u.name for u in units[::2]])  # fmt: skip
    check = check_plan(model, deeper, x)
    error = check.max_rel_error
    if error > 1e-4 and check.output_shape == check.expected_shape:
        row["depth_max_rel_error_float32"] = error
        error = eval_mode_check(model, deeper, x, torch.float64)
    row["depth_max_rel_error"] = error
    if check.output_shape != check.expected_shape or error > 1e-4 or check.flops != deeper.flops:
        row.update(status="wrong", note=f"with {len(units[::2])} blocks/layers removed: error {error:.2g}, "
                                        f"FLOPs {check.flops} vs the plan's {deeper.flops}")  # fmt: skip


def sweep_one(name: str, source: str = "torchvision") -> dict:
    row: dict = {"model": name}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, shape = build(name, source)
            graph = trace_channels(model, torch.zeros(shape))
        prunable = [g for g in graph.groups if g.prunable]
        row.update(
            size=shape[-1] if shape[-1] == shape[-2] else list(shape[-2:]),
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
        x_eval = torch.randn(2, *shape[1:])
        check = check_plan(model, plan, x_eval)
        eval_error = check.max_rel_error
        if eval_error > 1e-4 and check.output_shape == check.expected_shape:
            row["max_rel_error_float32"] = eval_error  # rounding or a wrong cut? float64 tells (see above)
            eval_error = eval_mode_check(model, plan, x_eval, torch.float64)
        x = torch.randn(2, *shape[1:])
        train_error = train_mode_check(model, graph, plan, x)
        if train_error > 1e-4:
            # Deep nets in train mode (BN on the statistics of 2 images at 2x2 pixels) amplify float32
            # rounding; float64 tells rounding (error ~1e-12) from a wrong gate (no better than float32).
            row["train_max_rel_error_float32"] = train_error
            train_error = train_mode_check(model, graph, plan, x, torch.float64)
        ok = check.output_shape == check.expected_shape and max(eval_error, train_error) <= 1e-4
        row.update(
            flops_ratio=round(plan.flops_ratio, 4),
            max_rel_error=eval_error,
            train_max_rel_error=train_error,
            status="ok" if ok else "wrong",
        )
        if check.flops != plan.flops:
            row.update(status="wrong", note=f"plan says {plan.flops} FLOPs, pruned model has {check.flops}")
        depth_check(model, graph, plan, shape, x_eval, row)
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure and goes on
        row.update(status="exception", error=f"{type(exc).__name__}: {exc}"[:500], trace=traceback.format_exc()[-2000:])
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def load_rows(path: str) -> list[dict]:
    """The rows of a --json file (a list of rows, or a timm sweep's dict with its rows)."""
    with open(path) as f:
        data = json.load(f)
    return data["rows"] if isinstance(data, dict) else data


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=("torchvision", "timm"), default="torchvision", help="the models' library")
    p.add_argument(
        "--models", nargs="*", help="model names (default: every torchvision classification model, or TIMM_MODELS)"
    )
    p.add_argument("--json", help="write the rows to this JSON file (after every model)")
    p.add_argument("--resume", action="store_true", help="keep the ok / not-supported rows --json has")
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th model from the K-th (parallel runs)")
    p.add_argument(
        "--combine", nargs="+", help="print the table of these --json files (shards; later ones win) instead of running"
    )
    p.add_argument("--list-timm", action="store_true", help="print choose_timm_models() (builds every timm model)")
    args = p.parse_args(argv)
    if args.list_timm:
        print(json.dumps(choose_timm_models(), indent=1))
        return []
    if args.combine:
        by_model = {}  # a later file's row replaces an earlier one (a re-run of one model)
        for path in args.combine:
            by_model.update({row["model"]: row for row in load_rows(path)})
        return report(sorted(by_model.values(), key=lambda r: r["model"]), args.json, args.source)
    if args.source == "timm":
        names = args.models or TIMM_MODELS
    else:
        names = args.models or torchvision.models.list_models(module=torchvision.models)
    k, n = (int(v) for v in args.shard.split("/"))
    names = names[k::n]
    resume = args.resume and args.json and Path(args.json).exists()
    done = {r["model"]: r for r in load_rows(args.json) if r["status"] in ("ok", "not-supported")} if resume else {}
    torch.manual_seed(0)
    rows = [done[name] for name in names if name in done]
    for name in names:
        if name in done:
            continue
        if args.source == "timm":
            torch.manual_seed(0)  # each model's random weights independent of the ones before (resumable)
        row = sweep_one(name, args.source)
        rows.append(row)
        print(
            f"{name}: {row['status']} ({row['seconds']} s)"
            + (f" {row.get('error', '')}" if row["status"] == "exception" else ""),
            file=sys.stderr,
            flush=True,
        )
        if args.json:
            write_json(rows, args.json, args.source)
    return report(rows, args.json, args.source)


def write_json(rows: list[dict], path: str, source: str) -> None:
    data: list | dict = rows
    if source == "timm":
        import timm

        data = {"source": "timm", "timm_version": timm.__version__, "models": [r["model"] for r in rows], "rows": rows}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def summary(rows: list[dict], source: str = "torchvision") -> str:
    """The last line of the report."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "not-supported", "wrong", "exception")}
    line = (
        f"models: {len(rows)} ok: {counts['ok']} not-supported: {counts['not-supported']} "
        f"wrong: {counts['wrong']} exceptions: {counts['exception']}"
    )
    if source == "timm":
        with_groups = sum(r.get("prunable", 0) > 0 for r in rows)
        fractions = [r["prunable_flops"] for r in rows if "prunable_flops" in r]
        share = 100 * with_groups / len(rows) if rows else 0.0
        median = 100 * statistics.median(fractions) if fractions else 0.0
        line += (
            f" with prunable groups: {with_groups}/{len(rows)} = {share:.1f}% "
            f"(torch-dag: {TORCH_DAG[0]}/{TORCH_DAG[1]} = {100 * TORCH_DAG[0] / TORCH_DAG[1]:.1f}%) "
            f"median prunable FLOPs: {median:.1f}%"
        )
    return line


def report(rows: list[dict], json_path: str | None, source: str = "torchvision") -> list[dict]:
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
    if source == "timm":  # the timm module (family) of each model
        family = timm_families()
        table = [[row[0], family.get(row[0], "?"), *row[1:]] for row in table]
        headers.insert(1, "family")
    if any("blocks" in r for r in rows):  # the depth check (sweeps run since it exists)
        for line, r in zip(table, rows, strict=True):
            line[-1:-1] = [f"{r['blocks']} / {r['layers']}" if "blocks" in r else "",
                           f"{r['depth_max_rel_error']:.1e}" if "depth_max_rel_error" in r else ""]  # fmt: skip
        headers[-1:-1] = ["removable blocks / layers", "rel err, every other removed"]
    print(format_table(table, headers))
    if json_path:
        write_json(rows, json_path, source)
    print(summary(rows, source))
    return rows


if __name__ == "__main__":
    main()
