"""``[budget] round_to``: every way a plan is made keeps widths on one lattice (multiples of
``round_to``, or the full width), and still meets the budget."""

from __future__ import annotations

import warnings

import pytest
import torch
from toy_models import Grouped

from dais_search import create_model
from dais_search.budget import parse_budget
from dais_search.channels import ChannelGroup, FlopsModel, random_plan, trace_channels
from dais_search.errors import UserError
from dais_search.search import Granularity, Searcher, eagleeye_plan, global_plan, repair, uniform_plan
from dais_search.search.repair import check_feasible

SHAPE = (1, 3, 32, 32)


def _resnet(name="resnet20"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, num_classes=10).eval()
        graph = trace_channels(model, torch.zeros(SHAPE))
    return model, graph, FlopsModel(graph, model, torch.zeros(SHAPE))


def _on_lattice(kept: dict, groups, round_to: int) -> list[tuple[str, int]]:
    """The (group, width) pairs that are neither a multiple of ``round_to`` nor the full width."""
    wrong = []
    for g in groups:
        n = len(kept.get(g.id, range(g.size)))
        if n % round_to and n != g.size:
            wrong.append((g.name, n))
    return wrong


def test_allowed_widths_are_multiples_of_round_to_above_min_keep_and_the_full_width():
    g20 = ChannelGroup(id=0, size=20)
    lattice = Granularity([g20], round_to=8)
    assert lattice.widths[0] == (8, 16, 20)
    assert Granularity([g20], min_keep=10, round_to=8).widths[0] == (16, 20)
    assert Granularity([g20], round_to=32).widths[0] == (20,)  # wider than the group: all or nothing pruned
    assert Granularity([g20]).widths[0] == tuple(range(1, 21))
    assert (lattice.down(0, 13), lattice.up(0, 13), lattice.nearest(0, 13)) == (8, 16, 16)
    assert (lattice.down(0, 3), lattice.up(0, 19), lattice.nearest(0, 12)) == (8, 20, 8)  # a tie goes down
    assert (lattice.next_up(0, 16), lattice.next_up(0, 20), lattice.next_down(0, 8)) == (20, None, None)
    # Blocks of a grouped conv (2 channels) with round_to 3: multiples of lcm(2, 3) = 6.
    blocks = ChannelGroup(id=1, size=16, blocks=[(2 * i, 2 * i + 1) for i in range(8)], round_to=2, min_keep=2)
    assert Granularity([blocks], round_to=3).widths[1] == (6, 12, 16)
    with pytest.raises(ValueError, match="at least 1"):
        Granularity([g20], round_to=0)


@pytest.mark.parametrize("start", [0.1, 0.95])  # far under and far over budget
def test_repair_with_round_to_stays_on_the_lattice_and_under_the_target(start):
    model, graph, fm = _resnet()
    target = 0.5 * fm.dense_flops
    masks = [torch.rand(g.size, generator=torch.Generator().manual_seed(g.id)) for g in fm.groups]
    plan = random_plan(model, SHAPE, keep=start, seed=2, graph=graph)
    kept = repair(fm, plan.kept, masks, target, round_to=8)
    assert _on_lattice(kept, fm.groups, 8) == []
    flops = float(fm.flops(fm.widths_of(kept)))
    assert 0.9 * target <= flops <= target, flops / target
    if flops < 0.99 * target:  # the lattice is coarse: then no single step up may fit
        lattice = Granularity(fm.groups, round_to=8)
        widths = {g.id: len(kept.get(g.id, range(g.size))) for g in fm.groups}
        for g in fm.groups:
            nxt = lattice.next_up(g.id, widths[g.id])
            assert nxt is None or float(fm.flops({**widths, g.id: nxt})) > target
    # Negative control: without round_to the same repair leaves widths off the lattice of 8.
    assert _on_lattice(repair(fm, plan.kept, masks, target), fm.groups, 8) != []


@pytest.mark.parametrize("make", [uniform_plan, global_plan])
def test_baselines_keep_widths_on_the_lattice(make):
    model, _, fm = _resnet()
    target = 0.5 * fm.dense_flops
    plan = make(model, SHAPE, target, round_to=8)
    assert _on_lattice(plan.kept, fm.groups, 8) == []
    assert 0.97 * target <= plan.flops <= target
    assert _on_lattice(make(model, SHAPE, target).kept, fm.groups, 8) != []  # the control


def test_eagleeye_candidates_keep_widths_on_the_lattice():
    model, _, fm = _resnet("resnet8")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    plan = eagleeye_plan(model, SHAPE, 0.5 * fm.dense_flops, batches, batches, candidates=3, recalibrate_batches=1,
                         tolerance=0.05, round_to=4)  # fmt: skip
    sizes = [g.size for g in fm.groups]
    for record in plan.meta["candidates"]:
        assert all(w % 4 == 0 or w == s for w, s in zip(record["widths"], sizes, strict=True))
    assert _on_lattice(plan.kept, fm.groups, 4) == []


def test_round_to_respects_the_blocks_of_a_grouped_conv():
    model = Grouped().eval()
    shape = (1, 3, 8, 8)
    plan = uniform_plan(model, shape, 0.7 * FlopsModel.from_model(model, torch.zeros(shape)).dense_flops, round_to=4)
    (kept,) = plan.kept.values()
    assert len(kept) == 4 and all(c ^ 1 in kept for c in kept)  # 2 whole blocks of 2


def test_the_searched_plan_keeps_widths_on_the_lattice_and_meets_the_budget():
    budget = parse_budget({"version": 1, "model": {"name": "resnet20"}, "budget": {"flops": "50%", "round_to": 8},
                           "search": {"epochs": 1}})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = Searcher(create_model("resnet20"), budget, torch.zeros(SHAPE), 4)
    with torch.no_grad():
        for alpha in searcher.gates.alpha:
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(alpha.numel())) * 3)
        searcher.gates.temperature.fill_(0.02)
    plan = searcher.binarize()
    assert _on_lattice(plan.kept, searcher.groups, 8) == []
    assert 0.97 * searcher.flops_target <= plan.flops <= searcher.flops_target
    assert plan.meta["round_to"] == 8


def test_a_round_to_the_budget_cannot_meet_is_refused_naming_it():
    _, _, fm = _resnet()
    check_feasible(fm, 0.2 * fm.dense_flops, round_to=1)
    with pytest.raises(UserError, match="round_to = 64"):  # every group would keep all its channels
        check_feasible(fm, 0.2 * fm.dense_flops, round_to=64)
    with pytest.raises(UserError, match="budget.round_to = 0"):
        parse_budget({"version": 1, "model": {"name": "resnet20"}, "budget": {"round_to": 0}})
