"""The search and the fine-tune on a CUDA device, from CPU loaders with pinned memory (skipped without a GPU).

    pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import warnings

import pytest
import torch

import dais_search as ds
from dais_search.data import ArrayDataset, BatchLoader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_search_and_finetune_on_cuda_from_pinned_cpu_batches():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    data = ArrayDataset(images, torch.arange(256) % 10, [str(c) for c in range(10)])
    train, held = BatchLoader(data, 32, train=True, seed=0), BatchLoader(data, 32, train=True, seed=1)
    x, _ = next(iter(train))
    assert x.device.type == "cpu" and x.is_pinned()
    model = ds.create_model("resnet8").cuda()
    teacher = ds.create_model("resnet8").cuda().eval()
    teacher.load_state_dict(model.state_dict())
    budget = ds.Budget(search=ds.SearchSpec(epochs=1, recalibrate_batches=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ds.search(model, budget, train, held, torch.zeros(1, 3, 32, 32), progress=False)
    assert next(result.pruned.parameters()).is_cuda
    assert 0.99 <= result.metrics["flops_over_target"] <= 1.0
    tuned = ds.finetune(result.pruned, teacher, train, ds.FinetuneConfig(epochs=1), plan=result.plan, progress=False)
    assert next(tuned.model.parameters()).is_cuda and ds.count_flops(tuned.model) == result.plan.flops
