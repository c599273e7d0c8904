"""The shared CIFAR-10 teachers reproduce their accuracy (skipped when ../shared is absent)."""

from __future__ import annotations

import pytest

from dais_search import evaluate, load_checkpoint, load_dataset, make_loader, model_from_checkpoint


@pytest.fixture(scope="module")
def first_test_images(shared):
    return load_dataset(f"npz:{shared / 'data' / 'cifar10.npz'}").test.subset(range(1000))


# Measured once on the first 1,000 test images (the full 10,000 give 91.73% and 93.39%, as published).
@pytest.mark.parametrize(
    "name,file,top1", [("resnet20", "resnet20-12fca82f.th", 91.5), ("resnet56", "resnet56-4bfd9763.th", 92.6)]
)
def test_teacher_accuracy(shared, first_test_images, name, file, top1):
    model, _ = model_from_checkpoint(load_checkpoint(shared / "pretrained" / file), name)
    metrics = evaluate(model, make_loader(first_test_images, 250, normalize="imagenet"), progress=False)
    assert metrics["images"] == 1000
    assert metrics["top1"] == pytest.approx(top1, abs=0.2)
    # Negative control: the CIFAR statistics the weights were not trained with cost accuracy.
    wrong = evaluate(model, make_loader(first_test_images, 250, normalize="none"), progress=False)
    assert wrong["top1"] < top1 - 5
