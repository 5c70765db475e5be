"""Known-answer tests for ``bench/stats.py``: the statistics every benchmark page reports."""

from __future__ import annotations

import itertools
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata
from scipy.stats import wilcoxon as scipy_wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import stats


def test_paired_ratios_by_hand():
    arm = {0: 10, 1: 30, 2: None, 3: None, 4: 0, 5: 7}
    base = {0: 20, 1: 15, 2: 50, 3: None, 4: 4, 6: 9}
    # seed 2: arm censored at budget 99 -> 100 / 50; seed 3: both censored -> tie; seed 4: a
    # fit at step 0 counts as 1 step; seeds 5 and 6 ran in one arm only -> not paired.
    assert stats.paired_ratios(arm, base, budget=99) == {0: 0.5, 1: 2.0, 2: 2.0, 3: 1.0, 4: 0.25}
    with pytest.raises(ValueError, match="budget"):
        stats.paired_ratios(arm, base, budget=-1)


def test_geo_mean_by_hand():
    assert stats.geo_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert stats.geo_mean([4.0, 1.0]) == pytest.approx(2.0)
    assert math.isnan(stats.geo_mean([]))
    with pytest.raises(ValueError, match="positive"):
        stats.geo_mean([1.0, 0.0])


def brute_force_p(values: list[float], zero_method: str = "wilcox") -> float:
    """The exact two-sided p by listing every sign assignment: an implementation independent
    of ``stats`` (scipy's ``rankdata`` midranks, ``itertools.product`` over the signs, exact
    fractions), the truth the dynamic programme is checked against."""
    vals = [v for v in values if v != 0] if zero_method == "wilcox" else list(values)
    ranks = [Fraction(r).limit_denominator(4) for r in rankdata(np.abs(vals))]
    flippable = [r for v, r in zip(vals, ranks, strict=True) if v != 0]
    observed = sum(r for v, r in zip(vals, ranks, strict=True) if v > 0)
    centre = sum(flippable) / 2
    hits = sum(
        abs(sum(r for r, keep in zip(flippable, signs, strict=True) if keep) - centre)
        >= abs(observed - centre)
        for signs in itertools.product((False, True), repeat=len(flippable))
    )
    return hits / 2 ** len(flippable)


def test_wilcoxon_exact_p_by_enumeration():
    # 10 pairs all faster: the exact two-sided p is 2 / 2**10.
    assert stats.wilcoxon_p([0.5 + 0.01 * i for i in range(10)]) == pytest.approx(2 / 1024)
    # log ratios -1..-5 and +6: W+ = 6; 14 of the 64 sign patterns of ranks 1..6 have a
    # positive rank sum <= 6, so the two-sided p is 2 * 14 / 64.
    ratios = np.exp([-1.0, -2.0, -3.0, -4.0, -5.0, 6.0]).tolist()
    assert stats.wilcoxon_p(ratios) == pytest.approx(28 / 64)
    assert stats.wilcoxon_p([1.0, 1.0]) is None
    assert stats.wilcoxon_p([]) is None
    with pytest.raises(ValueError, match="positive"):
        stats.wilcoxon_p([1.0, 0.0])


def test_wilcoxon_zero_handling_is_the_protocols():
    """Zeros dropped (PROTOCOL section 5), not ranked with the others.

    Ratios 1, 1.1, 1.2, 1.3, 1/1.5 (log ratios 0, a < b < c, -d with d largest). Dropping the
    zero: ranks 1, 2, 3, 4, W+ = 1 + 2 + 3 = 6 against a centre of 5; of the 16 subsets of
    {1, 2, 3, 4} only {1, 4} and {2, 3} sum to 5, so p = 14 / 16 = 0.875. Ranking the zero too
    (``pratt``): ranks 2..5 for the non-zero ones, W+ = 9 against a centre of 7; 4 of the 16
    subsets of {2, 3, 4, 5} sum to 6..8, so p = 12 / 16 = 0.75. ``zsplit`` adds half the zero's
    rank to W+ and to every sum of its null distribution alike, so its exact p is ``pratt``'s
    (scipy, which runs an exact permutation test here, agrees: 0.875, 0.75, 0.75). The three
    methods give one p where every non-zero pair has one sign (P1: 8 slower, 2 ties, p =
    2 / 2**8 under all three), which is why the P1 case below cannot tell them apart.

    Mutation checks (2026-12-08, each made once in ``bench/stats.py`` and reverted):
    ``ZERO_METHOD = "pratt"`` -> this test fails (0.75 != 0.875); ``ZERO_METHOD = "zsplit"``
    -> fails (0.75).
    """
    ratios = [1.0, 1.1, 1.2, 1.3, 1 / 1.5]
    assert stats.wilcoxon_p(ratios) == 14 / 16
    assert brute_force_p(np.log(ratios).tolist()) == 14 / 16
    assert brute_force_p(np.log(ratios).tolist(), "pratt") == 12 / 16
    # P1 as published (bbh-tsloss: 8 slower, 2 ties): 2 / 2**8 whatever the zero handling.
    p1 = [1.143, 1.182, 1.111, 1.333, 1.0, 1.188, 1.077, 1.2, 1.0, 1.091]
    assert stats.wilcoxon_p(p1) == 2 / 2**8
    assert stats.ZERO_METHOD == "wilcox"


def test_wilcoxon_exact_beyond_13_pairs_with_ties_and_zeros():
    """scipy's ``method="auto"`` turns to the normal approximation here (ties or zeros and
    more than 13 pairs); the protocol's test stays exact.

    16 pairs: 14 slower in three tie groups and 2 ties. Only the all-positive assignment of the
    14 non-zero ranks (and its mirror) is as extreme, so p = 2 / 2**14 = 0.000122 exactly; the
    normal approximation gives 0.00085. 15 pairs with both signs, ties and a zero: checked
    against :func:`brute_force_p` over all 2**14 sign assignments.

    Mutation checks (2026-12-08, made once and reverted): ``wilcoxon_p`` returning
    ``scipy.stats.wilcoxon(logs, zero_method="wilcox").pvalue`` (method "auto", the code before
    issue 28) -> this test fails (0.00085 != 0.000122).
    """
    tied = [1.5] * 4 + [1.2] * 5 + [2.0] * 5 + [1.0] * 2
    assert stats.wilcoxon_p(tied) == 2 / 2**14
    mixed = np.exp([0.0, 1, 1, -1, 2, -2, 2, 3, 3, 3, -4, 5, 5, -6, 7]).tolist()
    assert stats.wilcoxon_p(mixed) == pytest.approx(brute_force_p(np.log(mixed).tolist()))
    # 20 pairs (bench/gpu.sh's design) and 30: the dynamic programme stays exact and fast.
    rng = np.random.default_rng(3)
    for n in (20, 30):
        logs = rng.integers(-4, 5, size=n).astype(float)
        p = stats.wilcoxon_p(np.exp(logs).tolist())
        assert p is not None and 0 < p <= 1
    twenty = np.exp(rng.integers(-3, 4, size=20).astype(float)).tolist()
    assert stats.wilcoxon_p(twenty) == pytest.approx(brute_force_p(np.log(twenty).tolist()))


def test_wilcoxon_matches_scipy_where_scipy_is_exact_and_brute_force_everywhere():
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        logs = rng.normal(size=n)  # no ties, no zeros: scipy's exact distribution
        expected = scipy_wilcoxon(logs, method="exact").pvalue
        assert stats.wilcoxon_p(np.exp(logs).tolist()) == pytest.approx(expected, abs=1e-12)
    for n in range(2, 12):
        logs = rng.integers(-3, 4, size=n).astype(float)  # ties and zeros
        if not logs.any():
            continue
        assert stats.wilcoxon_p(np.exp(logs).tolist()) == pytest.approx(
            brute_force_p(logs.tolist()), abs=1e-12
        )


def test_wilcoxon_ties_a_ratio_with_its_inverse():
    # 27/23 and 23/27 (BBH ts:lambda=1e-4, seeds 0 and 9 of convergence.md) have equal |log|
    # mathematically, but their float logs differ in the last bit: they are one tie (midrank
    # 7.5), which scipy's float ranking misses (0.922 there instead of 0.867).
    pos, neg = stats.signed_ranks([math.log(27 / 23), math.log(23 / 27), 0.01])
    assert pos == [5, 2] and neg == [5]  # doubled ranks: 2.5, 1 and 2.5


def test_bootstrap_interval_by_enumeration():
    # Two pairs, ratios 1 and 4: a resample's mean log is 0, log 2 or log 4 with probability
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are exactly 1 and 4.
    assert stats.bootstrap_ci([1.0, 4.0]) == pytest.approx((1.0, 4.0))
    assert stats.bootstrap_ci([0.7] * 12) == pytest.approx((0.7, 0.7))
    lo, hi = stats.bootstrap_ci([0.5, 0.6, 0.8, 0.9, 1.1, 0.7, 0.75, 0.65, 0.85, 0.95])
    assert lo < stats.geo_mean([0.5, 0.6, 0.8, 0.9, 1.1, 0.7, 0.75, 0.65, 0.85, 0.95]) < hi
    assert stats.bootstrap_ci([0.5, 2.0]) == stats.bootstrap_ci([0.5, 2.0])  # fixed seed
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0], level=1.5)


def test_bootstrap_level_and_statistic_by_hand():
    """The interval is the 95% one of the geometric mean, as the protocol says.

    Level: ratios e^3, 1, 1. A resample's mean log is k, k ~ Binomial(3, 1/3) (k = how often
    e^3 is drawn): P(k <= 0) = 8/27 = 0.30, P(k <= 2) = 26/27 = 0.963. The 2.5% quantile is
    k = 0 and the 97.5% quantile k = 3, so the interval is (1, e^3 = 20.09); a 90% interval's
    95% quantile is k = 2 (e^2 = 7.39). 10,000 resamples put the empirical P(k <= 2) within
    0.002 of 0.963, far from either cut.

    Statistic: five ratios 2 and five 0.5. A resample with k twos has mean log
    log 2 * (2k - 10) / 10, k ~ Binomial(10, 1/2): P(k <= 1) = 0.011, P(k <= 2) = 0.055, so the
    2.5% quantile is k = 2 (2^-0.6 = 0.660) and by symmetry the 97.5% one k = 8 (2^0.6 =
    1.516). Bootstrapping the arithmetic mean of the ratios instead gives (0.8, 1.7).

    Mutation checks (2026-12-08, each made once in ``bench/stats.py`` and reverted):
    ``CI_LEVEL = 0.90`` -> fails (upper 7.39 != 20.09); bootstrapping ``ratios[idx].mean()``
    (arithmetic mean) instead of ``logs[idx].mean()`` -> fails ((0.8, 1.7)).
    """
    assert stats.bootstrap_ci([math.e**3, 1.0, 1.0]) == pytest.approx((1.0, math.e**3))
    assert stats.bootstrap_ci([2.0] * 5 + [0.5] * 5) == pytest.approx((2**-0.6, 2**0.6))
    assert stats.CI_LEVEL == 0.95 and stats.BOOT_STATISTIC == "geometric mean"


def test_bootstrap_resamples_and_seed_as_the_protocol_says():
    """10,000 resamples of the pairs drawn by ``numpy.random.default_rng(0)``: recomputed here
    from that description alone (one ``integers(0, n, size=(10_000, n))`` draw of pair
    indices, the mean log of each resample, numpy's default linear quantiles) and matched
    exactly, on P1's published ratios, whose interval the page gives as [1.07, 1.19].

    Mutation checks (2026-12-08, each made once in ``bench/stats.py`` and reverted):
    ``BOOT_SEED = 1`` -> fails; ``N_BOOT = 1_000`` -> fails (other draws, another interval).
    """
    p1 = [8 / 7, 13 / 11, 10 / 9, 4 / 3, 1.0, 19 / 16, 14 / 13, 6 / 5, 1.0, 12 / 11]
    logs = np.log(p1)
    idx = np.random.default_rng(0).integers(0, len(p1), size=(10_000, len(p1)))
    lo, hi = np.exp(np.quantile(logs[idx].mean(axis=1), [0.025, 0.975]))
    assert stats.bootstrap_ci(p1) == (float(lo), float(hi))
    assert (round(lo, 2), round(hi, 2)) == (1.07, 1.19)
    assert (stats.N_BOOT, stats.BOOT_SEED) == (10_000, 0)
    note = stats.method_note()
    for text in ("exact", "`wilcox`", "95%", "geometric mean", "10,000 resamples", "RNG seed 0"):
        assert text in note


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # An untestable comparison stays in the family (m = 3): 0.02 x 3, then 0.04 x 2.
    assert stats.holm([0.02, None, 0.04]) == [pytest.approx(0.06), None, pytest.approx(0.08)]
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([1.5])


def test_compare_record():
    arm = {s: 10 for s in range(10)}
    base = {s: 20 + s for s in range(10)}
    rec = stats.compare("p1", "cfg", "base", arm, base, budget=150)
    assert rec["n_pairs"] == 10 and rec["faster"] == 10 and rec["slower"] == 0
    assert rec["ratio"] == pytest.approx(
        np.exp(np.mean(np.log([10 / (20 + s) for s in range(10)])))
    )
    assert rec["ci_low"] <= rec["ratio"] <= rec["ci_high"]
    assert rec["p"] == pytest.approx(2 / 1024)


def test_bootstrap_mean_ci_by_hand():
    # Accuracy differences 0 and 0.1: a resample's mean is 0, 0.05 or 0.1 with probability
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 0.1; e^3-style outlier as in
    # the ratio case: 0.3, 0, 0 -> (0, 0.3) at 95% (0.2 at 90%).
    assert stats.bootstrap_mean_ci([0.0, 0.1]) == pytest.approx((0.0, 0.1))
    assert stats.bootstrap_mean_ci([0.3, 0.0, 0.0]) == pytest.approx((0.0, 0.3))
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_mean_ci([0.1], level=0)
