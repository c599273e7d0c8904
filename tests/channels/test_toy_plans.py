"""Plans on the toy nets end to end: slicing equals masking for every coupling rule (with the negative
control), explicit plans slice the right channels, bad plans are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from toy_models import (
    Between,
    CatInput,
    Concat,
    Conv1dHead,
    ConvNeXtNet,
    Depthwise,
    FlattenHead,
    Grouped,
    Norms,
    PerChannel,
    Residual,
    SENet,
    SharedConv,
    SpatialAttention,
    Tokens,
    TwoConvs,
    one_thread,  # noqa: F401 - autouse: one intra-op thread for these tiny nets
    randomise,
)

from dais_search.channels import ChannelPlan, random_plan
from dais_search.errors import UserError
from dais_search.models import create_model

# ----------------------------------------------------------------------------------------------
# Slicing equals masking, and the negative control


E2E = {  # name: (builder, a layer of the pruned model to perturb for the negative control)
    "residual": (Residual, "conv_a"),
    "concat": (Concat, "conv_b"),
    "depthwise": (Depthwise, "pw"),
    "grouped": (lambda: Grouped(8), "pw"),
    "flatten": (lambda: FlattenHead("torch"), "conv"),
    "se": (SENet, "se.fc1"),
    "groupnorm": (lambda: Norms(nn.GroupNorm(4, 8)), "conv"),
    "convnext": (lambda: ConvNeXtNet(norm=False), "stem"),
    "convnext-layernorm": (lambda: ConvNeXtNet(norm=True), "block.pw1"),
    "view": (lambda: FlattenHead("view"), "conv"),
    "view-conv1d": (lambda: Conv1dHead(literal=False), "conv"),
    "two-convs": (TwoConvs, "conv1"),
    "shared-conv": (SharedConv, "stem"),
    "tokens": (Tokens, "conv"),
    "spatial-attention": (SpatialAttention, "conv"),
    "layer-scale": (lambda: Between(PerChannel("param"), 8), "conv"),
    "per-channel-buffer": (lambda: Between(PerChannel("buffer"), 8), "conv"),
    "cat-input": (CatInput, "conv"),
    "cat-twice": (lambda: CatInput(twice=True), "conv"),
    "prelu-upsample": (lambda: Between(nn.Sequential(nn.PReLU(8), nn.Upsample(scale_factor=2)), 8), "conv"),
    "option-a-resnet8": (lambda: create_model("resnet8"), "layer1.0.conv1"),  # streams through the pads
}


@pytest.mark.parametrize(
    ("seed", "build", "perturb"), [pytest.param(i, *case, id=name) for i, (name, case) in enumerate(E2E.items())]
)
def test_apply_equals_mask(seed, build, perturb):
    model = randomise(build())
    shape = (2, 3, 3, 3) if isinstance(model, (FlattenHead, Conv1dHead)) else (1, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = random_plan(model, shape, keep=0.5, seed=seed)
    assert plan.kept, "nothing pruned"
    assert plan.flops < plan.dense_flops
    pruned, masked = plan.apply(model), plan.mask(model)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, *shape[1:])
    with torch.no_grad():
        dense_out, pruned_out, masked_out = model(x), pruned(x), masked(x)
        torch.testing.assert_close(pruned_out, masked_out, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(dense_out, pruned_out, atol=1e-4)
        # Negative control: a kept output channel of a layer of the pruned model, changed, shows.
        layer = pruned.get_submodule(perturb)
        layer.weight[0] = -2 * layer.weight[0] + 0.5
        assert not torch.allclose(pruned(x), masked_out, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Explicit plans, and plans that are refused


def test_explicit_plan_slices_the_right_channels():
    model = randomise(Concat())
    plan = ChannelPlan.create(model, {0: [1, 3], 1: [0, 2, 5]}, (1, 3, 6, 6))
    pruned = plan.apply(model)
    assert pruned.conv_a.weight.shape == (2, 3, 3, 3) and pruned.bn_a.num_features == 2
    assert pruned.conv_b.weight.shape == (3, 3, 1, 1)
    torch.testing.assert_close(pruned.conv_a.weight, model.conv_a.weight[[1, 3]])
    torch.testing.assert_close(pruned.bn_a.running_mean, model.bn_a.running_mean[[1, 3]])
    torch.testing.assert_close(pruned.conv_c.weight, model.conv_c.weight[:, [1, 3, 4, 6, 9]])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)


def test_grouped_conv_plan_keeps_whole_blocks():
    model = randomise(Grouped(8))
    plan = ChannelPlan.create(model, {0: [2, 3, 6, 7]}, (1, 3, 6, 6))
    pruned = plan.apply(model)
    assert pruned.gconv.groups == 2 and pruned.gconv.weight.shape == (4, 2, 3, 3)
    torch.testing.assert_close(pruned.gconv.weight, model.gconv.weight[[2, 3, 6, 7]])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plan.mask(model)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "kept", "match"),
    [
        (lambda: Grouped(8), {0: [0, 2]}, "splits the block"),
        (lambda: Grouped(8), {0: [0, 1, 2]}, "multiple of 2"),
        (TwoConvs, {0: []}, "at least 1"),
        (TwoConvs, {2: [0, 1]}, "cannot be pruned"),
        (TwoConvs, {0: [0, 8]}, "invalid channels"),
        (TwoConvs, {0: [-1, 2]}, "invalid channels"),
        (TwoConvs, {0: [1, 1]}, "invalid channels"),
        (TwoConvs, {7: [0]}, "groups 0..2"),
        (lambda: Norms(nn.GroupNorm(4, 8)), {0: [0, 1, 3, 4]}, "splits the block"),
    ],
    ids=["split-block", "not-multiple", "keep-none", "unprunable", "too-large", "negative", "duplicate", "no-group",
         "split-groupnorm"],
)  # fmt: skip
def test_bad_plans_raise_user_error(build, kept, match):
    with pytest.raises(UserError, match=match):
        ChannelPlan.create(build(), kept, (1, 3, 6, 6))
