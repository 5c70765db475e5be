"""TSLoss (Eq. 1-6), its exact variant and the baselines, against independent truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_tsprompt.losses import (
    TSLoss,
    l2_loss,
    pairwise_distance_loss,
    pairwise_distances,
    soft_nearest_neighbour,
    soft_quantile_scales,
    ts_loss,
)
from hf_tsprompt.topology import persistence

# A 3-4-5 right triangle: D_01 = 3, D_02 = 4, D_12 = 5.
TRIANGLE = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]


def _hand_ts(points, tau, alpha, lr=1.0, la=1.0):
    """Eq. 1-5 over i != j in plain Python floats: an independent re-derivation."""
    n = len(points)
    dist = [[math.dist(points[i], points[j]) for j in range(n)] for i in range(n)]
    s = [
        -tau * math.log(sum(math.exp(-dist[i][j] / tau) for j in range(n) if j != i))
        for i in range(n)
    ]
    mean_s = sum(s) / n
    h0 = sum((si - mean_s) ** 2 for si in s) / n
    off = [dist[i][j] for i in range(n) for j in range(n) if i != j]
    zl = sum(math.exp(-alpha * d) for d in off)
    zh = sum(math.exp(alpha * d) for d in off)
    delta = sum(math.exp(-alpha * d) / zl * d for d in off)
    zeta = sum(math.exp(alpha * d) / zh * d for d in off)
    h1 = sum(lr * max(0.0, delta - d) ** 2 + la * max(0.0, d - zeta) ** 2 for d in off) / len(off)
    return h0, h1, delta, zeta


@pytest.mark.parametrize("tau,alpha", [(1.0, 0.5), (0.5, 2.0), (3.0, 0.1)])
def test_values_match_hand_computation(tau, alpha):
    P = torch.tensor(TRIANGLE, dtype=torch.float64)
    out = ts_loss(P, tau=tau, alpha=alpha, beta_h0=0.7, beta_h1=1.3, lambda_repel=2.0)
    h0, h1, delta, zeta = _hand_ts(TRIANGLE, tau, alpha, lr=2.0)
    assert out.h0.item() == pytest.approx(h0, rel=1e-12, abs=1e-14)
    assert out.h1.item() == pytest.approx(h1, rel=1e-12, abs=1e-14)
    assert out.delta.item() == pytest.approx(delta, rel=1e-12)
    assert out.zeta.item() == pytest.approx(zeta, rel=1e-12)
    assert out.total.item() == pytest.approx(0.7 * h0 + 1.3 * h1, rel=1e-12)


def test_hand_case_is_not_trivial():
    # The triangle's terms are all non-zero, so the comparison above checks real numbers.
    h0, h1, delta, zeta = _hand_ts(TRIANGLE, 1.0, 0.5)
    assert h0 > 1e-3 and h1 > 1e-3 and 3 < delta < zeta < 5


def test_diagonal_is_excluded():
    # Including j = i (the paper's literal Eq. 1) would put exp(0) = 1 into every sum.
    P = torch.tensor(TRIANGLE, dtype=torch.float64)
    D = pairwise_distances(P)
    s = soft_nearest_neighbour(D, tau=1.0)
    assert s[0].item() == pytest.approx(-math.log(math.exp(-3) + math.exp(-4)), rel=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(1)
    P = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda x: ts_loss(x, tau=0.3, alpha=2.0, beta_h1=2.0).total  # noqa: E731
    assert torch.autograd.gradcheck(fn, (P,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(l2_loss, (P,))
    assert torch.autograd.gradcheck(pairwise_distance_loss, (P,))


def test_distance_backward_gradcheck_and_zero_subgradient():
    from hf_tsprompt.losses import _SafeEuclidean

    torch.manual_seed(0)
    X = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SafeEuclidean.apply, (X,))
    Y = X.detach().clone()
    Y[2] = Y[0]
    Y.requires_grad_(True)
    _SafeEuclidean.apply(Y)[0, 2].backward()
    assert torch.equal(Y.grad, torch.zeros_like(Y))


def test_large_alpha_recovers_min_and_max():
    torch.manual_seed(0)
    P = torch.randn(7, 5, dtype=torch.float64)
    D = pairwise_distances(P)
    off = D[~torch.eye(7, dtype=torch.bool)]
    delta, zeta = soft_quantile_scales(D, alpha=1e4)
    assert delta.item() == pytest.approx(off.min().item(), rel=1e-9)
    assert zeta.item() == pytest.approx(off.max().item(), rel=1e-9)
    # For any alpha they stay weighted means: min <= delta <= mean <= zeta <= max.
    d_small, z_small = soft_quantile_scales(D, alpha=0.3)
    assert off.min() <= d_small <= off.mean() <= z_small <= off.max()


def test_small_tau_recovers_nearest_neighbour():
    torch.manual_seed(0)
    P = torch.randn(6, 3, dtype=torch.float64)
    D = pairwise_distances(P)
    nn_dist = (D + torch.eye(6, dtype=torch.float64) * 1e9).min(dim=1).values
    s = soft_nearest_neighbour(D, tau=1e-4)
    assert torch.allclose(s, nn_dist, atol=1e-3)
    assert (s <= nn_dist + 1e-12).all()


def test_distances_match_scipy():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 50)) * 5 + 100.0  # large offset: centring must avoid cancellation
    D = pairwise_distances(torch.tensor(X, dtype=torch.float32))
    assert np.allclose(D.numpy(), cdist(X, X), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant", ["soft", "exact"])
def test_duplicate_rows_have_finite_gradients(variant):
    torch.manual_seed(0)
    P = torch.randn(6, 8)
    P[3] = P[1]
    P[4] = P[1]
    P.requires_grad_(True)
    out = ts_loss(P, tau=0.1, alpha=10.0, variant=variant)
    out.total.backward()
    assert torch.isfinite(out.total)
    assert torch.isfinite(P.grad).all()
    D = pairwise_distances(P)
    assert D[1, 3].item() == 0.0


@pytest.mark.parametrize("variant", ["soft", "exact"])
def test_invariant_to_translation_rotation_and_row_order(variant):
    torch.manual_seed(0)
    P = torch.randn(10, 16, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    moved = P @ Q + 3.5
    perm = P[torch.randperm(10)]
    ref = ts_loss(P, tau=0.5, alpha=3.0, variant=variant)
    for other in (moved, perm):
        out = ts_loss(other, tau=0.5, alpha=3.0, variant=variant)
        for field in ("total", "h0", "h1", "delta", "zeta"):
            assert getattr(out, field).item() == pytest.approx(
                getattr(ref, field).item(), rel=1e-7, abs=1e-10
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(dtype):
    torch.manual_seed(0)
    P64 = torch.randn(12, 64, dtype=torch.float64) * 0.02
    P = P64.to(dtype).requires_grad_(True)
    out = ts_loss(P, tau=0.1, alpha=10.0)
    assert out.total.dtype == torch.float32  # computed in float32 whatever the input
    out.total.backward()
    assert P.grad is not None and P.grad.dtype == dtype and torch.isfinite(P.grad.float()).all()
    ref = ts_loss(P.detach().to(torch.float64), tau=0.1, alpha=10.0)
    assert out.total.item() == pytest.approx(ref.total.item(), rel=1e-3, abs=1e-9)


def test_float32_matches_float64():
    torch.manual_seed(0)
    P = torch.randn(20, 576, dtype=torch.float64) * 0.02
    a = ts_loss(P.float(), tau=0.1, alpha=10.0)
    b = ts_loss(P, tau=0.1, alpha=10.0)
    assert a.total.item() == pytest.approx(b.total.item(), rel=1e-4)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(2, 5), "at least 3"),
        (torch.randn(4), "2-D"),
        (torch.randn(2, 3, 4), "2-D"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), "NaN or Inf"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [1.0, 1.0]]), "NaN or Inf"),
        (torch.ones(4, 3, dtype=torch.long), "floating"),
        ([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], "torch.Tensor"),
    ],
)
def test_bad_prompt_matrix(bad, match):
    with pytest.raises(ValueError, match=match):
        ts_loss(bad, tau=0.1, alpha=10.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tau": 0.0, "alpha": 1.0}, "tau must be > 0"),
        ({"tau": float("nan"), "alpha": 1.0}, "tau must be a finite"),
        ({"tau": 1.0, "alpha": -2.0}, "alpha must be > 0"),
        ({"tau": 1.0, "alpha": 1.0, "beta_h0": -1.0}, "beta_h0 must be >= 0"),
        ({"tau": 1.0, "alpha": 1.0, "variant": "fuzzy"}, "variant must be one of"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ts_loss(torch.randn(5, 3), **kwargs)


def test_module_matches_function():
    torch.manual_seed(0)
    P = torch.randn(8, 6)
    mod = TSLoss(tau=0.2, alpha=4.0, beta_h0=0.5, lambda_attract=3.0)
    a = mod(P)
    b = ts_loss(P, tau=0.2, alpha=4.0, beta_h0=0.5, lambda_attract=3.0)
    assert torch.equal(a.total, b.total)
    assert "tau=0.2" in repr(mod)
    with pytest.raises(ValueError):
        TSLoss(tau=-1.0, alpha=1.0)


def test_l2_loss_hand_value():
    P = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    assert l2_loss(P).item() == pytest.approx((5 + 9 + 0) / 3)


def test_pdloss_hand_value_and_variance_identity():
    P = torch.tensor(TRIANGLE, dtype=torch.float64)
    assert pairwise_distance_loss(P).item() == pytest.approx((9 + 16 + 25) * 2 / 6)
    torch.manual_seed(0)
    X = torch.randn(7, 5, dtype=torch.float64)
    total_var = ((X - X.mean(0)) ** 2).sum(1).mean()
    assert pairwise_distance_loss(X).item() == pytest.approx((2 * 7 / 6) * total_var.item())


# --- exact variant ---------------------------------------------------------------------------


def test_exact_values_equal_persistence_summaries():
    torch.manual_seed(0)
    P = torch.randn(25, 32, dtype=torch.float64)
    out = ts_loss(P, tau=0.1, alpha=10.0, variant="exact")
    summary = persistence(P).summary()
    assert summary["h1_count"] > 0  # the H1 term is exercised
    # ripser reports float32 values; the exact loss indexes the float64 matrix.
    assert out.h0.item() == pytest.approx(summary["h0_death_variance"], rel=1e-5)
    assert out.h1.item() == pytest.approx(summary["h1_mean_lifespan"], rel=1e-4, abs=1e-7)
    deaths = persistence(P).diagrams[0][:-1, 1]
    assert out.delta.item() == pytest.approx(deaths.min(), rel=1e-6)
    assert out.zeta.item() == pytest.approx(deaths.max(), rel=1e-6)


def test_exact_gradients_match_finite_differences():
    torch.manual_seed(3)
    theta = torch.linspace(0, 2 * math.pi, 11, dtype=torch.float64)[:-1]
    P = torch.zeros(10, 5, dtype=torch.float64)
    P[:, 0], P[:, 1] = torch.cos(theta), torch.sin(theta)
    P = P + 0.05 * torch.randn(10, 5, dtype=torch.float64)  # a noisy loop: no ties
    assert persistence(P).summary()["h1_count"] > 0
    P.requires_grad_(True)
    fn = lambda x: ts_loss(x, tau=0.1, alpha=1.0, variant="exact").total  # noqa: E731
    fn(P).backward()
    analytic = P.grad.clone()
    eps = 1e-7
    numeric = torch.zeros_like(P)
    with torch.no_grad():
        for idx in np.ndindex(*P.shape):
            plus, minus = P.clone(), P.clone()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    # Generic points have no ties, so the pairing is locally constant and the loss smooth.
    assert torch.allclose(analytic, numeric, atol=1e-5, rtol=1e-4)


def test_exact_at_ties_is_finite():
    # A square: four equal sides and two equal diagonals, every pairing is a tie.
    P = torch.tensor(
        [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True
    )
    out = ts_loss(P, tau=0.1, alpha=10.0, variant="exact")
    out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(P.grad).all()


def test_exact_without_loops_has_zero_h1():
    P = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.5, 0.0], [4.5, 0.0]], requires_grad=True)
    out = ts_loss(P, tau=0.1, alpha=1.0, variant="exact")
    assert out.h1.item() == 0.0
    out.total.backward()
    assert torch.isfinite(P.grad).all()


# --- scale-free distances ----------------------------------------------------------------------


def test_mean_scale_is_invariant_to_the_prompt_norm():
    torch.manual_seed(0)
    P = torch.randn(12, 64, dtype=torch.float64)
    a = ts_loss(P, tau=0.1, alpha=10.0, scale="mean")
    b = ts_loss(P * 0.02, tau=0.1, alpha=10.0, scale="mean")
    assert a.total.item() == pytest.approx(b.total.item(), rel=1e-9)
    # ... which the paper's absolute form is not: small prompts make it vanish.
    small = ts_loss(P * 0.02, tau=0.1, alpha=10.0)
    assert small.total.item() < 0.2 * a.total.item()


def test_mean_scale_equals_the_absolute_form_on_rescaled_distances():
    torch.manual_seed(1)
    P = torch.randn(9, 16, dtype=torch.float64)
    mean = pairwise_distances(P)[~torch.eye(9, dtype=torch.bool)].mean()
    a = ts_loss(P, tau=0.3, alpha=4.0, scale="mean")
    b = ts_loss(P / mean, tau=0.3, alpha=4.0)
    for field in ("total", "h0", "h1", "delta", "zeta"):
        assert getattr(a, field).item() == pytest.approx(getattr(b, field).item(), rel=1e-9)
    Q = P.clone().requires_grad_(True)
    ts_loss(Q, tau=0.3, alpha=4.0, scale="mean").total.backward()
    assert torch.isfinite(Q.grad).all()
    with pytest.raises(ValueError, match="scale must be one of"):
        ts_loss(P, tau=0.3, alpha=4.0, scale="relative")
