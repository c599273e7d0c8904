"""``timm:NAME`` in the model registry: built offline with random weights, sizes from timm's configs,
helpful errors for unknown names and for a missing timm, and timm imported only when asked for."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dais_search
from dais_search.errors import UserError
from dais_search.models import create_model, input_size, list_models, register_model


@pytest.fixture
def timm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt fails
    return pytest.importorskip("timm")


def test_timm_model_builds_offline_with_random_weights(timm, monkeypatch):
    calls = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    model = create_model("timm:resnet10t", num_classes=7).eval()
    assert calls == [(("resnet10t",), {"num_classes": 7, "pretrained": False})]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_timm_kwargs_reach_timm(timm):
    model = create_model("timm:resnet10t", num_classes=3, in_chans=1)
    assert model.conv1[0].in_channels == 1 and model.fc.out_features == 3


def test_timm_input_size_comes_from_its_config(timm):
    assert input_size("timm:resnet18") == (3, 224, 224)
    assert input_size("timm:vit_tiny_patch16_384") == (3, 384, 384)
    assert input_size("timm:resnet18.a1_in1k") == (3, 224, 224)  # a pretrained tag picks its config
    assert input_size("timm:test_vit") == (3, 160, 160)


def test_list_models_includes_timm_on_request(timm):
    assert not any(n.startswith("timm:") for n in list_models(include_torchvision=True))
    names = list_models(include_timm=True)
    assert {"resnet56", "timm:resnet18", "timm:vit_tiny_patch16_224"} <= set(names)
    assert len([n for n in names if n.startswith("timm:")]) == len(timm.list_models())


def test_unknown_timm_name_suggests_close_ones(timm):
    with pytest.raises(UserError, match=r"unknown timm model 'timm:resnet1888'\. Did you mean timm:resnet18"):
        create_model("timm:resnet1888")
    with pytest.raises(UserError, match="unknown timm model"):
        input_size("timm:not_a_model")
    with pytest.raises(UserError, match=r"timm:NAME"):
        create_model("resnet65")  # the registry's own message names the timm models too


def test_missing_timm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    for call in (lambda: create_model("timm:resnet18"), lambda: input_size("timm:resnet18"),
                 lambda: list_models(include_timm=True)):  # fmt: skip
        with pytest.raises(UserError, match=r"pip install 'dais-search\[timm\]'"):
            call()
    assert "resnet56" in list_models()  # the rest of the registry works without timm


def test_timm_prefix_is_reserved():
    with pytest.raises(ValueError, match="reserved for timm"):
        register_model("timm:mine")(lambda num_classes=10: nn.Linear(1, num_classes))


def test_timm_is_imported_only_inside_functions():
    """No module of the package imports timm at import time (a subprocess check costs ~20 s of imports)."""
    package = Path(dais_search.__file__).parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        top_level += [n for t in tree.body if isinstance(t, (ast.Try, ast.If)) for n in ast.walk(t)
                      if isinstance(n, (ast.Import, ast.ImportFrom))]  # fmt: skip
        modules = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m.split(".")[0] == "timm"], f"{path} imports timm at import time"
