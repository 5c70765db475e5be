"""Persistent homology of a soft prompt's point cloud (paper section III, supplement A-C).

Pure numpy / scipy / ripser: the Vietoris-Rips filtration (Eq. 7) of the n prompt vectors,
its H0 and H1 persistence diagrams, and the summaries of Table I:

- counts ``|H0|``, ``|H1|``;
- lifespans ``l_i = d_i - b_i``, their mean and maximum (supplement A);
- persistence entropy ``PE = -sum_i (l_i / L) log(l_i / L)``, ``L = sum_i l_i`` (Eq. 10 / 12,
  natural log), per dimension and over H0 and H1 together;
- ``h1_density`` and ``point_density`` for Fig. 2a (defined in :meth:`PersistenceResult.summary`);
- the *evolution* between two snapshots (:func:`diagram_distance`, :func:`evolution`): the
  Wasserstein and bottleneck distances between their diagrams, per homology dimension (persim),
  i.e. how far the prompt's topology moved from one snapshot to the next.

**The infinite H0 bar.** One H0 class (the whole cloud once connected) never dies. It is
counted in ``h0_count`` (so ``h0_count`` is the number of distinct points, the paper's
``|H0| >= 1``) and kept in ``diagrams[0]`` with death ``inf``, but it is excluded from every
lifespan statistic and every entropy: its lifespan is undefined, and capping it at an arbitrary
scale (the diameter, say) would make the statistics depend on the cap. All lifespan statistics
are over finite bars only, everywhere in this library. Diagram distances drop it too (see
:func:`diagram_distance`: for a Rips filtration that is exact, not an approximation).

**Degenerate input.** ripser drops zero-length bars, so duplicate points simply lower
``h0_count``; statistics over an empty set of bars are 0.0 (not NaN), and the entropy of a
set of zero total lifespan is 0.0.

Distances are computed in float64 with ``scipy.spatial.distance.pdist`` and handed to ripser as
a distance matrix (``distance_matrix=True``): prompts have n < d, where ripser on raw points warns
and is slower. ripser works in float32 internally, so diagram values are float32-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

__all__ = [
    "DIAGRAM_METRICS",
    "EVOLUTION_KEYS",
    "SUMMARY_KEYS",
    "H0Component",
    "H1Loop",
    "PersistencePairs",
    "PersistenceResult",
    "diagram_distance",
    "diagrams_from_lists",
    "distance_matrix",
    "evolution",
    "finite_lifespans",
    "h0_components",
    "h1_loops",
    "persistence",
    "persistence_entropy",
    "persistence_pairs",
]

SUMMARY_KEYS: tuple[str, ...] = (
    "n_points",
    "h0_count",
    "h1_count",
    "h0_mean_lifespan",
    "h0_max_lifespan",
    "h0_total_lifespan",
    "h0_death_variance",
    "h1_mean_lifespan",
    "h1_max_lifespan",
    "h1_total_lifespan",
    "h0_entropy",
    "h1_entropy",
    "entropy",
    "h1_density",
    "point_density",
)


def _as_numpy_cloud(X: Any) -> np.ndarray:
    """Accept a numpy array, a torch tensor (any dtype/device, with or without grad) or a list."""
    if hasattr(X, "detach") and hasattr(X, "cpu"):
        # numpy has no bfloat16: go through float32 for any torch tensor.
        X = X.detach().cpu().float().numpy()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"a point cloud must be 2-D (n_points, dim), got shape {arr.shape}; pass one prompt "
            "matrix at a time."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"a point cloud needs at least one point and one dimension, got {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError("the point cloud contains NaN or Inf values; persistence is undefined.")
    return arr


def distance_matrix(X: Any) -> np.ndarray:
    """Euclidean distance matrix (float64, exact zeros for duplicate rows)."""
    arr = _as_numpy_cloud(X)
    if arr.shape[0] == 1:
        return np.zeros((1, 1))
    return squareform(pdist(arr))


def persistence_entropy(lifespans: np.ndarray) -> float:
    """Eq. 10 / 12: ``-sum p_i log p_i`` with ``p_i = l_i / sum_j l_j`` (natural log).

    Zero-length bars contribute nothing (``0 log 0 = 0``); an empty or all-zero set gives 0.0.
    """
    life = np.asarray(lifespans, dtype=np.float64)
    life = life[np.isfinite(life) & (life > 0)]
    total = life.sum()
    if life.size == 0 or total <= 0:
        return 0.0
    p = life / total
    return max(0.0, float(-(p * np.log(p)).sum()))  # a single bar gives -0.0


def finite_lifespans(diagram: np.ndarray) -> np.ndarray:
    """Lifespans ``death - birth`` of the finite bars of one diagram (infinite bars dropped)."""
    dgm = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(dgm[:, 1])
    return dgm[finite, 1] - dgm[finite, 0]


def _stats(life: np.ndarray) -> tuple[float, float, float]:
    if life.size == 0:
        return 0.0, 0.0, 0.0
    return float(life.mean()), float(life.max()), float(life.sum())


@dataclass
class PersistenceResult:
    """Vietoris-Rips persistence of one point cloud.

    Attributes:
        diagrams: ``[H0, H1, ...]``, each a (k x 2) float64 array of (birth, death); H0 holds the
            one infinite bar (death ``inf``) last.
        n_points: number of points n.
        dim: ambient dimension d.
        nn_distances: each point's nearest-neighbour distance (for ``point_density``).
    """

    diagrams: list[np.ndarray]
    n_points: int
    dim: int
    nn_distances: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, float]:
        """The topology metrics of Table I / Table II / Fig. 2, as plain floats.

        Keys (``SUMMARY_KEYS``): ``n_points``; ``h0_count`` (all H0 bars, the infinite one
        included) and ``h1_count``; for k in {0, 1}: ``hk_mean_lifespan``, ``hk_max_lifespan``,
        ``hk_total_lifespan`` and ``hk_entropy`` over finite bars; ``h0_death_variance`` (the
        variance of the finite H0 death times, the quantity L_H0 approximates, supplement B
        Eq. 11); ``entropy``, the persistence entropy of all finite H0 and H1 bars together
        (the paper's PE in Table II and Fig. 2b).

        ``h1_density`` is the number of H1 features per point, ``h1_count / n``: the empirical
        intensity of the H1 persistence diagram normalised by sample size (the persistence
        intensity of Chen, Wang & Wasserman, "Statistical analysis of persistence intensity
        functions", 2015, integrated over the diagram). ``point_density`` is the inverse mean
        nearest-neighbour distance, ``1 / mean_i min_{j != i} D_ij``, the k = 1 nearest-neighbour
        density estimate up to a constant (Loftsgaarden & Quesenberry, 1965). The paper's Fig. 2a
        contrasts the two: H1 density falls while point-cloud density barely moves.
        """
        h0 = finite_lifespans(self.diagrams[0])
        h1 = finite_lifespans(self.diagrams[1]) if len(self.diagrams) > 1 else np.zeros(0)
        h0_mean, h0_max, h0_total = _stats(h0)
        h1_mean, h1_max, h1_total = _stats(h1)
        h0_deaths = self.diagrams[0][np.isfinite(self.diagrams[0][:, 1]), 1]
        mean_nn = float(self.nn_distances.mean()) if self.nn_distances.size else 0.0
        h1_count = len(self.diagrams[1]) if len(self.diagrams) > 1 else 0
        return {
            "n_points": float(self.n_points),
            "h0_count": float(len(self.diagrams[0])),
            "h1_count": float(h1_count),
            "h0_mean_lifespan": h0_mean,
            "h0_max_lifespan": h0_max,
            "h0_total_lifespan": h0_total,
            "h0_death_variance": float(h0_deaths.var()) if h0_deaths.size else 0.0,
            "h1_mean_lifespan": h1_mean,
            "h1_max_lifespan": h1_max,
            "h1_total_lifespan": h1_total,
            "h0_entropy": persistence_entropy(h0),
            "h1_entropy": persistence_entropy(h1),
            "entropy": persistence_entropy(np.concatenate([h0, h1])),
            "h1_density": h1_count / self.n_points,
            "point_density": 1.0 / mean_nn if mean_nn > 0 else 0.0,
        }

    def diagrams_as_lists(self) -> list[list[list[float | None]]]:
        """JSON-friendly diagrams: ``inf`` deaths become ``None``."""
        return [
            [[float(b), None if not np.isfinite(d) else float(d)] for b, d in dgm]
            for dgm in self.diagrams
        ]


def diagrams_from_lists(lists: list[list[list[float | None]]]) -> list[np.ndarray]:
    """Inverse of :meth:`PersistenceResult.diagrams_as_lists` (``None`` -> ``inf``)."""
    out = []
    for dgm in lists:
        arr = np.array([[b, np.inf if d is None else d] for b, d in dgm], dtype=np.float64).reshape(
            -1, 2
        )
        out.append(arr)
    return out


# -- structural evolution: distances between diagrams -----------------------------------------

#: The diagram distances of :func:`diagram_distance`, in the order they are reported.
DIAGRAM_METRICS: tuple[str, ...] = ("wasserstein", "bottleneck")
#: The keys of :func:`evolution` for H0 and H1 (``h{k}_{metric}``).
EVOLUTION_KEYS: tuple[str, ...] = tuple(f"h{k}_{m}" for k in (0, 1) for m in DIAGRAM_METRICS)


def _bars_for_distance(diagram: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(the finite bars of positive length, the sorted births of the infinite bars)."""
    dgm = np.asarray(diagram, dtype=np.float64)
    if dgm.size == 0:
        return np.zeros((0, 2)), np.zeros(0)
    if dgm.ndim != 2 or dgm.shape[1] != 2:
        raise ValueError(
            f"diagram {which} must be a (k x 2) array of (birth, death) pairs, got shape "
            f"{dgm.shape}; pass one homology dimension at a time (e.g. result.diagrams[0])."
        )
    if np.isnan(dgm).any() or not np.isfinite(dgm[:, 0]).all():
        raise ValueError(
            f"diagram {which} has a NaN or an infinite birth; only deaths may be infinite (read "
            "JSON diagrams with diagrams_from_lists, which turns null deaths into inf)."
        )
    if (dgm[:, 1] < dgm[:, 0]).any():
        raise ValueError(f"diagram {which} has a bar that dies before it is born (death < birth).")
    infinite = ~np.isfinite(dgm[:, 1])
    finite = dgm[~infinite]
    return finite[finite[:, 1] > finite[:, 0]], np.sort(dgm[infinite, 0])


def diagram_distance(a: Any, b: Any, metric: str = "wasserstein") -> float:
    """The distance between two persistence diagrams of one homology dimension (persim).

    ``metric="wasserstein"`` is ``persim.wasserstein``: the 1-Wasserstein distance, the least
    total cost of a matching of the bars where a bar may also go to the diagonal, with Euclidean
    ground cost (``|p - q|_2`` between two bars, ``(death - birth) / sqrt(2)`` to the diagonal).
    ``metric="bottleneck"`` is ``persim.bottleneck``: the least *largest* cost of such a
    matching, with the L-infinity ground cost (``(death - birth) / 2`` to the diagonal). Both
    are symmetric, 0 for equal diagrams, in the units of the filtration (distances between
    prompt vectors), and stable: the bottleneck distance between the Rips diagrams of two
    clouds of matched points is at most the largest change of a pairwise distance, so at most
    twice the largest displacement of a point (filtration value = edge length, as ripser).

    **Infinite bars are dropped.** The usual convention matches infinite bars only to each
    other, by birth. A Rips filtration has exactly one, the H0 bar ``(0, inf)``, in every
    diagram, so it is matched to its counterpart at cost 0 and dropping it changes nothing.
    Diagrams whose infinite bars differ in number or birth have no finite distance under that
    convention; they are refused rather than given the distance of their finite parts.

    **Degenerate bars.** Zero-length bars lie on the diagonal and cost 0 under any matching, so
    they are dropped before persim sees them (exact, whatever a persim release does with them);
    the ~1e-8 bars of duplicate points are kept (they cost ~1e-8). A diagram left with no bars is
    handled here: the distance is the cost of sending the other diagram's bars to the diagonal
    (0.0 when both are empty).

    Args:
        a, b: (k x 2) arrays of (birth, death), deaths possibly ``inf``; an empty diagram may
            be any empty array.
        metric: ``"wasserstein"`` or ``"bottleneck"`` (:data:`DIAGRAM_METRICS`).

    Raises:
        ValueError: an unknown metric, a malformed diagram, or infinite bars that differ.
    """
    if metric not in DIAGRAM_METRICS:
        raise ValueError(f"metric must be one of {DIAGRAM_METRICS}, got {metric!r}.")
    fa, inf_a = _bars_for_distance(a, "a")
    fb, inf_b = _bars_for_distance(b, "b")
    if len(inf_a) != len(inf_b) or not np.array_equal(inf_a, inf_b):
        raise ValueError(
            f"the diagrams' infinite bars differ (births {inf_a.tolist()} vs {inf_b.tolist()}): "
            "their distance is infinite or depends on a convention. Compare diagrams of the same "
            "filtration type (a Rips H0 diagram always has one infinite bar born at 0), or drop "
            "the infinite bars yourself to compare the finite parts."
        )
    if len(fa) == 0 or len(fb) == 0:
        life = np.concatenate([fa[:, 1] - fa[:, 0], fb[:, 1] - fb[:, 0]])
        if life.size == 0:
            return 0.0
        if metric == "wasserstein":
            return float(life.sum() / np.sqrt(2.0))
        return float(life.max() / 2.0)
    from persim import bottleneck, wasserstein

    fn = wasserstein if metric == "wasserstein" else bottleneck
    return float(fn(fa, fb))


def evolution(previous: Any, current: Any) -> dict[str, float]:
    """How far the topology moved between two snapshots: every diagram distance per dimension.

    Args:
        previous, current: :class:`PersistenceResult` objects or their ``diagrams`` lists
            (``[H0, H1, ...]``).

    Returns:
        ``{"h0_wasserstein", "h0_bottleneck", "h1_wasserstein", "h1_bottleneck"}`` (the
        :data:`EVOLUTION_KEYS`), for each homology dimension both sides have; see
        :func:`diagram_distance` for the metrics and the treatment of the infinite H0 bar.
    """
    prev = getattr(previous, "diagrams", previous)
    cur = getattr(current, "diagrams", current)
    if not isinstance(prev, (list, tuple)) or not isinstance(cur, (list, tuple)):
        raise ValueError(
            "evolution() takes two PersistenceResult objects or two lists of diagrams "
            f"[H0, H1, ...], got {type(prev).__name__} and {type(cur).__name__}."
        )
    return {
        f"h{k}_{metric}": diagram_distance(prev[k], cur[k], metric)
        for k in range(min(len(prev), len(cur)))
        for metric in DIAGRAM_METRICS
    }


def _sorted_h0(dgm: np.ndarray) -> np.ndarray:
    """Finite bars by death time, then the infinite bar last."""
    dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
    finite = dgm[np.isfinite(dgm[:, 1])]
    infinite = dgm[~np.isfinite(dgm[:, 1])]
    return np.concatenate([finite[np.argsort(finite[:, 1], kind="stable")], infinite])


def persistence(X: Any, maxdim: int = 1, *, is_distance_matrix: bool = False) -> PersistenceResult:
    """Vietoris-Rips persistence diagrams H0..H_maxdim of a point cloud (supplement A).

    Args:
        X: (n x d) point cloud: numpy array or torch tensor (detached and moved to CPU here),
            or an (n x n) distance matrix with ``is_distance_matrix=True``.
        maxdim: highest homology dimension (1 = H0 and H1, as in the paper).

    Returns:
        :class:`PersistenceResult`; call ``.summary()`` for the metrics.
    """
    from ripser import ripser

    if not isinstance(maxdim, int) or maxdim < 0:
        raise ValueError(f"maxdim must be a non-negative int, got {maxdim!r}.")
    if is_distance_matrix:
        D = _as_numpy_cloud(X)
        if D.shape[0] != D.shape[1] or not np.allclose(D, D.T) or (D < 0).any():
            raise ValueError("a distance matrix must be square, symmetric and non-negative.")
        dim = 0
    else:
        arr = _as_numpy_cloud(X)
        D = distance_matrix(arr)
        dim = arr.shape[1]
    n = D.shape[0]
    if n == 1:
        dgms = [np.array([[0.0, np.inf]])] + [np.zeros((0, 2)) for _ in range(maxdim)]
        return PersistenceResult(dgms, 1, dim, np.zeros(0))
    dgms = ripser(D, maxdim=maxdim, distance_matrix=True)["dgms"]
    dgms = [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms]
    dgms[0] = _sorted_h0(dgms[0])
    for k in range(1, len(dgms)):
        order = np.lexsort((dgms[k][:, 1], dgms[k][:, 0]))
        dgms[k] = dgms[k][order]
    off = D + np.diag(np.full(n, np.inf))
    return PersistenceResult(dgms, n, dim, off.min(axis=1))


@dataclass
class PersistencePairs:
    """The edges (i, j) of the distance matrix that give each finite bar its birth and death.

    Attributes:
        h0_death_edges: (n-1 x 2) minimum-spanning-tree edges, one per finite H0 bar (all
            H0 births are 0, at a vertex).
        h1_birth_edges: (k x 2) for each H1 bar, the edge whose appearance creates the loop.
        h1_death_edges: (k x 2) the longest edge of the triangle that fills it.
        h1_diagram: (k x 2) the H1 (birth, death) pairs, in the same order.
    """

    h0_death_edges: np.ndarray
    h1_birth_edges: np.ndarray
    h1_death_edges: np.ndarray
    h1_diagram: np.ndarray


def persistence_pairs(D: np.ndarray) -> PersistencePairs:
    """Map H0 and H1 bars back to the edges of ``D`` that carry their birth and death values.

    H0: the finite H0 death times of a Rips filtration are exactly the minimum spanning tree's
    edge weights, so the MST (scipy) gives the death edges. H1: ripser reports values, not
    edges; each value is the float32 length of some edge, so it is matched back to the edge
    with that float32 length. At ties (several edges of equal length) the lowest (i, j) in
    row-major order is taken: one valid choice of subgradient, always finite.
    """
    from ripser import ripser

    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    # scipy treats 0 as "no edge": give duplicate points a tiny positive weight so the tree spans
    # all points; the weight itself is read from D by the caller.
    w = np.where(D > 0, D, np.finfo(np.float64).tiny)
    np.fill_diagonal(w, 0.0)
    mst = minimum_spanning_tree(w).tocoo()
    h0 = np.stack([mst.row, mst.col], axis=1).astype(np.int64) if n > 1 else np.zeros((0, 2), int)
    h0 = h0[np.argsort(D[h0[:, 0], h0[:, 1]], kind="stable")] if len(h0) else h0

    if n < 3:
        empty = np.zeros((0, 2), dtype=np.int64)
        return PersistencePairs(h0, empty, empty, np.zeros((0, 2)))
    dgm1 = np.asarray(ripser(D, maxdim=1, distance_matrix=True)["dgms"][1], dtype=np.float64)
    iu, ju = np.triu_indices(n, k=1)
    vals = D[iu, ju].astype(np.float32)
    order = np.argsort(vals, kind="stable")
    sorted_vals = vals[order]

    def edges_for(values: np.ndarray) -> np.ndarray:
        v = values.astype(np.float32)
        pos = np.clip(np.searchsorted(sorted_vals, v, side="left"), 0, len(sorted_vals) - 1)
        # Nearest neighbour in the sorted list, in case ripser's float32 differs by one ulp.
        prev = np.clip(pos - 1, 0, len(sorted_vals) - 1)
        pick = np.where(np.abs(sorted_vals[prev] - v) < np.abs(sorted_vals[pos] - v), prev, pos)
        k = order[pick]
        return np.stack([iu[k], ju[k]], axis=1).astype(np.int64)

    if len(dgm1) == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return PersistencePairs(h0, empty, empty, np.zeros((0, 2)))
    return PersistencePairs(h0, edges_for(dgm1[:, 0]), edges_for(dgm1[:, 1]), dgm1)


# --- attribution: which tokens make a bar (hf_tsprompt.explain names them) ----------------


@dataclass
class H0Component:
    """A finite H0 bar [0, death): the component that dies when the edge ``edge`` joins it
    to a larger one (``members``: its virtual tokens)."""

    death: float
    edge: tuple[int, int]
    members: list[int]


@dataclass
class H1Loop:
    """An H1 bar [birth, death) and the virtual tokens on its representative cycle."""

    birth: float
    death: float
    birth_edge: tuple[int, int]
    death_edge: tuple[int, int]
    cycle: list[int]
    survives: bool | None = None

    @property
    def persistence(self) -> float:
        return self.death - self.birth


def h0_components(D: np.ndarray) -> tuple[list[float], list[H0Component]]:
    """Per-token merge scales and the finite H0 bars with their dying components.

    Returns ``(merge_scale, bars)``: ``merge_scale[i]`` is token i's nearest-neighbour distance
    (the scale at which it stops being a component of its own); ``bars`` are the finite H0
    bars, longest first, each with the members of the component that dies. The MST edges are
    processed in increasing length (single linkage); all births are 0, so the elder rule does
    not decide which bar a merge ends: the *smaller* component dies (ties: the one whose
    lowest index is higher). ``hf_tsprompt.explain`` names these members' nearest tokens.
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    if n < 2:
        return [0.0] * n, []
    off = D + np.diag(np.full(n, np.inf))
    merge_scale = [float(v) for v in off.min(axis=1)]
    parent = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bars = []
    for a, b in persistence_pairs(D).h0_death_edges:  # in increasing length
        ra, rb = root(int(a)), root(int(b))
        ma, mb = members[ra], members[rb]
        # The smaller component dies; at equal size the one with the higher lowest index.
        dies_a = (len(ma), -min(ma)) < (len(mb), -min(mb))
        dead, alive = (ra, rb) if dies_a else (rb, ra)
        bars.append(
            H0Component(float(D[a, b]), (int(a), int(b)), sorted(members[dead])),
        )
        parent[dead] = alive
        members[alive] = members[alive] + members.pop(dead)
    bars.sort(key=lambda bar: (-bar.death, bar.members))
    return merge_scale, bars


def _cycle(D: np.ndarray, a: int, b: int) -> list[int]:
    """Edge (a, b) closed by the shortest path from b to a through shorter edges."""
    from scipy.sparse.csgraph import dijkstra

    length = D[a, b]
    for strict in (True, False):  # ties: then allow edges as long as (a, b) itself
        mask = np.less(D, length) if strict else np.less_equal(D, length)
        np.fill_diagonal(mask, False)
        mask[a, b] = mask[b, a] = False
        # csgraph reads 0 as "no edge": give duplicate points a tiny positive weight.
        W = np.where(mask, np.maximum(D, np.finfo(np.float64).tiny), 0.0)
        dist, pred = dijkstra(W, directed=False, indices=b, return_predecessors=True)
        if np.isfinite(dist[a]):
            path = [a]
            while path[-1] != b:
                path.append(int(pred[path[-1]]))
            return path  # a ... b; the edge (b, a) closes it
    return [a, b]


def h1_loops(D: np.ndarray) -> list[H1Loop]:
    """The H1 bars of the Rips filtration of ``D``, most persistent first, with the edges
    that create and fill each loop (:func:`persistence_pairs`) and a representative cycle."""
    D = np.asarray(D, dtype=np.float64)
    pairs = persistence_pairs(D)
    loops = []
    for (birth, death), be, de in zip(
        pairs.h1_diagram, pairs.h1_birth_edges, pairs.h1_death_edges, strict=True
    ):
        a, b = int(be[0]), int(be[1])
        loops.append(
            H1Loop(
                birth=float(birth),
                death=float(death),
                birth_edge=(a, b),
                death_edge=(int(de[0]), int(de[1])),
                cycle=_cycle(D, a, b),
            )
        )
    loops.sort(key=lambda loop: (-loop.persistence, loop.birth))
    return loops
