"""FLOPs and parameter counts against closed forms and the issue's reference numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dais_search import count_flops, count_params, create_model, flops_breakdown


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# (in, out, kernel, stride, padding, dilation, groups, bias, H, W)
CONV_CASES = [
    (3, 16, 3, 1, 1, 1, 1, False, 32, 32),
    (16, 32, 3, 2, 1, 1, 1, True, 32, 32),
    (8, 8, 3, 1, 1, 1, 8, False, 17, 15),  # depthwise
    (12, 18, 3, 1, 0, 1, 3, False, 16, 16),  # grouped
    (4, 6, 5, 2, 2, 1, 1, False, 33, 31),  # odd sizes, stride 2
    (4, 6, 3, 1, 2, 2, 1, False, 16, 16),  # dilation 2
    (6, 4, (1, 3), (1, 2), (0, 1), 1, 2, True, 9, 11),  # rectangular kernel/stride/padding
    (16, 32, 1, 1, 0, 1, 1, False, 8, 8),  # pointwise
]


@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: f"cin{c[0]}-cout{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-g{c[6]}"
)
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_flops_closed_form(case, batch):
    cin, cout, k, s, p, d, g, bias, h, w = case
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=bias)
    kh, kw = conv.kernel_size
    ho = conv_out(h, kh, conv.stride[0], conv.padding[0], conv.dilation[0])
    wo = conv_out(w, kw, conv.stride[1], conv.padding[1], conv.dilation[1])
    expected = 2 * batch * cout * (cin // g) * kh * kw * ho * wo
    assert count_flops(conv, (batch, cin, h, w)) == expected
    assert count_params(conv) == cout * (cin // g) * kh * kw + (cout if bias else 0)


@pytest.mark.parametrize("fin,fout,bias,batch", [(64, 10, True, 1), (512, 1000, False, 4), (7, 3, True, 5)])
def test_linear_flops_closed_form(fin, fout, bias, batch):
    layer = nn.Linear(fin, fout, bias=bias)
    assert count_flops(layer, (batch, fin)) == 2 * batch * fin * fout
    assert count_params(layer) == fin * fout + (fout if bias else 0)


def test_uncounted_ops_add_nothing():
    # BENCH.md: BN, ReLU, pooling and additions are not counted.
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    assert count_flops(model, (2, 4, 8, 8)) == 0


@pytest.mark.parametrize(
    "name,flops,params",
    [("resnet20", 81_102_080, 269_722), ("resnet56", 250_971_392, 853_018)],
)
def test_reference_resnets(name, flops, params):
    model = create_model(name)
    assert count_flops(model, (1, 3, 32, 32)) == flops
    assert count_params(model) == params


def test_resnet_flops_closed_form():
    # CIFAR ResNet-(6n+2): stem + 2n 3x3 convs per stage at widths 16/32/64 on 32/16/8 maps + head;
    # stage transitions read the previous width once.
    def closed(n: int) -> int:
        macs = 3 * 16 * 9 * 32 * 32
        for width, size, prev in ((16, 32, 16), (32, 16, 16), (64, 8, 32)):
            macs += width * prev * 9 * size * size + (2 * n - 1) * width * width * 9 * size * size
        return 2 * (macs + 64 * 10)

    for depth in (8, 20, 32, 44, 56, 110):
        assert count_flops(create_model(f"resnet{depth}"), (1, 3, 32, 32)) == closed((depth - 2) // 6)


def test_breakdown_sums_to_total_and_matches_layers():
    model = create_model("resnet20_b")
    rows = flops_breakdown(model, (2, 3, 32, 32))
    assert sum(r.flops for r in rows) == count_flops(model, (2, 3, 32, 32))
    assert sum(r.params for r in rows) == count_params(model)
    by_name = {r.name: r for r in rows}
    shortcut = by_name["layer2.0.shortcut.0"]  # 1x1 stride-2 projection 16 -> 32 on a 16x16 output
    assert shortcut.type == "Conv2d" and shortcut.flops == 2 * 2 * 32 * 16 * 16 * 16
    assert by_name["linear"].flops == 2 * 2 * 64 * 10


def test_breakdown_counts_functional_calls_under_their_container():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 7))

        def forward(self, x):
            return x @ self.weight.t()

    model = Functional()
    rows = flops_breakdown(model, (3, 7))
    assert [(r.name, r.flops, r.params) for r in rows] == [("(root)", 2 * 3 * 7 * 5, 35)]


def test_count_restores_training_mode():
    model = create_model("resnet8")
    model.train()
    count_flops(model)
    assert model.training
