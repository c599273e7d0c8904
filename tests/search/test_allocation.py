"""DSA's differentiable allocation: an exact mean, implicit gradients, top-k at low temperature."""

from __future__ import annotations

import pytest
import torch

from dais_search.search.allocation import allocate


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.05])
def test_allocation_mean_and_gradients_match_finite_differences(temperature):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(24, generator=g, dtype=torch.float64).requires_grad_()
    keep = torch.tensor(0.35, dtype=torch.float64, requires_grad=True)
    masks = allocate(scores, keep, temperature)
    assert float(masks.sum()) == pytest.approx(0.35 * 24, abs=1e-6)
    weights = torch.randn(24, generator=g, dtype=torch.float64)
    grad_s, grad_k = torch.autograd.grad((masks * weights).sum(), (scores, keep))

    def f(s, k):
        return float((allocate(s, k, temperature) * weights).sum())

    eps = 1e-6
    s0, k0 = scores.detach(), keep.detach()
    assert float(grad_k) == pytest.approx((f(s0, k0 + eps) - f(s0, k0 - eps)) / (2 * eps), rel=1e-5, abs=1e-7)
    for i in (0, 5, 17):
        e = torch.zeros_like(s0)
        e[i] = eps
        assert float(grad_s[i]) == pytest.approx((f(s0 + e, k0) - f(s0 - e, k0)) / (2 * eps), rel=1e-5, abs=1e-7)



def test_low_temperature_allocation_is_top_k():
    scores = torch.tensor([3.0, -1.0, 2.0, 0.5, -2.0, 1.0])
    masks = allocate(scores, torch.tensor(0.5), 0.01)
    assert torch.equal(masks > 0.5, torch.tensor([True, False, True, False, False, True]))
