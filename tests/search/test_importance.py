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
    assert get_importance("l1") is l1_norm
    score = l1_norm(model, group)
    assert score.shape == (8,)
    torch.testing.assert_close(score, torch.tensor(expected))
    # conv_b counts: zeroing its filter 3 lowers channel 3's score by that filter's norm, and only it.
    drop = _filter_l1(model.conv_b)[3]
    with torch.no_grad():
        model.conv_b.weight[3] = 0
    torch.testing.assert_close(score - l1_norm(model, group), torch.tensor([0.0] * 3 + [drop] + [0.0] * 4))


def test_l1_follows_each_producers_channel_positions():
    """cat([a, c]) + b: a gives channels 0..3, c channels 4..7, b all eight."""
    model = CatPlusConv().eval()
    groups, _ = analyse(model)
    group = group_of(groups, "a")
    a, c, b = _filter_l1(model.a), _filter_l1(model.c), _filter_l1(model.b)
    expected = [x + y for x, y in zip(a + c, b, strict=True)]
    torch.testing.assert_close(l1_norm(model, group), torch.tensor(expected))


def test_bn_criterion_is_the_absolute_bn_scale_and_l1_without_bn():
    model = Residual().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, -0.1, 3.0, 0.0, -1.5, 0.25]))
    groups, _ = analyse(model)
    group = group_of(groups, "conv_a")
    assert [m.name for m in group.members] == ["bn"]
    assert get_importance("bn") is bn_scale
    torch.testing.assert_close(bn_scale(model, group), model.bn.weight.detach().abs())
    head = group_of(groups, "head")  # no BN on the logits: the L1 filter norm instead
    torch.testing.assert_close(bn_scale(model, head), torch.tensor(_filter_l1(model.head)))


def test_unknown_criterion_is_a_user_error_listing_the_registered_ones():
    assert {"bn", "l1"} <= set(list_importance())
    with pytest.raises(UserError) as caught:
        get_importance("l2")
    assert "'l2'" in str(caught.value)
    assert all(name in str(caught.value) for name in list_importance())


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'l1' is already registered") as caught:
        register_importance("l1")(lambda model, group: torch.zeros(group.size))
    assert not isinstance(caught.value, UserError)  # a programming error, not a user's
    assert get_importance("l1") is l1_norm
