"""Tests of the embedded ``shapes`` data set: API contract, determinism, and difficulty.

The difficulty tests are the important ones: the data set exists so that the demo and the pruning
tests have something a CNN must learn (and can lose when pruned). They check that a linear model on
raw pixels and a colour-only model stay near chance, while a small CNN trained for three epochs gets
far above both, yet does not saturate.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dais_search.data import shapes
from dais_search.data.shapes import SHAPES_CLASSES, make_shapes

N_CLASSES = 10
CHANCE = 1.0 / N_CLASSES

# SHA-256 of make_shapes(40, seed=123) (images then labels). The data set must be byte-identical on
# every machine and numpy version, or results quoted in benchmarks stop being reproducible. If you
# change the generator on purpose, update this value and say so in the changelog.
GOLDEN_SHA256 = "ef8e7fd9a06a2ed02195a10c6c6a6b73baeee98ce58da70cc176efe0ae9c7ca8"


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


# --- API contract -------------------------------------------------------------------------------


def test_public_api():
    assert shapes.__all__ == ["SHAPES_CLASSES", "make_shapes"]
    assert isinstance(SHAPES_CLASSES, tuple)
    assert len(SHAPES_CLASSES) == N_CLASSES
    assert len(set(SHAPES_CLASSES)) == N_CLASSES
    assert all(isinstance(name, str) and name for name in SHAPES_CLASSES)


@pytest.mark.parametrize("size", [16, 32, 45])
def test_dtype_shape_and_range(size):
    images, labels = make_shapes(50, seed=3, size=size)
    assert images.shape == (50, size, size, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (50,)
    assert labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < N_CLASSES
    # Uses the dynamic range, and no image is blank: every one shows a shape on a background.
    assert images.min() < 30 and images.max() > 225
    per_image_range = images.reshape(50, -1).max(axis=1).astype(int) - images.reshape(50, -1).min(axis=1)
    assert per_image_range.min() > 60


def test_foreground_stands_out_from_background():
    # White-box check of a design invariant: after colour jitter and clipping, the shape colour stays
    # far (in RGB, 0..1 units) from every colour of its background gradient, so it is always visible.
    p = shapes._draw_params(np.random.default_rng(0), 20_000, 32)
    fg, bg0, bg1 = (np.clip(p[k], 0.0, 1.0) for k in ("fg", "bg0", "bg1"))
    assert shapes._dist_to_segment(fg, bg0, bg1).min() > 0.25


@pytest.mark.parametrize("n", [1, 7, 10, 1003])
def test_classes_balanced(n):
    _, labels = make_shapes(n, seed=11)
    counts = np.bincount(labels, minlength=N_CLASSES)
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1


def test_labels_are_shuffled():
    _, labels = make_shapes(100, seed=0)
    assert not np.array_equal(labels, np.arange(100) % N_CLASSES)


def test_same_seed_is_identical():
    a = make_shapes(64, seed=5)
    b = make_shapes(64, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # Independent of the global numpy RNG state.
    np.random.seed(1234)
    np.random.random(10)
    c = make_shapes(64, seed=5)
    assert _digest(*a) == _digest(*c)


def test_different_seed_differs():
    a, la = make_shapes(64, seed=5)
    b, lb = make_shapes(64, seed=6)
    assert not np.array_equal(a, b)
    assert not np.array_equal(la, lb)


def test_golden_digest():
    assert _digest(*make_shapes(40, seed=123)) == GOLDEN_SHA256


def test_numpy_integer_arguments_accepted():
    a = make_shapes(np.int64(12), seed=np.int32(2), size=np.int16(20))
    b = make_shapes(12, seed=2, size=20)
    assert _digest(*a) == _digest(*b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, r"n must be >= 1"),
        ({"n": -5}, r"n must be >= 1"),
        ({"n": 2.0}, r"n must be an integer"),
        ({"n": True}, r"n must be an integer"),
        ({"n": 4, "size": 15}, r"size must be >= 16"),
        ({"n": 4, "size": 0}, r"size must be >= 16"),
        ({"n": 4, "size": 32.0}, r"size must be an integer"),
        ({"n": 4, "seed": -1}, r"seed must be >= 0"),
        ({"n": 4, "seed": "a"}, r"seed must be an integer"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**kwargs)


# --- difficulty ---------------------------------------------------------------------------------

N_TRAIN, N_TEST = 6000, 2000


def _normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW, roughly zero-mean unit-variance."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25


@pytest.fixture(scope="module")
def split():
    x_train, y_train = make_shapes(N_TRAIN, seed=1)
    x_test, y_test = make_shapes(N_TEST, seed=2)  # another seed: no image is shared with training
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def linear_accuracy(split):
    """(train, test) accuracy of multinomial logistic regression on raw pixels, trained to convergence."""
    x_train, y_train, x_test, y_test = split
    a_train = _normalise(x_train).reshape(N_TRAIN, -1)
    a_test = _normalise(x_test).reshape(N_TEST, -1)
    t_train, t_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    weight_decay = 0.05
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Linear(a_train.shape[1], N_CLASSES)
    # Full-batch L-BFGS on a strictly convex objective: it stops on a small gradient (~150 steps).
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=400, history_size=20, tolerance_grad=1e-5, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(a_train), t_train) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    grad = max(p.grad.abs().max().item() for p in model.parameters())
    assert grad < 1e-3, f"logistic regression did not converge (max |grad| = {grad:.2e})"
    with torch.no_grad():
        train = (model(a_train).argmax(1) == t_train).float().mean().item()
        test = (model(a_test).argmax(1) == t_test).float().mean().item()
    return train, test


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, two 2x2 max-pools, global max pooling and a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
        )
        # Global max pooling is translation invariant and reports "this part occurs somewhere",
        # which is what the classes are; global averaging learns the same, but much more slowly.
        self.head = nn.Linear(4 * width, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn_accuracy(split):
    """Test accuracy of SmallCNN after 3 epochs of AdamW (batch 128, one-cycle learning rate)."""
    x_train, y_train, x_test, y_test = split
    a_train, a_test = _normalise(x_train), _normalise(x_test)
    t_train, t_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    epochs, batch = 3, 128
    steps = epochs * -(-N_TRAIN // batch)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN()
        order = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.2)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(N_TRAIN, generator=order)
            for i in range(0, N_TRAIN, batch):
                idx = perm[i : i + batch]
                loss = F.cross_entropy(model(a_train[idx]), t_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    with torch.no_grad():
        return (model(a_test).argmax(1) == t_test).float().mean().item()


def test_colour_alone_gives_nothing_away(split):
    # Negative control: nearest class mean of the per-image mean RGB colour (which also captures mean
    # brightness). Colours are drawn independently of the class, so this stays at chance (measured 0.10).
    x_train, y_train, x_test, y_test = split
    m_train = x_train.reshape(N_TRAIN, -1, 3).mean(axis=1)
    m_test = x_test.reshape(N_TEST, -1, 3).mean(axis=1)
    centroids = np.stack([m_train[y_train == k].mean(axis=0) for k in range(N_CLASSES)])
    pred = ((m_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    accuracy = (pred == y_test).mean()
    assert accuracy < 0.20, f"mean colour predicts the class: {accuracy:.3f}"


def test_linear_classifier_stays_near_chance(linear_accuracy):
    # It can fit the training set (so the optimiser works: measured 0.52), but it does not generalise:
    # position, size, rotation and colours are random, so no fixed pixel template exists (measured 0.145).
    train, test = linear_accuracy
    assert train > 0.35, f"logistic regression failed to fit: train accuracy {train:.3f}"
    assert test < 0.25, f"a linear model on raw pixels reaches {test:.3f}"


def test_small_cnn_learns_the_shapes(cnn_accuracy):
    # Measured 0.71-0.75 over torch seeds; chance is 0.10.
    assert cnn_accuracy > 0.50, f"small CNN only reaches {cnn_accuracy:.3f}"


def test_small_cnn_does_not_saturate(cnn_accuracy):
    # The data set must leave pruning something to lose: a short training is far from perfect.
    assert cnn_accuracy < 0.95, f"small CNN reaches {cnn_accuracy:.3f}: the data set became too easy"


def test_cnn_beats_linear_by_a_wide_margin(cnn_accuracy, linear_accuracy):
    # Measured margin ~0.57; the data set is only useful if learning features is what pays.
    _, linear_test = linear_accuracy
    assert cnn_accuracy - linear_test >= 0.30, f"CNN {cnn_accuracy:.3f} vs linear {linear_test:.3f}"
