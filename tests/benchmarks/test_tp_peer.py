"""The Torch-Pruning peer (benchmarks/peers/tp_peer.py) on a random-weight ResNet-20: budget, what it cuts, the plan
equals Torch-Pruning's model, uniform vs global widths, which channels L1 keeps, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "peers"))
import tp_peer  # noqa: E402
from common import output_difference, parse_flops, peer_graph  # noqa: E402
from tp_peer import main, prune_with_torch_pruning, torch_pruning_plan  # noqa: E402

from dais_search.channels import ChannelPlan, fingerprint  # noqa: E402
from dais_search.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from dais_search.cost import count_flops  # noqa: E402
from dais_search.errors import UserError  # noqa: E402
from dais_search.models import create_model  # noqa: E402

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny tensors: intra-op threads only add overhead (a lot of it on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    with torch.no_grad():  # BN not at its identity init, so |gamma| enters the group score
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def dense_flops(dense):
    return count_flops(dense, SHAPE)


@pytest.fixture(scope="module")
def graph(dense):
    return peer_graph(dense, torch.zeros(SHAPE), ())  # the groups the peers may cut: the streams stay whole


@pytest.fixture(scope="module")
def run(dense, dense_flops):
    cache = {}

    def get(mode, fraction=0.5, importance="group"):
        key = (mode, fraction, importance)
        if key not in cache:
            target = fraction * dense_flops
            cache[key] = prune_with_torch_pruning(dense, SHAPE, target, mode=mode, importance=importance)
        return cache[key]

    return get


@pytest.mark.parametrize("mode, fraction", [("uniform", 0.5), ("uniform", 0.47), ("global", 0.5)])
def test_meets_the_budget_with_the_largest_model_on_the_trajectory(run, dense_flops, mode, fraction):
    r = run(mode, fraction)
    target = fraction * dense_flops
    assert r.plan.flops <= target and r.plan.flops == count_flops(r.model, SHAPE)
    assert r.previous_flops > target  # one step less is over the budget: nothing larger fits
    assert r.plan.meta["method"] == f"torch-pruning-{mode}" and r.plan.meta["target_flops"] == int(target)
    if (mode, fraction) == ("uniform", 0.5):
        # Local pruning keeps int(size * (1 - r)) of every layer: at r = 0.5 exactly half of 16/32/64 (50.5% of the
        # FLOPs with the fixed stem and classifier), one step on every group loses a channel at once (46.9%).
        assert 0.93 <= r.plan.flops / target < 0.97
    else:
        assert r.plan.flops >= 0.97 * target


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_cuts_only_our_prunable_groups(run, dense, graph, mode):
    r = run(mode)
    prunable = {g.id for g in graph.groups if g.prunable}
    assert r.plan.kept and set(r.plan.kept) <= prunable
    producers = {p.name for g in graph.groups if g.prunable for p in g.producers}
    assert producers == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    pruned = dict(r.model.named_modules())
    for name, m in dense.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name not in producers:  # stem, conv2s: the residual stream
            assert pruned[name].out_channels == m.out_channels, name
    assert r.model.linear.in_features == dense.linear.in_features == 64


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_plan_equals_the_torch_pruning_model_and_a_wrong_index_does_not(run, dense, graph, mode):
    r = run(mode)
    assert output_difference(r.plan.apply(dense, graph), r.model, SHAPE) <= 1e-5
    gid, kept = next((g, k) for g, k in sorted(r.plan.kept.items()))
    removed = sorted(set(range(r.plan.group_sizes[gid])) - set(kept))
    wrong = ChannelPlan.create(dense, {**r.plan.kept, gid: sorted([removed[0], *kept[1:]])}, SHAPE, graph=graph)
    assert wrong.flops == r.plan.flops
    assert output_difference(wrong.apply(dense, graph), r.model, SHAPE) > 1e-3


def test_a_wrong_index_mapping_is_refused(dense, dense_flops, monkeypatch):
    right = tp_peer._Survivors.kept

    def shifted(self, producers):  # one group keeps its neighbour channel instead
        kept = right(self, producers)
        gid = min(g for g, k in kept.items() if len(k) < 16)
        kept[gid] = sorted({*kept[gid][1:], next(i for i in range(16) if i not in kept[gid])})
        return kept

    monkeypatch.setattr(tp_peer._Survivors, "kept", shifted)
    with pytest.raises(RuntimeError, match="index mapping is wrong"):
        prune_with_torch_pruning(dense, SHAPE, 0.5 * dense_flops)


def test_uniform_keeps_one_fraction_and_global_does_not(run):
    def fractions(r):
        return {gid: k / n for gid, (k, n) in r.widths.items()}

    uni, glo = run("uniform").widths, run("global").widths
    # uniform: kept = int(size * (1 - r)) for one r, i.e. no group keeps a whole channel more than another's share
    for kg, ng in uni.values():
        for kh, nh in uni.values():
            assert kg / ng < (kh + 1) / nh
    spread = {name: max(fractions(r).values()) - min(fractions(r).values()) for name, r in
              (("uniform", run("uniform")), ("global", run("global")))}  # fmt: skip
    assert spread["uniform"] < 1 / 16 < 0.25 < spread["global"]
    assert all(k >= 1 for k, _ in glo.values())  # global may thin a layer to little, never to nothing


@pytest.mark.parametrize("importance", ["group", "filter"])
def test_uniform_keeps_the_top_l1_channels(run, dense, graph, importance):
    r = run("uniform", importance=importance)
    modules = dict(dense.named_modules())
    for g in graph.groups:
        if not g.prunable:
            continue
        (producer,), (consumer,), (bn,) = g.producers, g.consumers, g.members
        score = modules[producer.name].weight.detach().abs().sum((1, 2, 3))
        if importance == "group":  # MagnitudeImportance(p=1): mean of the group's L1 terms
            score = (score + modules[bn.name].weight.detach().abs() +
                     modules[consumer.name].weight.detach().abs().sum((0, 2, 3))) / 3  # fmt: skip
        kept = r.plan.kept[g.id]
        assert sorted(torch.topk(score, len(kept)).indices.tolist()) == kept, g.name


def test_the_caller_model_is_untouched_and_the_plan_function(dense, dense_flops):
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    fp = fingerprint(dense)
    plan = torch_pruning_plan(dense, SHAPE, 0.6 * dense_flops, mode="global")
    assert isinstance(plan, ChannelPlan) and plan.flops <= 0.6 * dense_flops
    assert fingerprint(dense) == fp
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())


def test_errors(dense, dense_flops, monkeypatch):
    with pytest.raises(UserError, match="mode"):
        prune_with_torch_pruning(dense, SHAPE, dense_flops / 2, mode="local")
    with pytest.raises(UserError, match="minimum width"):
        prune_with_torch_pruning(dense, SHAPE, 0.01 * dense_flops)
    assert parse_flops("50%", 1000) == parse_flops("0.5", 1000) == 500 and parse_flops("300", 1000) == 300
    with pytest.raises(UserError, match="--flops"):
        parse_flops("half", 1000)
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"bench.*torch-pruning"):
        prune_with_torch_pruning(dense, SHAPE, dense_flops / 2)


def test_cli_writes_a_plan_finetune_can_read(dense, tmp_path):
    ckpt = tmp_path / "dense.pt"
    save_checkpoint(ckpt, dense, "resnet20", 10, normalize="cifar10")
    out = tmp_path / "tp"
    metrics = main(["--checkpoint", str(ckpt), "--model", "resnet20", "--flops", "50%", "--mode", "global",
                    "--out", str(out)])  # fmt: skip
    plan = ChannelPlan.load(out / "plan.json")
    assert plan.meta["model"] == "resnet20" and plan.meta["num_classes"] == 10
    assert plan.flops <= plan.meta["target_flops"] and plan.meta["method"] == "torch-pruning-global"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["flops"] == plan.flops == metrics["flops"]
    assert 0.97 <= on_disk["flops_over_target"] <= 1 and on_disk["torch_pruning"]
    teacher, _ = model_from_checkpoint(load_checkpoint(ckpt), plan.meta["model"], plan.meta["num_classes"])
    assert count_flops(plan.apply(teacher), SHAPE) == plan.flops  # what `dais-search finetune` starts from
