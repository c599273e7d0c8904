"""Layers of plain chains removed (VGG): found from the trace (counts against the architectures'
closed forms), removed physically (pruned == masked, whatever the kept widths on the two sides),
counted exactly by the FLOPs model, recorded in plans that replay."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dais_search import count_flops, create_model
from dais_search.channels import ChannelPlan, random_plan, randomize_norms, trace_channels
from dais_search.channels.blocks import find_blocks, remove_blocks
from dais_search.channels.chain import find_chain_layers
from dais_search.channels.flops_model import FlopsModel
from dais_search.channels.plan import _slice_model
from dais_search.errors import UserError
from dais_search.models.cifar_vgg import CifarVGG

SHAPE = (1, 3, 32, 32)


def _graph(model, shape=SHAPE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace_channels(model, torch.zeros(shape))


@pytest.mark.parametrize(
    "name,count",
    [
        # Every conv whose input has its width: all but the first of each stage, plus the first of
        # the last stage (512 -> 512 after a pool, which keeps the channels and halves the pixels).
        ("vgg11", 1 + 1 + 2),
        ("vgg13", 1 + 1 + 1 + 1 + 2),
        ("vgg16", 1 + 1 + 2 + 2 + 3),
        ("vgg19", 1 + 1 + 3 + 3 + 4),
        ("mobilenetv2", 0),  # depthwise convs carry their group; 1x1 convs change the width
    ],
)
def test_removable_chain_layers_match_the_architecture(name, count):
    model = create_model(name).eval()
    layers = find_chain_layers(model, _graph(model))
    assert len(layers) == count, [x.name for x in layers]
    assert all(x.kind == "layer" and isinstance(model.get_submodule(x.name), nn.Conv2d) for x in layers)


def test_a_vgg_layer_is_its_conv_bn_and_relu():
    model = create_model("vgg11").eval()
    first = find_chain_layers(model, _graph(model))[0]
    assert first.name == "features.11" and first.modules == ("features.11", "features.12", "features.13")
    assert first.owner == "features" and first.output == "features.13"


class _Shapes(nn.Module):
    """Convs that must not be found: a stride-2 one, a widening one, one in the model's own forward, and
    (with ``mean``) one whose output a channel mean reads (which the input's channels would not survive)."""

    def __init__(self, mean: bool = True) -> None:
        super().__init__()
        self.mean = mean
        self.seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),  # stride 2
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),  # widens
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())  # removable  # fmt: skip
        self.own = nn.Conv2d(16, 16, 3, padding=1)  # in the model's forward: nothing to rewrite
        self.side = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.own(self.seq(x)))
        y = self.side(x)
        return self.head((y + y.mean(1, keepdim=True) if self.mean else y).mean((2, 3)))


def test_only_shape_keeping_layers_called_from_a_submodule_are_found():
    model = _Shapes().eval()
    assert [x.name for x in find_chain_layers(model, _graph(model))] == ["seq.6"]
    # Control: without the channel mean, side's conv is a removable layer like any other.
    model = _Shapes(mean=False).eval()
    assert [x.name for x in find_chain_layers(model, _graph(model))] == ["seq.6", "side.0"]


@pytest.mark.parametrize("training", [False, True])
def test_removed_layers_and_pruned_channels_equal_the_masked_model(training):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    dense = randomize_norms(create_model("vgg11"), x)
    graph = _graph(dense.eval())
    layers = [x.name for x in find_chain_layers(dense, graph)]
    channels = random_plan(dense, SHAPE, keep=(0.2, 0.9), seed=1, graph=graph)  # widths differ on the two sides
    plan = ChannelPlan.create(dense, channels.kept, SHAPE, graph=graph, removed_blocks=[layers[0], layers[2]])
    pruned, masked = plan.apply(dense, graph).train(training), plan.mask(dense, graph).train(training)
    out = masked(x)
    assert torch.allclose(pruned(x), out, atol=1e-5 * float(out.detach().abs().max()))
    assert count_flops(pruned.eval(), SHAPE) == plan.flops < channels.flops
    # Negative control: the masked model keeping those layers is another function.
    assert not torch.allclose(channels.mask(dense, graph).train(training)(x), out, atol=1e-3)


def test_what_read_a_removed_layer_is_sliced_as_the_layer_input_not_its_output():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    dense = randomize_norms(create_model("vgg11"), x).eval()
    graph = _graph(dense)
    layer = find_chain_layers(dense, graph)[0]
    channels = random_plan(dense, SHAPE, keep=0.5, seed=2, graph=graph)  # equal widths: both slicings run
    plan = ChannelPlan.create(dense, channels.kept, SHAPE, graph=graph, removed_blocks=[layer.name])
    expected = plan.mask(dense, graph)(x)
    assert torch.allclose(plan.apply(dense, graph)(x), expected, atol=1e-5 * float(expected.detach().abs().max()))
    # The perturbation: slice the reader by the removed layer's own kept channels, then remove it.
    model = copy.deepcopy(dense)
    _slice_model(model, graph, channels.kept)
    remove_blocks(model, [layer])
    assert not torch.allclose(model(x), expected, atol=1e-3 * float(expected.detach().abs().max()))


@pytest.mark.parametrize("name", ["vgg19", "resnet20"])
def test_the_flops_model_counts_removed_layers_exactly(name):
    dense = create_model(name).eval()
    graph = _graph(dense)
    blocks = find_blocks(dense, graph.gm, graph.infos) if name == "resnet20" else []
    taken = {b.owner for b in blocks}
    units = blocks + [x for x in find_chain_layers(dense, graph) if x.owner not in taken]
    fm = FlopsModel(graph, dense, torch.zeros(SHAPE), units)
    assert float(fm.flops(fm.full_widths())) == fm.dense_flops
    rng = np.random.default_rng(0)
    for seed in range(4):
        channels = random_plan(dense, SHAPE, keep=(0.1, 1.0), seed=seed, graph=graph)
        keep = torch.tensor(rng.integers(0, 2, len(units)), dtype=torch.float64)
        removed = [b.name for b, k in zip(units, keep.tolist(), strict=True) if not k]
        plan = ChannelPlan.create(dense, channels.kept, SHAPE, graph=graph, removed_blocks=removed)
        widths = fm.widths_of(channels.kept)
        assert float(fm.flops(widths, keep)) == plan.flops
        assert float(fm.params(widths, keep)) == plan.params
    # Negative control: a model that does not know the layers counts what they removed.
    if name == "vgg19":
        blind = FlopsModel(graph, dense, torch.zeros(SHAPE))
        assert float(blind.flops(widths)) > plan.flops


def test_soft_layer_values_interpolate_the_cost_of_keeping_and_removing():
    dense = create_model("vgg11").eval()
    graph = _graph(dense)
    layers = find_chain_layers(dense, graph)
    fm = FlopsModel(graph, dense, torch.zeros(SHAPE), layers)
    widths = fm.full_widths() * 0.5
    ones, g = torch.ones(len(layers), dtype=torch.float64), torch.ones(len(layers), dtype=torch.float64)
    zero = ones.clone()
    zero[1] = 0
    g[1] = 0.25
    kept, gone = float(fm.flops(widths, ones)), float(fm.flops(widths, zero))
    assert gone < kept
    assert float(fm.flops(widths, g)) == pytest.approx(0.25 * kept + 0.75 * gone)


def test_a_plan_with_removed_layers_round_trips_and_has_fewer_convs(tmp_path):
    torch.manual_seed(0)
    dense = create_model("vgg13").eval()
    layers = [x.name for x in find_chain_layers(dense, _graph(dense))]
    plan = ChannelPlan.create(dense, {}, SHAPE, removed_blocks=layers[1:3])
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["removed_blocks"] == layers[1:3]
    fresh = create_model("vgg13").eval()
    fresh.load_state_dict(dense.state_dict())
    replayed = ChannelPlan.load(tmp_path / "plan.json").apply(fresh)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(replayed(x), plan.apply(dense)(x))
    convs = lambda m: sum(isinstance(c, nn.Conv2d) for c in m.modules())  # noqa: E731
    assert convs(replayed) == convs(dense) - 2
    assert torch.allclose(torch.jit.script(replayed)(x), replayed(x))
    # layers[1] is 128 -> 128 at 16x16, layers[2] 256 -> 256 at 8x8 (3x3 convs, FLOPs = 2 x MACs)
    assert plan.dense_flops - plan.flops == 2 * 9 * (128 * 128 * 16 * 16 + 256 * 256 * 8 * 8)


def test_a_small_vgg_is_a_valid_network_with_every_layer_removed():
    model = CifarVGG([8, 8, 8, "M", 16, 16, "M"]).eval()
    layers = [x.name for x in find_chain_layers(model, _graph(model))]
    assert layers == ["features.3", "features.6", "features.13"]
    pruned = ChannelPlan.create(model, {}, SHAPE, removed_blocks=layers).apply(model)
    assert [type(m).__name__ for m in pruned.features.children()] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                                                                      "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_an_unknown_layer_is_refused_naming_the_removable_ones():
    with pytest.raises(UserError, match="'features.0' is not a removable.*features.11, features.18"):
        ChannelPlan.create(create_model("vgg11"), {}, SHAPE, removed_blocks=["features.0"])
