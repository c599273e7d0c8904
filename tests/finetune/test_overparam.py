"""Linear over-parameterisation: expanded == original at init, every parameter trains, folding is exact."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dais_search import count_flops, count_params, create_model
from dais_search.channels import random_plan, randomize_norms
from dais_search.finetune.overparam import ExpandedConv2d, ExpandedLinear, expand, fold

# (in, out, kernel, stride, padding, dilation, bias)
CONVS = [
    (3, 16, 3, 1, 1, 1, False),
    (8, 4, 3, 2, 1, 1, True),
    (5, 7, (1, 3), (1, 2), (0, 1), 1, True),
    (4, 6, 3, 1, 2, 2, False),
    (6, 6, 1, 1, 0, 1, True),
    (2, 9, 5, 2, 2, 1, False),
]


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("ratio", [1, 4])
def test_expanded_conv_equals_the_conv_at_init_and_folds_back(spec, ratio):
    cin, cout, k, s, p, d, bias = spec
    conv = nn.Conv2d(cin, cout, k, s, p, d, bias=bias)
    block = ExpandedConv2d(conv, ratio)
    x = torch.randn(2, cin, 11, 13)
    torch.testing.assert_close(block(x), conv(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(block.forward_chain(x), conv(x), rtol=1e-4, atol=1e-4)
    folded = block.fold()
    assert folded.weight.shape == conv.weight.shape and folded.stride == conv.stride
    torch.testing.assert_close(folded(x), block(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # negative control
        folded.weight[0, 0].add_(0.1)
    assert not torch.allclose(folded(x), block(x), rtol=1e-4, atol=1e-4)


def test_every_expanded_parameter_receives_gradient():
    block = ExpandedConv2d(nn.Conv2d(4, 6, 3, padding=1), ratio=4)
    block.forward_chain(torch.randn(3, 4, 8, 8)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        # Every output filter and every input slice trains: no frozen width (unlike identity + zeros).
        flat = p.grad.flatten(1) if p.grad.dim() > 1 else p.grad[:, None]
        assert (flat.abs().sum(1) > 0).all(), f"{name}: some rows get no gradient"
        if p.grad.dim() > 1:
            assert (flat.abs().sum(0) > 0).all(), f"{name}: some columns get no gradient"


def test_composed_forward_gives_the_chain_s_gradients():
    block = ExpandedConv2d(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True), ratio=3)
    x = torch.randn(2, 3, 9, 9)
    target = torch.randn(2, 5, 5, 5)
    grads = []
    for forward in (block.forward, block.forward_chain):
        block.zero_grad()
        (forward(x) - target).square().sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for composed, chained in zip(*grads, strict=True):
        torch.testing.assert_close(composed, chained, rtol=1e-4, atol=1e-5)


def test_identity_plus_zeros_init_would_freeze_the_extra_width():
    # Why the init is dense: with W1 = [I; 0] and W3 = [I, 0] the added rows of W1 get no gradient.
    conv = nn.Conv2d(4, 6, 3, padding=1)
    block = ExpandedConv2d(conv, ratio=2)
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        for layer in (block.a, block.b, block.c):
            layer.weight.zero_()
        block.a.weight[:4, :, 0, 0] = torch.eye(4)
        block.b.weight[:6, :4] = conv.weight
        block.c.weight[:, :6, 0, 0] = torch.eye(6)
        torch.testing.assert_close(block(x), conv(x), rtol=1e-4, atol=1e-4)  # exact too...
    block.forward_chain(x).square().sum().backward()
    assert block.a.weight.grad[4:].abs().sum() == 0  # ...but the added width never trains
    assert block.c.weight.grad[:, 6:].abs().sum() == 0


def test_expanded_linear_equals_and_folds():
    linear = nn.Linear(12, 5)
    block = ExpandedLinear(linear, 3)
    x = torch.randn(4, 12)
    torch.testing.assert_close(block(x), linear(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.fold()(x), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_fold_of_trained_expanded_pruned_model_is_exact(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = create_model(name).eval()
        pruned = random_plan(dense, (1, 3, 32, 32), keep=(0.3, 0.8), seed=0).apply(dense)
    randomize_norms(pruned, torch.zeros(1, 3, 32, 32))
    student = expand(pruned, ratio=2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(x), pruned(x), rtol=1e-4, atol=1e-4)
    assert count_params(student) > 2 * count_params(pruned)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    student.train()
    for _ in range(50):
        loss = nn.functional.cross_entropy(student(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    folded = fold(student).eval()
    with torch.no_grad():
        expected = student(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        assert not torch.allclose(folded(x), pruned(x), atol=1e-3)  # it did train
    assert count_params(folded) == count_params(pruned)
    assert count_flops(folded) == count_flops(pruned)
    assert [n for n, _ in folded.named_modules()] == [n for n, _ in pruned.named_modules()]
    depthwise = [m for m in student.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(not isinstance(m, ExpandedConv2d) for m in depthwise)  # grouped convs stay as they are


def test_expand_rejects_a_bad_ratio():
    with pytest.raises(ValueError, match="at least 1"):
        expand(nn.Conv2d(3, 3, 1), ratio=0)
