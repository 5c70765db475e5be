"""Persistence and its summaries against independent truth (scipy MST, geometry, hand math)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

import hf_tsprompt.topology as topology
from hf_tsprompt.topology import (
    EVOLUTION_KEYS,
    SUMMARY_KEYS,
    diagram_distance,
    diagrams_from_lists,
    evolution,
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


# --- structural evolution: distances between diagrams ------------------------------------------

INF = np.inf
SQRT2 = math.sqrt(2.0)


def _ground(metric: str):
    """(bar-to-bar cost, bar-to-diagonal cost) of each metric, written out independently."""
    if metric == "wasserstein":  # Euclidean ground metric; the diagonal at (d - b) / sqrt 2
        return (lambda p, q: math.hypot(p[0] - q[0], p[1] - q[1])), (
            lambda p: (p[1] - p[0]) / SQRT2
        )
    return (lambda p, q: max(abs(p[0] - q[0]), abs(p[1] - q[1]))), (lambda p: (p[1] - p[0]) / 2)


def _brute_force(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Every partial matching, enumerated: each bar of a goes to a bar of b or the diagonal."""
    pair, diag = _ground(metric)
    best = INF
    m, n = len(a), len(b)
    # choose which bars of a are matched (to an ordered choice of distinct bars of b)
    for k in range(min(m, n) + 1):
        for ia in itertools.combinations(range(m), k):
            for ib in itertools.permutations(range(n), k):
                costs = [pair(a[i], b[j]) for i, j in zip(ia, ib, strict=True)]
                costs += [diag(a[i]) for i in range(m) if i not in ia]
                costs += [diag(b[j]) for j in range(n) if j not in ib]
                total = (sum(costs) if metric == "wasserstein" else max(costs)) if costs else 0.0
                best = min(best, total)
    return best


def _assignment(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein with scipy's linear_sum_assignment on a cost matrix built here: a's bars
    against b's bars plus one diagonal slot per bar of a (any slot), and vice versa."""
    m, n = len(a), len(b)
    C = np.zeros((m + n, n + m))
    C[:m, :n] = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    C[:m, n:] = ((a[:, 1] - a[:, 0]) / SQRT2)[:, None]  # a's bar i to any diagonal slot
    C[m:, :n] = ((b[:, 1] - b[:, 0]) / SQRT2)[None, :]  # b's bar j from any diagonal slot
    rows, cols = linear_sum_assignment(C)
    return float(C[rows, cols].sum())


def _random_diagram(rng: np.random.Generator, k: int) -> np.ndarray:
    birth = rng.uniform(0, 1, size=k)
    return np.stack([birth, birth + rng.exponential(0.5, size=k)], axis=1)


def test_distances_by_hand_on_tiny_h0_diagrams():
    # Both have the infinite bar (dropped: matched to its twin at cost 0) and (0, 2); the only
    # sensible matching sends (0, 1) to (0, 1.5): 0.5 in both ground metrics.
    a = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, INF]])
    b = np.array([[0.0, 1.5], [0.0, 2.0], [0.0, INF]])
    assert diagram_distance(a, b, "wasserstein") == pytest.approx(0.5)
    assert diagram_distance(a, b, "bottleneck") == pytest.approx(0.5)
    # One bar each, far apart: W1 matches them (cost 2 < 1/sqrt2 + 3/sqrt2); the bottleneck
    # sends both to the diagonal (max(1/2, 3/2) = 1.5 < 2). Where the two metrics part ways.
    a, b = np.array([[0.0, 1.0], [0.0, INF]]), np.array([[0.0, 3.0], [0.0, INF]])
    assert diagram_distance(a, b, "wasserstein") == pytest.approx(2.0)
    assert diagram_distance(a, b, "bottleneck") == pytest.approx(1.5)
    # H1-like bars with births: L2 sqrt(1 + 1/4) vs L-inf 1.
    a, b = np.array([[1.0, 3.0]]), np.array([[2.0, 3.5]])
    assert diagram_distance(a, b, "wasserstein") == pytest.approx(math.sqrt(1.25))
    assert diagram_distance(a, b, "bottleneck") == pytest.approx(1.0)


def test_empty_and_zero_length_bars():
    bar = np.array([[1.0, 1.2]])
    for empty in (np.zeros((0, 2)), np.zeros(0), []):
        assert diagram_distance(bar, empty, "wasserstein") == pytest.approx(0.2 / SQRT2)
        assert diagram_distance(empty, bar, "bottleneck") == pytest.approx(0.1)
        assert diagram_distance(empty, empty) == 0.0
    # Zero-length bars sit on the diagonal: they change nothing, alone or beside others.
    zero = np.array([[0.5, 0.5], [0.0, 0.0]])
    assert diagram_distance(zero, np.zeros((0, 2))) == 0.0
    assert diagram_distance(np.vstack([bar, zero]), bar, "bottleneck") == 0.0
    assert diagram_distance(np.vstack([bar, zero]), zero) == pytest.approx(0.2 / SQRT2)
    # The ~1e-8 bars of (near-)duplicate points are real bars, and cost what they are.
    tiny = np.array([[0.0, 1e-8], [0.0, 1.0], [0.0, INF]])
    one = np.array([[0.0, 1.0], [0.0, INF]])
    assert diagram_distance(tiny, one, "bottleneck") == pytest.approx(0.5e-8, rel=1e-9)
    # Only infinite bars on both sides: nothing finite to move.
    assert diagram_distance([[0.0, INF]], [[0.0, INF]], "bottleneck") == 0.0


@pytest.mark.parametrize("metric", ["wasserstein", "bottleneck"])
def test_distance_equals_brute_force_over_every_matching(metric):
    rng = np.random.default_rng(0)
    for trial in range(40):
        a = _random_diagram(rng, int(rng.integers(0, 4)))
        b = _random_diagram(rng, int(rng.integers(0, 4)))
        if trial % 5 == 0 and len(a):  # shared bars, the case of two close snapshots
            b = np.vstack([b, a[:1]])
        expected = _brute_force(a, b, metric)
        assert diagram_distance(a, b, metric) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_wasserstein_equals_an_independent_assignment_on_real_diagrams():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 576)) * 0.02
    Y = X + rng.normal(size=X.shape) * 0.002
    a, b = persistence(X).diagrams, persistence(Y).diagrams
    for k in (0, 1):
        fa, fb = a[k][np.isfinite(a[k][:, 1])], b[k][np.isfinite(b[k][:, 1])]
        assert len(fa) + len(fb) > 2
        assert diagram_distance(a[k], b[k]) == pytest.approx(_assignment(fa, fb), rel=1e-10)


def test_zero_for_equal_diagrams_symmetric_and_order_free():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = persistence(rng.normal(size=(12, 8))).diagrams
        b = persistence(rng.normal(size=(12, 8))).diagrams
        for k in (0, 1):
            for metric in ("wasserstein", "bottleneck"):
                assert diagram_distance(a[k], a[k], metric) == 0.0
                ab = diagram_distance(a[k], b[k], metric)
                assert ab == pytest.approx(diagram_distance(b[k], a[k], metric), rel=1e-12)
                shuffled = a[k][rng.permutation(len(a[k]))]
                assert diagram_distance(shuffled, b[k], metric) == pytest.approx(ab, rel=1e-12)
            # W1 sums its matching's costs, each >= the bottleneck's cost of that pair (L2 >=
            # L-inf; diagonal (d - b)/sqrt2 >= (d - b)/2), so W1 >= the bottleneck distance.
            assert diagram_distance(a[k], b[k]) >= diagram_distance(a[k], b[k], "bottleneck")


def test_stability_bottleneck_at_most_twice_the_largest_displacement():
    rng = np.random.default_rng(4)
    f32 = 2.0**-23  # ripser's diagram values are float32
    for trial in range(20):
        X = rng.normal(size=(15, 576)) * 0.02
        step = 10.0 ** rng.uniform(-5, -2)
        Y = X + rng.normal(size=X.shape) * step
        moved = float(np.linalg.norm(X - Y, axis=1).max())
        change = float(np.abs(squareform(pdist(X)) - squareform(pdist(Y))).max())
        assert change <= 2 * moved * (1 + 1e-12)
        evo = evolution(persistence(X), persistence(Y))
        scale = float(pdist(np.vstack([X, Y])).max())
        for k in (0, 1):
            assert evo[f"h{k}_bottleneck"] <= change + 4 * f32 * scale, (trial, k)
    # The factor 2 is needed (filtration value = edge length): two points moved apart by
    # eps each lengthen their one edge, and the H0 death, by 2 eps.
    eps = 1e-3
    X = np.array([[0.0, 0.0], [1.0, 0.0]])
    Y = np.array([[-eps, 0.0], [1.0 + eps, 0.0]])
    d = diagram_distance(persistence(X).diagrams[0], persistence(Y).diagrams[0], "bottleneck")
    assert d == pytest.approx(2 * eps, rel=1e-4)


def test_evolution_keys_and_inputs():
    rng = np.random.default_rng(2)
    a, b = persistence(rng.normal(size=(9, 4))), persistence(rng.normal(size=(9, 4)))
    evo = evolution(a, b)
    assert tuple(evo) == EVOLUTION_KEYS
    assert evo == evolution(a.diagrams, b.diagrams)
    assert evo["h0_wasserstein"] == diagram_distance(a.diagrams[0], b.diagrams[0])
    assert evolution(persistence(rng.normal(size=(5, 3)), maxdim=0), a).keys() == {
        "h0_wasserstein",
        "h0_bottleneck",
    }
    # JSON diagrams (null deaths) read back with diagrams_from_lists give the same numbers.
    back = diagrams_from_lists(b.diagrams_as_lists())
    assert evolution(a, back) == evo


@pytest.mark.parametrize(
    "a,b,kwargs,match",
    [
        ([[0.0, 1.0]], [[0.0, 1.0]], {"metric": "sliced"}, "metric must be one of"),
        (np.zeros((2, 3)), [[0.0, 1.0]], {}, "k x 2"),
        ([[0.0, np.nan]], [[0.0, 1.0]], {}, "NaN"),
        ([[-INF, 1.0]], [[0.0, 1.0]], {}, "infinite birth"),
        ([[1.0, 0.5]], [[0.0, 1.0]], {}, "dies before it is born"),
        ([[0.0, INF]], [[0.0, 1.0]], {}, "infinite bars differ"),
        ([[0.0, INF]], [[0.5, INF]], {}, "infinite bars differ"),
    ],
)
def test_diagram_distance_bad_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagram_distance(a, b, **kwargs)


def test_evolution_bad_input():
    with pytest.raises(ValueError, match="PersistenceResult"):
        evolution(np.zeros((2, 2)), [np.zeros((0, 2))])


# --- attribution (h0_components, h1_loops): hand-computed point clouds ----------------------


def test_h0_components_name_the_smaller_component_at_each_merge():
    # On a line: 0 and 1 are 1 apart, 2 is 3 further, 3 is 10 further still.
    X = np.array([[0.0], [1.0], [4.0], [14.0]])
    merge_scale, bars = topology.h0_components(topology.distance_matrix(X))
    assert merge_scale == [1.0, 1.0, 3.0, 10.0]
    # Merges by length: {0}+{1} at 1 ({1} dies: equal size, higher lowest index), then {2}
    # joins {0,1} at 3, then {3} joins {0,1,2} at 10. Longest bar first.
    assert [(b.death, b.edge, b.members) for b in bars] == [
        (10.0, (2, 3), [3]),
        (3.0, (1, 2), [2]),
        (1.0, (0, 1), [1]),
    ]


def test_h1_loops_of_a_square_and_its_cycle():
    # The unit square: four sides of length 1 close a loop born at 1, filled by the
    # diagonals at sqrt(2); the representative cycle runs through all four corners.
    X = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    loops = topology.h1_loops(topology.distance_matrix(X))
    assert len(loops) == 1
    (loop,) = loops
    assert loop.birth == pytest.approx(1.0) and loop.death == pytest.approx(np.sqrt(2))
    assert sorted(loop.cycle) == [0, 1, 2, 3]
    assert loop.persistence == pytest.approx(np.sqrt(2) - 1)
