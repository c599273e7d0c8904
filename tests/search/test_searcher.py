"""The search: allocation gradients, gates, bi-level step separation, repair onto the budget, logs, CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dais_search import count_flops, create_model
from dais_search.budget import parse_budget
from dais_search.channels import ChannelPlan, FlopsModel, random_plan, trace_channels
from dais_search.cli import main
from dais_search.search import Searcher, repair
from dais_search.search.allocation import allocate
from dais_search.search.gates import ChannelGates, attach_gates
from dais_search.search.schedules import temperature_at


def _graph(name, size=32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, num_classes=10).eval()
        return model, trace_channels(model, torch.zeros(1, 3, size, size))


# ---------------------------------------------------------------- allocation


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.05])
def test_allocation_mean_and_gradients_match_finite_differences(temperature):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(24, generator=g, dtype=torch.float64).requires_grad_()
    keep = torch.tensor(0.35, dtype=torch.float64, requires_grad=True)
    masks = allocate(scores, keep, temperature)
    assert float(masks.sum()) == pytest.approx(0.35 * 24, abs=1e-6)
    weights = torch.randn(24, generator=g, dtype=torch.float64)
    grad_s, grad_k = torch.autograd.grad((masks * weights).sum(), (scores, keep))

    def f(s, k):
        return float((allocate(s, k, temperature) * weights).sum())

    eps = 1e-6
    s0, k0 = scores.detach(), keep.detach()
    assert float(grad_k) == pytest.approx((f(s0, k0 + eps) - f(s0, k0 - eps)) / (2 * eps), rel=1e-5, abs=1e-7)
    for i in (0, 5, 17):
        e = torch.zeros_like(s0)
        e[i] = eps
        assert float(grad_s[i]) == pytest.approx((f(s0 + e, k0) - f(s0 - e, k0)) / (2 * eps), rel=1e-5, abs=1e-7)
    # Negative control: treating the threshold as a constant gives a different (wrong) ratio gradient.
    tau = torch.tensor(0.0, dtype=torch.float64)
    naive = torch.sigmoid((scores - tau) / temperature)
    assert naive.sum().item() != pytest.approx(0.35 * 24, abs=1e-3)


def test_hard_mask_agrees_with_soft_masks_at_low_temperature():
    _, graph = _graph("resnet8")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, "dais+dsa", [torch.randn(g.size) for g in groups], keep=0.4, temperature=1e-3)
    for soft, hard, group in zip(gates(), gates.hard_mask(), groups, strict=True):
        assert torch.equal(soft > 0.5, hard)
        assert int(hard.sum()) == round(0.4 * group.size)
    assert torch.allclose(gates.expected_width(), torch.tensor([0.4 * g.size for g in groups]), atol=1e-3)


def test_low_temperature_allocation_is_top_k():
    scores = torch.tensor([3.0, -1.0, 2.0, 0.5, -2.0, 1.0])
    masks = allocate(scores, torch.tensor(0.5), 0.01)
    assert torch.equal(masks > 0.5, torch.tensor([True, False, True, False, False, True]))


def test_temperature_schedules():
    assert temperature_at(0, 1.0, 0.01) == pytest.approx(1.0) and temperature_at(1, 1.0, 0.01) == pytest.approx(0.01)
    assert temperature_at(0.5, 1.0, 0.01) == pytest.approx(0.1)
    assert temperature_at(0.5, 1.0, 0.0, "cosine") == pytest.approx(0.5)


# ---------------------------------------------------------------- gates


def test_hard_gates_equal_the_pruned_model():
    model, graph = _graph("resnet20_b")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, "dais", temperature=1e-3)
    gated = attach_gates(graph, gates).eval()
    plan = random_plan(model, (1, 3, 32, 32), seed=0, graph=graph)
    with torch.no_grad():
        for i, gid in enumerate(gates.group_ids):
            alpha = gates.alpha[i]
            alpha.fill_(10.0)
            if gid in plan.kept:
                removed = torch.ones(alpha.numel(), dtype=torch.bool)
                removed[plan.kept[gid]] = False
                alpha[removed] = -10.0
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(gated(x), plan.apply(model)(x), rtol=1e-4, atol=1e-4)
        gates.alpha[0][plan.kept.get(gates.group_ids[0], [0])[0]] = -10.0  # negative control
        assert not torch.allclose(gated(x), plan.apply(model)(x), rtol=1e-4, atol=1e-4)
    assert gates.binarization_gap() < 1e-3


@pytest.mark.parametrize("mode", ["dais", "dsa", "dais+dsa"])
def test_gradients_reach_indicators_and_ratios(mode):
    model, graph = _graph("resnet8")
    groups = [g for g in graph.groups if g.prunable]
    gates = ChannelGates(groups, mode, [torch.randn(g.size) for g in groups], keep=0.6, temperature=0.5)
    gated = attach_gates(graph, gates).train()
    loss = torch.nn.functional.cross_entropy(gated(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    alpha_grads = [a.grad for a in gates.alpha]
    if mode == "dsa":
        assert all(g is None or not g.any() for g in alpha_grads), "dsa scores are fixed"
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in alpha_grads)
    if mode == "dais":
        assert gates.theta.grad is None or not gates.theta.grad.any()
    else:
        assert gates.theta.grad is not None and (gates.theta.grad != 0).all()


# ---------------------------------------------------------------- bi-level steps


def _budget(**search):
    return parse_budget({"version": 1, "model": {"name": "resnet8"}, "budget": {"flops": "50%"},
                         "search": {"epochs": 1, **search}})  # fmt: skip


def test_weights_move_only_on_weight_steps_and_gates_only_on_gate_steps():
    torch.manual_seed(0)
    model = create_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(model, _budget(), torch.zeros(1, 3, 32, 32), steps_per_epoch=4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def snapshot():
        return (
            [p.detach().clone() for p in searcher.weight_params],
            [p.detach().clone() for p in searcher.gate_params],
        )

    w0, g0 = snapshot()
    searcher.weight_step(x, y)
    w1, g1 = snapshot()
    assert any(not torch.equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    lam = searcher.lam
    stats = searcher.gate_step(x, y)
    w2, g2 = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert searcher.lam == pytest.approx(lam + (stats["flops_ratio"] - 1))  # dual ascent, rho = 1


# ---------------------------------------------------------------- repair


@pytest.mark.parametrize(
    "name,size", [("resnet20_b", 32), ("vgg16", 32), ("mobilenetv2", 32), ("tv:regnet_x_400mf", 64)]
)
@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_repair_lands_within_one_percent_of_the_target(name, size, keep):
    model, graph = _graph(name, size)
    fm = FlopsModel(graph, model, torch.zeros(1, 3, size, size))
    target = keep * fm.dense_flops
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(grp.size, generator=g) for grp in fm.groups]
    for start in (0.1, 0.95):  # far under and far over budget
        plan = random_plan(model, (1, 3, size, size), keep=start, seed=2, graph=graph)
        kept = repair(fm, plan.kept, masks, target)
        flops = float(fm.flops(fm.widths_of(kept)))
        assert 0.99 * target <= flops <= target, (start, flops / target)
        for grp in fm.groups:
            if grp.blocks and grp.id in kept:
                assert all(set(b) <= set(kept[grp.id]) or not set(b) & set(kept[grp.id]) for b in grp.blocks)


def test_repair_reports_an_impossible_budget():
    model, graph = _graph("resnet20")
    fm = FlopsModel(graph, model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="cannot meet the budget"):
        repair(fm, {}, [torch.ones(g.size) for g in fm.groups], 0.01 * fm.dense_flops)


# ---------------------------------------------------------------- the whole stage


def _write_budget(path, **search):
    lines = ["version = 1", "[model]", 'name = "resnet8"', "[data]", 'dataset = "shapes:240"', "held_out = 40",
             "batch_size = 16", "[budget]", 'flops = "50%"', "[search]", "epochs = 1", "max_steps = 6",
             "gate_every = 2", "recalibrate_batches = 2", "gate_lr = 0.1"]  # fmt: skip
    lines += [f"{k} = {v}" for k, v in search.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


REQUIRED_TAGS = [
    "search/temperature", "search/flops_ratio", "search/lambda", "search/task_loss", "search/train_top1",
    "search/val_top1", "search/val_loss", "search/binarization_gap",
]  # fmt: skip


def test_search_command_writes_plan_logs_and_resumes(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    budget = _write_budget(tmp_path / "b.toml")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["search", str(budget), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "uniform L1" in text and "FLOPs / target" in text
    for name in ("plan.json", "pruned.pt", "metrics.json", "config.json", "budget.toml", "state.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.99 <= metrics["flops_over_target"] <= 1.0
    dense = count_flops(create_model("resnet8"))
    assert metrics["flops"] <= 0.5 * dense
    plan = ChannelPlan.load(out / "plan.json")  # carries its budget, which fine-tuning checks
    assert plan.flops <= plan.meta["target_flops"] == int(metrics["target_flops"])
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(REQUIRED_TAGS) <= scalars, set(REQUIRED_TAGS) - scalars
    assert any(t.startswith("keep/") for t in scalars)
    assert any(t.startswith("mask/") for t in events.Tags()["histograms"])
    assert "search/indicators" in events.Tags()["images"]
    assert any("plan/final" in t for t in events.Tags()["tensors"])
    # The plan replays through the CLI.
    assert main(["flops", "--plan", str(out / "plan.json")]) == 0
    assert "| pruned |" in capsys.readouterr().out

    # Same --out without --resume: refused. --resume with more epochs continues from epoch 1.
    assert main(["search", str(budget), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a search" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["search", str(budget), "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["search", "{tmp}/none.toml"], "does not exist"),
        (["search", "{budget}", "--set", "search.modes=dais"], "unknown key search.modes"),
        (["search", "{budget}", "--resume", "--out", "{tmp}/fresh"], "holds no search state"),
        (["search", "{budget}", "--checkpoint", "{tmp}/missing.pt"], "model.checkpoint"),
        (["search", "{budget}", "--set", "data.dataset=mnist"], "unknown data set"),
    ],
)
def test_search_errors_before_work(tmp_path, capsys, argv, needle):
    budget = _write_budget(tmp_path / "b.toml")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{budget}", str(budget)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_indicator_heatmap_shows_masks_sorted_per_group():
    from dais_search.monitor import indicator_heatmap

    image = indicator_heatmap([torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0])], row_height=2, max_width=8)
    assert image.shape == (3, 6, 8) and image.dtype.name == "uint8"  # 2 bands of 2 rows + 2 separator rows
    yellow, blue, grey = [253, 231, 37], [68, 1, 84], [128, 128, 128]
    band1, band2 = image[:, 0].T.tolist(), image[:, 3].T.tolist()
    assert band1 == [yellow] * 4 + [blue] * 4  # sorted: kept channels first, each stretched 2x
    assert band2 == [yellow] * 2 + [blue] * 2 + [grey] * 4  # a narrower group is padded grey
