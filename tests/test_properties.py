"""Property tests (hypothesis) for ``ts_loss`` (every variant and scale) and ``persistence``.

Guaranteed, for ANY finite prompt of 3..8 points in 1..6 dimensions, including duplicate rows,
collinear points, a single repeated point, coordinates scaled by 1e-8 .. 1e8, and float64,
float32 or bfloat16 storage:

* ``ts_loss`` (``variant`` soft / exact x ``scale`` absolute / mean): every output field
  (total, h0, h1, delta, zeta) is finite, and the gradient of ``total`` w.r.t. the prompt is
  finite (no NaN at zero distances, no overflow at 1e8, no underflow at 1e-8).
* ``ts_loss`` is invariant to the row order, to translation and to rotation, up to the rounding
  of the transformed prompt in its own dtype (tolerances derived below, never loosened per
  example). The exact variant's H1 term is the mean H1 lifespan, which is not continuous (a
  rounding-sized perturbation can create or remove a near-zero-length loop and so change the
  count it averages over); its invariance is therefore checked through the H1 *total*
  lifespan (``h1 * h1_count``), which is continuous, and exactly for the row order.
* ``scale="mean"`` is also invariant to a global rescaling of the prompt.
* bfloat16 storage changes nothing but the rounding: the loss of a bf16 prompt equals the loss
  of the same values in float32.
* ``persistence``: diagrams are finite (except the one infinite H0 bar), births <= deaths,
  every summary is finite and non-negative, ``h0_count`` lies in 1..n, the entropy is at most
  ``log`` of the number of finite bars; the diagrams are invariant to the row order (exactly)
  and move by at most the distance perturbation under translation and rotation (the
  stability theorem, checked with the bottleneck distance); torch bf16 input equals its
  float32 values.
* ``evolution`` (the diagram distances between two snapshots): finite and non-negative for any
  such pair of clouds (empty H1, a lone infinite H0 bar, ~1e-8 bars of near-duplicates
  included), 0 between a cloud and itself, symmetric, at least the bottleneck for W1, and the
  bottleneck is at most the largest change of a pairwise distance (stability).

Runs are deterministic (``derandomize=True``, no example database) so CI sees the same
examples every time.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hf_tsprompt.losses import ts_loss
from hf_tsprompt.topology import EVOLUTION_KEYS, evolution, persistence

FIELDS = ("total", "h0", "h1", "delta", "zeta")
DTYPES = (torch.float64, torch.float32, torch.bfloat16)
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}

#: Examples per property (about 0.1 s each); ``HF_TSPROMPT_PROPERTY_EXAMPLES=2000`` and
#: ``HF_TSPROMPT_PROPERTY_RANDOM=1`` (fresh random examples) for a long local search.
PROPERTY = settings(
    max_examples=int(os.environ.get("HF_TSPROMPT_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    derandomize=not os.environ.get("HF_TSPROMPT_PROPERTY_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------

_unit = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def clouds(draw: Any, max_n: int = 8, max_d: int = 6) -> np.ndarray:
    """An (n x d) float64 cloud: generic, with duplicate rows, collinear, or one repeated point,
    scaled by 10^k for k in -8..8."""
    n = draw(st.integers(3, max_n))
    d = draw(st.integers(1, max_d))
    base = draw(arrays(np.float64, (n, d), elements=_unit))
    shape = draw(st.sampled_from(["generic", "duplicates", "collinear", "one_point"]))
    if shape == "duplicates":
        rows = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
        base = base[rows]
    elif shape == "collinear":
        t = draw(arrays(np.float64, (n,), elements=_unit))
        base = base[0] + t[:, None] * base[1]
    elif shape == "one_point":
        base = np.repeat(base[:1], n, axis=0)
    exponent = draw(st.integers(-8, 8))
    return base * 10.0**exponent


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _radius(*clouds_: np.ndarray) -> float:
    """A bound on every distance of the clouds (and so on the loss's length unit)."""
    return max(float(np.abs(c).max()) * math.sqrt(c.shape[1]) for c in clouds_) * 2.0


def _loss(P: np.ndarray | torch.Tensor, dtype: torch.dtype, **kw: Any) -> dict[str, float]:
    T = P if isinstance(P, torch.Tensor) else torch.tensor(P, dtype=torch.float64)
    out = ts_loss(T.to(dtype), tau=kw.pop("tau", 0.1), alpha=kw.pop("alpha", 10.0), **kw)
    return {f: float(getattr(out, f)) for f in FIELDS}


def _h1_count(P: np.ndarray, dtype: torch.dtype, scale: str) -> int:
    """Number of H1 bars the exact variant averages over (same distances as ts_loss)."""
    from hf_tsprompt.losses import pairwise_distances
    from hf_tsprompt.topology import persistence_pairs

    D = pairwise_distances(torch.tensor(P, dtype=torch.float64).to(dtype))
    if scale == "mean":  # as ts_loss does it, in the same dtype
        mean = D[~torch.eye(D.shape[0], dtype=torch.bool)].mean()
        D = D / mean.clamp_min(torch.finfo(D.dtype).tiny)
    return len(persistence_pairs(D.double().numpy()).h1_diagram)


def _units(field: str, variant: str) -> int:
    """Power of the length unit a field carries (D^2 for variances and squared hinges)."""
    if field in ("delta", "zeta") or (variant == "exact" and field == "h1"):
        return 1
    return 2


def _mean_distance(P: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(P).mean())


def _assert_close(
    a: dict[str, float],
    b: dict[str, float],
    *,
    err: float,
    radius: float,
    n: int,
    variant: str,
    mean: float | None = None,
    eps: float = 0.0,
    tau: float = 0.1,
) -> None:
    """|a - b| within the Lipschitz bound of each field for a distance error ``err``.

    The soft quantiles and soft minima are Lipschitz in D with a constant below n^2 (the
    softmax weights' derivative x e^-x <= 1/e per pair), the variances and squared hinges
    add a factor 2 * radius; the exact terms are 1-Lipschitz per bar. The soft minima s_i
    also carry an offset of about tau * log(n) whatever the scale, so they are rounded at
    ``eps`` (the compute precision) relative to it. With ``mean`` (the ``scale="mean"``
    unit) lengths are measured in units of the mean distance.
    """
    if mean is not None:
        if mean == 0.0:
            err, radius = 0.0, 0.0  # one repeated point: every field is exactly 0
        else:
            err, radius = 4 * err / mean, radius / mean
    lip = n * n
    err_s = err + 16 * eps * tau * math.log(n) if variant == "soft" else err
    for field in FIELDS:
        if variant == "exact" and field in ("h1", "total"):
            continue  # discontinuous (see module docstring); checked via the total lifespan
        e = err_s if field in ("h0", "total") else err
        tol = lip * e * (4 * radius + e) if _units(field, variant) == 2 else lip * e
        assert abs(a[field] - b[field]) <= tol + 1e-300, (field, a[field], b[field], tol)


# --- ts_loss ----------------------------------------------------------------------------------


@PROPERTY
@given(
    P=clouds(),
    dtype=st.sampled_from(DTYPES),
    variant=st.sampled_from(["soft", "exact"]),
    scale=st.sampled_from(["absolute", "mean"]),
    tau=st.sampled_from([1e-3, 0.1, 10.0]),
    alpha=st.sampled_from([0.1, 10.0, 1e3]),
)
def test_ts_loss_and_gradient_are_finite(
    P: np.ndarray, dtype: torch.dtype, variant: str, scale: str, tau: float, alpha: float
) -> None:
    T = torch.tensor(P, dtype=torch.float64).to(dtype).requires_grad_(True)
    out = ts_loss(T, tau=tau, alpha=alpha, variant=variant, scale=scale)
    for field in FIELDS:
        assert torch.isfinite(getattr(out, field)).item(), (field, getattr(out, field))
    assert float(out.h0.detach()) >= 0 and float(out.h1.detach()) >= 0
    out.total.backward()
    assert T.grad is not None and T.grad.dtype == dtype
    assert torch.isfinite(T.grad.float()).all(), T.grad


@PROPERTY
@given(
    P=clouds(),
    dtype=st.sampled_from(DTYPES),
    variant=st.sampled_from(["soft", "exact"]),
    scale=st.sampled_from(["absolute", "mean"]),
    data=st.data(),
)
def test_ts_loss_is_invariant_to_row_order(
    P: np.ndarray, dtype: torch.dtype, variant: str, scale: str, data: Any
) -> None:
    perm = data.draw(st.permutations(range(P.shape[0])))
    a = _loss(P, dtype, variant=variant, scale=scale)
    b = _loss(P[list(perm)], dtype, variant=variant, scale=scale)
    # Same values in another order: only the centring's summation order differs.
    radius = _radius(P)
    err = 64 * EPS[torch.float32 if dtype == torch.bfloat16 else dtype] * radius
    mean = _mean_distance(P) if scale == "mean" else None
    compute_eps = EPS[torch.float64 if dtype == torch.float64 else torch.float32]
    _assert_close(
        a, b, err=err, radius=radius, n=P.shape[0], variant=variant, mean=mean, eps=compute_eps
    )
    if variant == "exact":
        _assert_h1_total_close(P, P[list(perm)], a, b, dtype, scale, err, mean)


def _assert_h1_total_close(
    P: np.ndarray,
    moved: np.ndarray,
    a: dict[str, float],
    b: dict[str, float],
    dtype: torch.dtype,
    scale: str,
    err: float,
    mean: float | None,
) -> None:
    """The exact H1 total lifespan (mean lifespan x count) moves by <= 2 err per bar."""
    n = P.shape[0]
    if mean is not None:
        err = 0.0 if mean == 0.0 else 4 * err / mean
    total_a = a["h1"] * _h1_count(P, dtype, scale)
    total_b = b["h1"] * _h1_count(moved, dtype, scale)
    assert total_a == pytest.approx(total_b, abs=2 * n * n * err + 1e-300)


@PROPERTY
@given(
    P=clouds(),
    dtype=st.sampled_from((torch.float64, torch.float32)),
    variant=st.sampled_from(["soft", "exact"]),
    scale=st.sampled_from(["absolute", "mean"]),
    move=st.sampled_from(["translate", "rotate"]),
    data=st.data(),
)
def test_ts_loss_is_invariant_to_translation_and_rotation(
    P: np.ndarray, dtype: torch.dtype, variant: str, scale: str, move: str, data: Any
) -> None:
    n, d = P.shape
    if move == "translate":
        shift = data.draw(arrays(np.float64, (d,), elements=_unit)) * 100.0
        moved = P + shift * float(np.abs(P).max())
    else:
        moved = P @ _orthogonal(d, data.draw(st.integers(0, 2**16)))
    a = _loss(P, dtype, variant=variant, scale=scale)
    b = _loss(moved, dtype, variant=variant, scale=scale)
    radius = _radius(P, moved)
    # Storing each cloud in ``dtype`` moves every distance by at most 2 eps * radius.
    err = 64 * EPS[dtype] * radius
    mean = _mean_distance(P) if scale == "mean" else None
    _assert_close(a, b, err=err, radius=radius, n=n, variant=variant, mean=mean, eps=EPS[dtype])
    if variant == "exact":
        _assert_h1_total_close(P, moved, a, b, dtype, scale, err, mean)


@PROPERTY
@given(P=clouds(), factor_exp=st.integers(-6, 6), variant=st.sampled_from(["soft", "exact"]))
def test_mean_scale_is_invariant_to_rescaling(P: np.ndarray, factor_exp: int, variant: str):
    a = _loss(P, torch.float64, variant=variant, scale="mean")
    b = _loss(P * 10.0**factor_exp, torch.float64, variant=variant, scale="mean")
    # D / mean(D) is dimensionless: the fields are equal up to float64 rounding.
    err = 1e-9
    _assert_close(a, b, err=err, radius=1.0 * P.shape[0], n=P.shape[0], variant=variant, eps=1e-12)


@PROPERTY
@given(P=clouds(), variant=st.sampled_from(["soft", "exact"]))
def test_bf16_prompt_equals_its_float32_values(P: np.ndarray, variant: str) -> None:
    bf16 = torch.tensor(P, dtype=torch.float64).to(torch.bfloat16)
    a = _loss(bf16, torch.bfloat16, variant=variant)
    b = _loss(bf16.float(), torch.float32, variant=variant)
    assert a == b  # the bf16 path upcasts first: bit-identical computation


# --- persistence ------------------------------------------------------------------------------


def _finite_bars(dgm: np.ndarray) -> np.ndarray:
    return dgm[np.isfinite(dgm[:, 1])]


def _bottleneck(a: np.ndarray, b: np.ndarray) -> float:
    from persim import bottleneck

    a, b = _finite_bars(a), _finite_bars(b)
    if len(a) == 0 and len(b) == 0:
        return 0.0
    return float(bottleneck(a, b))


@PROPERTY
@given(P=clouds(), as_tensor=st.sampled_from([None, torch.float32, torch.bfloat16]))
def test_persistence_is_finite_and_consistent(P: np.ndarray, as_tensor: torch.dtype | None):
    X: Any = P if as_tensor is None else torch.tensor(P).to(as_tensor).requires_grad_(True)
    result = persistence(X)
    n = P.shape[0]
    h0, h1 = result.diagrams
    assert np.isinf(h0[-1, 1]) and np.isfinite(h0[:-1]).all() and np.isfinite(h1).all()
    assert (h0[:, 0] == 0).all() and (h1[:, 0] <= h1[:, 1]).all() and (h0[:-1, 1] >= 0).all()
    summary = result.summary()
    assert all(math.isfinite(v) and v >= 0 for v in summary.values()), summary
    assert 1 <= summary["h0_count"] <= n
    bars = len(h0) - 1 + len(h1)
    assert summary["entropy"] <= math.log(max(bars, 1)) + 1e-9
    if as_tensor is not None:
        same = persistence(X.detach().float().numpy())
        assert all(
            np.array_equal(x, y) for x, y in zip(result.diagrams, same.diagrams, strict=True)
        )


@PROPERTY
@given(P=clouds(), move=st.sampled_from(["permute", "translate", "rotate"]), data=st.data())
def test_persistence_is_invariant_and_stable(P: np.ndarray, move: str, data: Any) -> None:
    n, d = P.shape
    if move == "permute":
        moved = P[list(data.draw(st.permutations(range(n))))]
    elif move == "translate":
        shift = data.draw(arrays(np.float64, (d,), elements=_unit)) * 100.0
        moved = P + shift * float(np.abs(P).max())
    else:
        moved = P @ _orthogonal(d, data.draw(st.integers(0, 2**16)))
    a, b = persistence(P), persistence(moved)
    if move == "permute":  # the very same distances: the very same diagrams
        for x, y in zip(a.diagrams, b.diagrams, strict=True):
            assert np.array_equal(x, y)
        assert a.summary() == pytest.approx(b.summary(), rel=1e-12)  # sums in another order
        return
    # Stability: diagrams move by at most the largest distance change (float64 rounding of
    # the moved cloud, then ripser's float32 values).
    radius = _radius(P, moved)
    err = 64 * EPS[torch.float64] * radius + 2 * EPS[torch.float32] * radius
    for k in (0, 1):
        assert _bottleneck(a.diagrams[k], b.diagrams[k]) <= err


@PROPERTY
@given(P=clouds(), data=st.data())
def test_evolution_is_finite_symmetric_and_stable(P: np.ndarray, data: Any) -> None:
    n, d = P.shape
    kind = data.draw(st.sampled_from(["nudge", "other", "collapse"]))
    noise = data.draw(arrays(np.float64, (n, d), elements=_unit))
    if kind == "nudge":  # a training step: every point moves a little (duplicates split)
        size = 10.0 ** data.draw(st.integers(-10, 0)) * max(float(np.abs(P).max()), 1e-300)
        Q = P + noise * size
    elif kind == "other":  # an unrelated cloud, at another scale
        Q = noise * 10.0 ** data.draw(st.integers(-8, 8))
    else:  # every point onto one: no finite bar left on that side
        Q = np.repeat(noise[:1], n, axis=0)
    a, b = persistence(P), persistence(Q)
    ab, ba = evolution(a, b), evolution(b, a)
    assert tuple(ab) == EVOLUTION_KEYS
    assert all(math.isfinite(v) and v >= 0 for v in ab.values()), ab
    assert all(v == 0.0 for v in evolution(a, a).values())
    assert ab == pytest.approx(ba, rel=1e-9, abs=0)
    change = float(np.abs(_pdist(P) - _pdist(Q)).max()) if n > 1 else 0.0
    err = 2 * EPS[torch.float32] * _radius(P, Q)  # ripser's float32 diagram values
    for k in (0, 1):
        assert ab[f"h{k}_wasserstein"] >= ab[f"h{k}_bottleneck"] * (1 - 1e-12)
        assert ab[f"h{k}_bottleneck"] <= change + err


def _pdist(X: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import pdist

    return pdist(X)
