"""Channel importance criteria, checked by hand on toy nets, and their registry."""

from __future__ import annotations

import pytest
import torch
from toy_models import CatPlusConv, Residual, analyse, group_of

from dais_search.errors import UserError
from dais_search.search.importance import bn_scale, get_importance, l1_norm, list_importance, register_importance


def _filter_l1(conv: torch.nn.Conv2d) -> list[float]:
    """Sum of |w| over each output channel's filter, one channel at a time (the bias not included)."""
    return [float(conv.weight[c].detach().abs().sum()) for c in range(conv.out_channels)]


def test_l1_sums_the_filter_norms_of_the_producers_an_add_ties():
    model = Residual().eval()
    groups, _ = analyse(model)
    group = group_of(groups, "conv_a")
    assert [p.name for p in group.producers] == ["conv_a", "conv_b"]
    expected = [a + b for a, b in zip(_filter_l1(model.conv_a), _filter_l1(model.conv_b), strict=True)]
    assert get_importance("l1").score is l1_norm
    score = l1_norm(model, group)
    assert score.shape == (8,)
    torch.testing.assert_close(score, torch.tensor(expected))
    # conv_b counts: zeroing its filter 3 lowers channel 3's score by that filter's norm, and only it.
    drop = _filter_l1(model.conv_b)[3]
    with torch.no_grad():
        model.conv_b.weight[3] = 0
    torch.testing.assert_close(score - l1_norm(model, group), torch.tensor([0.0] * 3 + [drop] + [0.0] * 4))


def test_l1_follows_each_producers_channel_positions():
    """cat([a, c]) + b: a's group is a's four channels and b's first four, c's group c's and b's last four."""
    model = CatPlusConv().eval()
    groups, _ = analyse(model)
    a, c, b = _filter_l1(model.a), _filter_l1(model.c), _filter_l1(model.b)
    expected_a = [x + y for x, y in zip(a, b[:4], strict=True)]
    expected_c = [x + y for x, y in zip(c, b[4:], strict=True)]
    torch.testing.assert_close(l1_norm(model, group_of(groups, "a")), torch.tensor(expected_a))
    torch.testing.assert_close(l1_norm(model, group_of(groups, "c")), torch.tensor(expected_c))


def test_bn_criterion_is_the_absolute_bn_scale_and_l1_without_bn():
    model = Residual().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, -0.1, 3.0, 0.0, -1.5, 0.25]))
    groups, _ = analyse(model)
    group = group_of(groups, "conv_a")
    assert [m.name for m in group.members] == ["bn"]
    assert get_importance("bn").score is bn_scale
    torch.testing.assert_close(bn_scale(model, group), model.bn.weight.detach().abs())
    head = group_of(groups, "head")  # no BN on the logits: the L1 filter norm instead
    torch.testing.assert_close(bn_scale(model, head), torch.tensor(_filter_l1(model.head)))


def test_unknown_criterion_is_a_user_error_listing_the_registered_ones():
    assert {"bn", "l1"} <= set(list_importance())
    with pytest.raises(UserError) as caught:
        get_importance("l3")
    assert "'l3'" in str(caught.value)
    assert all(name in str(caught.value) for name in list_importance())


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'l1' is already registered") as caught:
        register_importance("l1")(lambda model, group: torch.zeros(group.size))
    assert not isinstance(caught.value, UserError)  # a programming error, not a user's
    assert get_importance("l1").score is l1_norm


# -- weight criteria beyond L1 ------------------------------------------------------------------


def test_l2_is_the_norm_of_all_producing_filters_together():
    model = Residual().eval()
    groups, _ = analyse(model)
    group = group_of(groups, "conv_a")
    a, b = model.conv_a.weight.detach(), model.conv_b.weight.detach()
    expected = [float((a[c].square().sum() + b[c].square().sum()).sqrt()) for c in range(8)]
    torch.testing.assert_close(get_importance("l2")(model, group), torch.tensor(expected))


def test_l2_and_l1_rank_a_peaked_filter_against_a_flat_one_differently():
    """[3, 0, 0, 0] has L1 3 and L2 3; [1, 1, 1, 1] has L1 4 and L2 2: each norm keeps another one."""
    conv = torch.nn.Conv2d(4, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1]])[:, :, None, None])
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1)).eval()
    groups, _ = analyse(model, shape=(1, 4, 3, 3))
    group = group_of(groups, "0")
    torch.testing.assert_close(get_importance("l2")(model, group), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(get_importance("l1")(model, group), torch.tensor([3.0, 4.0]))


def _fpgm_layer():
    """Six 1x1 filters around a large common offset c, so their L1 norms are nearly equal:
    c +- v, c, c +- u and c + w. Filter 2 (c) is the geometric median, filter 5 far from all."""
    conv = torch.nn.Conv2d(4, 6, 1, bias=False)
    c = torch.full((4,), 10.0)
    v, u, w = torch.tensor([1.0, -1.0, -0.5, 0.0]), torch.tensor([0.5, 0.5, 0.0, -1.0]), torch.tensor([-3.0, 3, -3, 3])
    rows = torch.stack([c + v, c - v, c, c + u, c - u, c + w])
    with torch.no_grad():
        conv.weight.copy_(rows[:, :, None, None])
    return conv, rows


def test_fpgm_is_the_sum_of_distances_and_ranks_the_median_filter_last():
    conv, rows = _fpgm_layer()
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1)).eval()
    groups, _ = analyse(model, shape=(1, 4, 3, 3))
    group = group_of(groups, "0")
    expected = torch.tensor([sum(float((rows[i] - rows[j]).norm()) for j in range(6)) for i in range(6)])
    score = get_importance("fpgm")(model, group)
    torch.testing.assert_close(score, expected)
    assert int(score.argmin()) == 2 and int(score.argmax()) == 5  # the median goes first, the outlier stays
    # Negative control: L1 ranks them otherwise (filter 0 is the smallest there, filter 1 the largest).
    l1 = get_importance("l1")(model, group)
    assert int(l1.argmin()) == 0 and int(l1.argmax()) == 1


def test_random_scores_follow_the_seed_and_the_group():
    from dais_search.search.importance import Evidence

    model = Residual().eval()
    groups, _ = analyse(model)
    group = group_of(groups, "conv_a")
    random = get_importance("random")
    a, b = random(model, group, Evidence(seed=1)), random(model, group, Evidence(seed=1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, random(model, group, Evidence(seed=2)))
    assert a.shape == (8,) and bool(((a >= 0) & (a < 1)).all())


# -- data criteria --------------------------------------------------------------------------------


class Probed(torch.nn.Module):
    """conv1 -> BN -> ReLU -> conv2 -> GAP -> fc: the group of conv1 is read by conv2 only (and that of
    conv2 by fc)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(6)
        self.conv2 = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def hidden(self, x):
        return torch.relu(self.bn(self.conv1(x)))

    def forward(self, x):
        return self.fc(self.conv2(self.hidden(x)).mean((2, 3)))


def _probed():
    torch.manual_seed(0)
    model = Probed()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.copy_(torch.tensor([-50.0, 0.2, -0.1, 0.0, 50.0, 0.3]))  # channel 0 dead, 4 always on
    model.eval()
    from dais_search.channels import trace_channels

    graph = trace_channels(model, torch.zeros(1, 3, 8, 8), warn=False)
    batches = [(torch.randn(5, 3, 8, 8), torch.randint(0, 3, (5,))) for _ in range(3)]
    return model, graph, batches


def test_apoz_is_one_minus_the_fraction_of_zeros_after_the_activation():
    from dais_search.search import score_groups

    model, graph, batches = _probed()
    gid = group_of(graph.groups, "conv1").id
    with torch.no_grad():
        hidden = torch.cat([model.hidden(x) for x, _ in batches])
    expected = 1 - (hidden == 0).float().mean((0, 2, 3))
    score = score_groups(model, graph, "apoz", batches=batches)[gid]
    torch.testing.assert_close(score, expected)
    assert float(score[0]) == 0.0 and float(score[4]) == 1.0  # the dead channel goes first


def test_entropy_of_the_pooled_activation_matches_a_histogram():
    import numpy as np

    from dais_search.search import score_groups
    from dais_search.search.importance import ENTROPY_BINS

    model, graph, batches = _probed()
    gid = group_of(graph.groups, "conv1").id
    with torch.no_grad():
        pooled = torch.cat([model.hidden(x).mean((2, 3)) for x, _ in batches]).double().numpy()
    expected = []
    for c in range(6):
        if pooled[:, c].max() == pooled[:, c].min():
            expected.append(0.0)
            continue
        counts, _ = np.histogram(pooled[:, c], bins=ENTROPY_BINS)
        p = counts[counts > 0] / counts.sum()
        expected.append(float(-(p * np.log(p)).sum()))
    score = score_groups(model, graph, "entropy", batches=batches)[gid]
    torch.testing.assert_close(score, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert float(score[0]) == 0.0  # a constant (dead) channel carries no information


def test_taylor_is_the_squared_gate_gradient_averaged_over_batches():
    import torch.nn.functional as F

    from dais_search.search import score_groups

    model, graph, batches = _probed()
    gid = group_of(graph.groups, "conv1").id
    squares = []
    for x, y in batches:  # a gate of ones on conv2's input channels, differentiated by hand
        gate = torch.ones(6, requires_grad=True)
        out = model.fc(model.conv2(model.hidden(x) * gate[None, :, None, None]).mean((2, 3)))
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), gate)
        squares.append(grad.square())
    expected = torch.stack(squares).mean(0)
    score = score_groups(model, graph, "taylor", batches=batches)[gid]
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind
    # Negative control: a channel conv2 does not read has no effect on the loss, and scores 0.
    with torch.no_grad():
        model.conv2.weight[:, 3] = 0
    assert float(score_groups(model, graph, "taylor", batches=batches)[gid][3]) == 0.0


def test_data_criteria_without_batches_are_refused_with_the_fix():
    from dais_search.search import score_groups

    model, graph, _ = _probed()
    with pytest.raises(UserError, match="held-out batches"):
        score_groups(model, graph, "taylor")


def test_users_register_a_data_criterion_with_a_probe():
    from dais_search.search import Probe, score_groups

    model, graph, batches = _probed()
    gid = group_of(graph.groups, "conv1").id

    @register_importance("test-mean-activation", probe=Probe(lambda x, grad: x.mean(2)))
    def mean_activation(model, group, evidence):
        return torch.cat(evidence.records[group.id]).mean(0)

    try:
        with torch.no_grad():
            expected = torch.cat([model.hidden(x) for x, _ in batches]).mean((0, 2, 3))
        torch.testing.assert_close(score_groups(model, graph, "test-mean-activation", batches=batches)[gid], expected)
    finally:
        from dais_search.search.importance import CRITERIA

        CRITERIA.unregister("test-mean-activation")
