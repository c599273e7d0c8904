"""Physically pruned == masked dense, FlopsModel == exact count, replay == identical, on real networks."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dais_search import count_flops, count_params, create_model
from dais_search.channels import ChannelPlan, FlopsModel, random_plan, randomize_norms, trace_channels
from dais_search.errors import UserError

CIFAR = ["resnet20", "resnet56", "resnet20_b", "vgg16", "mobilenetv2"]
TORCHVISION = [
    "tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
    "tv:densenet121", "tv:regnet_x_400mf", "tv:googlenet", "tv:shufflenet_v2_x0_5", "tv:convnext_tiny",
]  # fmt: skip


def _setup(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet's init notice, blocked-op notices
        model = create_model(name, num_classes=10).eval()
        size = 32 if not name.startswith("tv:") else 64  # small inputs keep the torchvision models fast
        shape = (1, 3, size, size)
        randomize_norms(model, torch.zeros(shape))
        graph = trace_channels(model, torch.zeros(shape))
    return model, shape, graph


def _plans(model, shape, graph):
    yield "random", random_plan(model, shape, keep=(0.1, 1.0), seed=1, graph=graph)
    yield "one-kept", random_plan(model, shape, keep=0.0, seed=2, graph=graph)
    yield "all-kept", ChannelPlan.create(model, {}, shape, graph=graph)


def _producer_conv(pruned: nn.Module, plan: ChannelPlan, graph):
    """A conv/linear that produces kept channels of a pruned group, with a kept row index."""
    for group in graph.groups:
        if group.id in plan.kept:
            for member in group.producers:
                module = pruned.get_submodule(member.name)
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.shape[0] > 0:
                    return module
    return next(m for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", CIFAR + TORCHVISION)
def test_pruned_equals_masked_and_flops_model_is_exact(name):
    model, shape, graph = _setup(name)
    fm = FlopsModel(graph, model, torch.zeros(shape))
    assert any(g.prunable for g in graph.groups), f"{name}: nothing prunable"
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        out = model(x)
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max(), "outputs must depend on the input"
    before = copy.deepcopy(model.state_dict())
    for kind, plan in _plans(model, shape, graph):
        pruned, masked = plan.apply(model), plan.mask(model)
        with torch.no_grad():
            expected, actual = masked(x), pruned(x)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()), msg=kind)

        # Exact FLOPs and params: FlopCounterMode on the sliced model == the polynomial at hard widths.
        widths = fm.widths_of(plan.kept)
        assert count_flops(pruned, shape) == plan.flops == round(float(fm.flops(widths))), kind
        assert count_params(pruned) == plan.params == round(float(fm.params(widths))), kind
        if kind == "one-kept":
            assert plan.flops < plan.dense_flops

        # Plain modules under the dense names, no masks or hooks; the dense model untouched.
        assert [n for n, _ in pruned.named_modules()] == [n for n, _ in model.named_modules()]
        assert type(pruned) is type(model) and not any(m._forward_hooks for m in pruned.modules())
        if kind == "random":
            # Negative control: change a kept channel's weights and the two must differ.
            conv = _producer_conv(pruned, plan, graph)
            with torch.no_grad():
                conv.weight[0].mul_(3.0).add_(0.5)
                assert not torch.allclose(pruned(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["resnet56", "tv:mobilenet_v3_small", "tv:densenet121"])
def test_plan_replays_from_json_on_a_fresh_model(name, tmp_path):
    model, shape, graph = _setup(name)
    plan = random_plan(model, shape, seed=3, graph=graph)
    plan.meta["model"] = name
    plan.save(tmp_path / "plan.json")
    fresh = create_model(name, num_classes=10)
    fresh.load_state_dict(model.state_dict())
    replayed = ChannelPlan.load(tmp_path / "plan.json").apply(fresh)
    original = plan.apply(model)
    a, b = replayed.state_dict(), original.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded = ChannelPlan.load(tmp_path / "plan.json")
    assert loaded.kept == plan.kept and loaded.flops == plan.flops and loaded.fingerprint == plan.fingerprint


def test_plan_refuses_another_architecture_and_bad_files(tmp_path):
    model, shape, graph = _setup("resnet20")
    plan = random_plan(model, shape, seed=0, graph=graph)
    with pytest.raises(UserError, match="another architecture"):
        plan.apply(create_model("resnet32"))
    (tmp_path / "bad.json").write_text('{"format": "dais_search.plan", "version": 1, "groups": [')
    with pytest.raises(UserError, match="not valid JSON"):
        ChannelPlan.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"format": "dais_search.plan", "version": 99}')
    with pytest.raises(UserError, match="version 99"):
        ChannelPlan.load(tmp_path / "old.json")
    with pytest.raises(UserError, match="does not exist"):
        ChannelPlan.load(tmp_path / "none.json")


def test_flops_model_gradient_matches_finite_differences():
    model, shape, graph = _setup("tv:mobilenet_v2")
    fm = FlopsModel(graph, model, torch.zeros(shape))
    g = torch.Generator().manual_seed(0)
    sizes = fm.full_widths()
    widths = (sizes * (0.2 + 0.7 * torch.rand(len(sizes), generator=g, dtype=torch.float64))).requires_grad_()
    for quantity in (fm.flops, fm.params):
        (grad,) = torch.autograd.grad(quantity(widths), widths)
        eps = 1e-3
        for i in torch.randperm(len(sizes), generator=g)[:8].tolist():
            step = torch.zeros_like(widths)
            step[i] = eps
            numeric = (quantity(widths.detach() + step) - quantity(widths.detach() - step)) / (2 * eps)
            assert float(grad[i]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-3)
        assert (grad > 0).all()  # more channels never cost fewer FLOPs/params here
    # Negative control: a wrong width vector length is refused.
    with pytest.raises(ValueError, match="one per prunable group"):
        fm.flops(widths[:-1])


def test_flops_model_soft_widths_interpolate_between_plans():
    model, shape, graph = _setup("resnet20_b")
    fm = FlopsModel(graph, model, torch.zeros(shape))
    full = fm.full_widths()
    assert round(float(fm.flops(full))) == count_flops(model, shape)
    half = fm.flops(full * 0.5)
    assert count_flops(model, shape) * 0.2 < float(half) < count_flops(model, shape) * 0.5


def resnet20_flops(widths: list[int], streams: list[int] = (16, 16, 32)) -> int:
    """FLOPs of a CIFAR ResNet-20 (batch 1, 32x32) whose nine blocks keep ``widths`` inner channels and
    whose residual streams keep ``streams`` (stage 1's channels, those stage 2's pad adds, those stage
    3's adds: the stream of stage s is the sum of the first s), by the closed form
    2 x H x W x k^2 x C_in x C_out per conv, plus the classifier."""
    s1 = streams[0]
    s2, s3 = s1 + streams[1], s1 + streams[1] + streams[2]
    flops = 2 * 32 * 32 * 9 * 3 * s1  # stem
    block = 0
    for c_in, c, size in [(s1, s1, 32), (s1, s2, 16), (s2, s3, 8)]:
        for b in range(3):
            k = widths[block]
            first_in = c_in if b == 0 else c
            flops += 2 * size * size * 9 * first_in * k + 2 * size * size * 9 * k * c
            block += 1
    return flops + 2 * s3 * 10


def test_plan_flops_match_the_closed_form_for_resnet20():
    model = create_model("resnet20")
    graph = trace_channels(model, torch.zeros(1, 3, 32, 32))
    by_name = {g.name: g for g in graph.groups if g.prunable}
    inner = [by_name[f"layer{s}.{b}.conv1"] for s in (1, 2, 3) for b in range(3)]
    streams = [by_name[n] for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2")]
    widths, kept_streams = [3, 16, 9, 1, 32, 20, 64, 7, 40], [11, 5, 30]
    kept = {g.id: list(range(k)) for g, k in zip([*inner, *streams], [*widths, *kept_streams], strict=True)}
    plan = ChannelPlan.create(model, kept, (1, 3, 32, 32), graph=graph)
    assert plan.dense_flops == resnet20_flops([g.size for g in inner]) == 81_102_080
    assert plan.flops == resnet20_flops(widths, kept_streams)
    assert plan.flops != resnet20_flops(widths, [11, 6, 30])  # one channel more differs
    inner_only = ChannelPlan.create(model, {g.id: list(range(k)) for g, k in zip(inner, widths, strict=True)},
                                    (1, 3, 32, 32), graph=graph)  # fmt: skip
    assert inner_only.flops == resnet20_flops(widths)


@pytest.mark.parametrize(
    "name", ["search_resnet56_cifar10_keep50_plan.json", "search_vs_uniform_resnet56_keep30_frozen_plan.json"]
)
def test_plans_saved_before_streams_were_followed_still_replay(name):
    # Group ids follow where groups are first produced, as before index ops were followed: these plans name
    # inner groups by the ids they had then (the streams were unprunable), and must slice the same layers.
    plan = ChannelPlan.load(Path(__file__).resolve().parents[2] / "benchmarks" / "results" / name)
    model = create_model("resnet56")
    graph = trace_channels(model, torch.zeros(plan.input_shape))
    assert all(graph.groups[g].name.endswith(".conv1") and graph.groups[g].size == plan.group_sizes[g]
               for g in plan.kept)  # fmt: skip
    assert count_flops(plan.apply(model, graph), plan.input_shape) == plan.flops
