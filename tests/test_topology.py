"""Persistence and its summaries against independent truth (scipy MST, geometry, hand math)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from hf_tsprompt.topology import (
    SUMMARY_KEYS,
    diagrams_from_lists,
    persistence,
    persistence_entropy,
    persistence_pairs,
)


def _circle(n=30, dim=64, radius=1.0, seed=0):
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    X = np.zeros((n, dim))
    X[:, 0] = radius * np.cos(theta)
    X[:, 1] = radius * np.sin(theta)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return X @ Q


def test_h0_deaths_equal_mst_edge_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 576)) * 0.02
    res = persistence(X)
    mst = minimum_spanning_tree(squareform(pdist(X))).data
    deaths = res.diagrams[0][:-1, 1]
    assert len(deaths) == len(mst) == 39
    assert np.allclose(np.sort(deaths), np.sort(mst), rtol=1e-6)
    assert np.isinf(res.diagrams[0][-1, 1]) and (res.diagrams[0][:, 0] == 0).all()


def test_circle_in_r64_has_exactly_one_long_h1_bar():
    res = persistence(_circle())
    h1 = res.diagrams[1]
    assert len(h1) == 1
    birth, death = h1[0]
    side = 2 * math.sin(math.pi / 30)  # neighbouring points on the unit circle
    assert birth == pytest.approx(side, rel=1e-5)
    assert death == pytest.approx(math.sqrt(3), rel=1e-5)  # equilateral triangle fills it
    s = res.summary()
    assert s["h1_count"] == 1 and s["h1_max_lifespan"] == pytest.approx(death - birth)


def test_entropy_matches_hand_computation():
    # lifespans 1, 1, 2: p = 1/4, 1/4, 1/2.
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert persistence_entropy(np.array([1.0, 1.0, 2.0])) == pytest.approx(expected)
    assert persistence_entropy(np.array([1.0, 1.0, 2.0, 0.0, np.inf])) == pytest.approx(expected)
    assert persistence_entropy(np.array([])) == 0.0
    assert persistence_entropy(np.array([0.0, 0.0])) == 0.0


def test_summary_by_hand_on_four_collinear_points():
    # Points at 0, 1, 3, 6 on a line: H0 deaths 1, 2, 3; no loop.
    X = np.zeros((4, 3))
    X[:, 0] = [0, 1, 3, 6]
    s = persistence(X).summary()
    assert s["h0_count"] == 4 and s["h1_count"] == 0
    assert s["h0_mean_lifespan"] == pytest.approx(2.0)
    assert s["h0_max_lifespan"] == pytest.approx(3.0)
    assert s["h0_total_lifespan"] == pytest.approx(6.0)
    assert s["h0_death_variance"] == pytest.approx(np.var([1, 2, 3]))
    p = np.array([1, 2, 3]) / 6
    assert s["h0_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert s["entropy"] == pytest.approx(s["h0_entropy"])  # no H1 bar
    assert s["h1_mean_lifespan"] == 0.0 and s["h1_entropy"] == 0.0
    # nearest-neighbour distances 1, 1, 2, 3 -> mean 7/4
    assert s["point_density"] == pytest.approx(4 / 7)
    assert s["h1_density"] == 0.0


def test_combined_entropy_uses_h0_and_h1_finite_bars():
    res = persistence(_circle(n=12, dim=8))
    h0 = res.diagrams[0][:-1]
    h1 = res.diagrams[1]
    life = np.concatenate([h0[:, 1] - h0[:, 0], h1[:, 1] - h1[:, 0]])
    p = life / life.sum()
    assert res.summary()["entropy"] == pytest.approx(-(p * np.log(p)).sum())


def test_summary_invariant_to_rotation_and_translation():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 64))
    Q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    a = persistence(X).summary()
    b = persistence(X @ Q + 7.0).summary()
    assert a.keys() == b.keys() == set(SUMMARY_KEYS)
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), k


def test_duplicates_and_identical_points_give_no_nan():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 20))
    X[4] = X[2]
    X[7] = X[2] + 1e-9  # a ~1e-9 bar, below float32 resolution for ripser
    s = persistence(X).summary()
    assert all(math.isfinite(v) for v in s.values())
    assert s["h0_count"] <= 9
    same = persistence(np.ones((5, 4))).summary()
    assert same["h0_count"] == 1 and same["h0_mean_lifespan"] == 0.0 and same["entropy"] == 0.0
    assert same["point_density"] == 0.0
    single = persistence(np.ones((1, 4))).summary()
    assert single["h0_count"] == 1 and single["h1_count"] == 0


def test_accepts_torch_tensors_with_grad_and_bf16():
    P = torch.randn(15, 32, requires_grad=True)
    a = persistence(P).summary()
    b = persistence(P.detach().numpy()).summary()
    assert a == b
    s = persistence(P.detach().to(torch.bfloat16)).summary()
    assert s["h0_count"] == 15


def test_distance_matrix_input_matches_points():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(12, 5))
    a = persistence(X).summary()
    b = persistence(squareform(pdist(X)), is_distance_matrix=True).summary()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((3, 3, 3)), "2-D"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), "NaN or Inf"),
        (np.zeros((0, 3)), "at least one point"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        persistence(bad)


def test_bad_distance_matrix_and_maxdim():
    with pytest.raises(ValueError, match="symmetric"):
        persistence(np.array([[0.0, 1.0], [2.0, 0.0]]), is_distance_matrix=True)
    with pytest.raises(ValueError, match="maxdim"):
        persistence(np.zeros((3, 2)), maxdim=-1)


def test_diagram_json_round_trip_keeps_infinite_bar():
    res = persistence(_circle(n=10, dim=4))
    back = diagrams_from_lists(res.diagrams_as_lists())
    assert res.diagrams_as_lists()[0][-1][1] is None
    for a, b in zip(res.diagrams, back, strict=True):
        assert np.array_equal(a, b)


def test_persistence_pairs_edges_carry_the_bar_values():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 6))
    D = squareform(pdist(X))
    pairs = persistence_pairs(D)
    res = persistence(X)
    assert len(pairs.h0_death_edges) == 19
    assert np.allclose(
        np.sort(D[tuple(pairs.h0_death_edges.T)]), res.diagrams[0][:-1, 1], rtol=1e-6
    )
    assert len(pairs.h1_birth_edges) == len(res.diagrams[1]) > 0
    births = D[tuple(pairs.h1_birth_edges.T)].astype(np.float32)
    deaths = D[tuple(pairs.h1_death_edges.T)].astype(np.float32)
    assert np.array_equal(births, pairs.h1_diagram[:, 0].astype(np.float32))
    assert np.array_equal(deaths, pairs.h1_diagram[:, 1].astype(np.float32))
