"""Residual blocks removed whole: found from the trace (counts against the architectures' closed
forms), removed physically (pruned == masked with the branch times 0), recorded in plans."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dais_search import create_model
from dais_search.channels import ChannelPlan, check_plan, random_plan, randomize_norms, trace_channels
from dais_search.channels.blocks import find_blocks
from dais_search.errors import UserError


def _blocks(model, size=32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = trace_channels(model, torch.zeros(1, 3, size, size))
    return graph, find_blocks(model, graph.gm, graph.infos)


@pytest.mark.parametrize(
    "name,size,count",
    [
        ("resnet20", 32, 9 - 2),  # 3 stages x 3 blocks; the 2 with option-A pad shortcuts stay
        ("resnet56", 32, 27 - 2),
        ("mobilenetv2", 32, 0 + 1 + 2 + 3 + 2 + 2 + 0),  # stride-1 repeats of n = 1, 2, 3, 4, 3, 3, 1
        ("vgg16", 32, 0),
        ("tv:resnet18", 64, 8 - 3),  # 3 blocks with a projection shortcut stay
        ("tv:efficientnet_b0", 64, 0 + 1 + 1 + 2 + 2 + 3 + 0),  # stochastic depth sits in the branch
    ],
)
def test_removable_blocks_match_the_architecture(name, size, count):
    model = create_model(name, num_classes=10).eval()
    _, blocks = _blocks(model, size)
    assert len(blocks) == count, [b.name for b in blocks]
    assert len({b.name for b in blocks}) == count


def test_resnet_blocks_are_named_by_their_module_and_hold_its_two_convs():
    _, blocks = _blocks(create_model("resnet20"))
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                                        "layer3.2"]  # fmt: skip
    assert {"layer1.1.conv1", "layer1.1.conv2", "layer1.1.bn2"} <= set(blocks[1].modules)


@pytest.mark.parametrize("training", [False, True])
def test_removed_blocks_and_pruned_channels_equal_the_masked_model(training):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    dense = randomize_norms(create_model("resnet20"), x)
    graph, _ = _blocks(dense)
    channels = random_plan(dense, (1, 3, 32, 32), keep=0.5, seed=1, graph=graph)
    plan = ChannelPlan.create(dense, channels.kept, (1, 3, 32, 32), graph=graph,
                              removed_blocks=["layer1.1", "layer3.2"])
    pruned, masked = plan.apply(dense, graph).train(training), plan.mask(dense, graph).train(training)
    out = masked(x)
    assert torch.allclose(pruned(x), out, atol=1e-5 * float(out.detach().abs().max()))
    assert plan.flops < channels.flops and plan.params < channels.params
    # Negative control: the masked model of another choice of blocks is a different function.
    other = ChannelPlan.create(dense, channels.kept, (1, 3, 32, 32), graph=graph, removed_blocks=["layer1.2"])
    assert not torch.allclose(other.mask(dense, graph).train(training)(x), out, atol=1e-3)


def test_a_plan_with_removed_blocks_round_trips_and_has_fewer_layers(tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    plan = ChannelPlan.create(dense, {}, (1, 3, 32, 32), removed_blocks=["layer2.1"])
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["removed_blocks"] == ["layer2.1"]
    fresh = create_model("resnet20").eval()
    fresh.load_state_dict(dense.state_dict())
    replayed = ChannelPlan.load(tmp_path / "plan.json").apply(fresh)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(replayed(x), plan.apply(dense)(x))
    convs = lambda m: sum(isinstance(c, nn.Conv2d) for c in m.modules())  # noqa: E731
    assert convs(replayed) == convs(dense) - 2
    scripted = torch.jit.script(replayed)
    assert torch.allclose(scripted(x), replayed(x))
    assert plan.dense_flops - plan.flops == 2 * (2 * 32 * 32 * 9 * 16 * 16)  # two 32->32 3x3 convs at 16x16


def test_check_plan_covers_removed_blocks_of_a_torchvision_model():
    model = create_model("tv:resnet18", num_classes=10)
    plan = ChannelPlan.create(model.eval(), {}, (1, 3, 64, 64), removed_blocks=["layer2.1", "layer4.1"])
    check = check_plan(model, plan, torch.randn(2, 3, 64, 64))
    assert check.ok and check.max_rel_error < 1e-5 and check.flops == plan.flops


def test_an_unknown_block_is_refused_naming_the_removable_ones():
    with pytest.raises(UserError, match="'layer2.0' is not a removable residual block.*layer1.0, layer1.1"):
        ChannelPlan.create(create_model("resnet20"), {}, (1, 3, 32, 32), removed_blocks=["layer2.0"])


class _Shared(nn.Module):
    """A residual whose branch output is read twice: removing the branch would change ``head``'s input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        b = self.conv(x)
        return self.head(torch.cat([x + b, b], 1))


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.inner = inner

    def forward(self, x):
        return self.inner(F.relu(self.stem(x)))


class _OwnForward(nn.Module):
    """The addition in the model's own forward: nothing to rewrite it in."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return x + self.conv(x)


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("model,count", [(_Wrapped(_Plain()), 1), (_Wrapped(_Shared()), 0), (_OwnForward(), 0)])
def test_only_branches_nothing_else_reads_inside_a_submodule_are_blocks(model, count):
    _, blocks = _blocks(model.eval(), 8)
    assert len(blocks) == count
    if count:
        plan = ChannelPlan.create(model, {}, (1, 3, 8, 8), removed_blocks=[blocks[0].name])
        x = torch.randn(2, 3, 8, 8)
        assert torch.allclose(plan.apply(model)(x), F.relu(model.stem(x)))
        assert torch.allclose(plan.mask(copy.deepcopy(model))(x), F.relu(model.stem(x)))
