"""The model registry: every entry builds and runs, names and errors are as documented."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dais_search.errors import UserError
from dais_search.models import create_model, input_size, list_models, register_model


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("resnet110", "resnet110_b")])
def test_every_registered_model_runs(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_size(name)))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_option_a_matches_the_shared_checkpoint_layout():
    # akamaster's keys: conv1, bn1, layer{1,2,3}.{i}.conv{1,2}/bn{1,2}, linear; no shortcut params.
    keys = set(create_model("resnet20").state_dict())
    assert not any("shortcut" in k for k in keys)
    assert {"conv1.weight", "bn1.running_mean", "layer3.2.conv2.weight", "linear.bias"} <= keys
    assert create_model("resnet20").layer2[0].shortcut(torch.randn(1, 16, 32, 32)).shape == (1, 32, 16, 16)


def test_option_a_shortcut_pads_zero_channels():
    block = create_model("resnet20").layer2[0].shortcut
    x = torch.randn(2, 16, 8, 8)
    y = block(x)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


def test_option_b_uses_projections():
    model = create_model("resnet20_b")
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)


def test_depths():
    blocks = lambda m: sum(len(layer) for layer in (m.layer1, m.layer2, m.layer3))  # noqa: E731
    assert blocks(create_model("resnet56")) == 27 and blocks(create_model("resnet110")) == 54
    convs = [m for m in create_model("vgg16").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    convs = [m for m in create_model("vgg19").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16


def test_mobilenetv2_has_depthwise_and_residual_blocks():
    model = create_model("mobilenetv2")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(getattr(m, "use_residual", False) for m in model.modules()) == 10


def test_torchvision_models():
    model = create_model("tv:resnet18", num_classes=10).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert input_size("tv:resnet18") == (3, 224, 224) and input_size("tv:inception_v3") == (3, 299, 299)
    assert "tv:convnext_tiny" in list_models(include_torchvision=True)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserError, match=r"Did you mean resnet56.*Known models: .*vgg16.*tv:NAME"):
        create_model("resnet65")
    with pytest.raises(UserError, match=r"Did you mean tv:resnet50.*torchvision classification models"):
        create_model("tv:resnet500")
    with pytest.raises(UserError, match="unknown model"):
        input_size("nope")


def test_registry_refuses_duplicates_and_reserved_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda num_classes=10: nn.Linear(1, num_classes))
    with pytest.raises(ValueError, match="reserved"):
        register_model("tv:mine")


def test_bad_depths():
    from dais_search.models.cifar_resnet import cifar_resnet
    from dais_search.models.cifar_vgg import cifar_vgg

    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="VGG depth"):
        cifar_vgg(17)
