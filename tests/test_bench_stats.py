"""Known-answer tests for ``bench/stats.py``: the statistics every benchmark page reports."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_wilcoxon_exact_p_by_enumeration():
    # 10 pairs all faster: the exact two-sided p is 2 / 2**10.
    assert stats.wilcoxon_p([0.5 + 0.01 * i for i in range(10)]) == pytest.approx(2 / 1024)
    # log ratios -1..-5 and +6: W+ = 6; 14 of the 64 sign patterns of ranks 1..6 have a
    # positive rank sum <= 6, so the two-sided p is 2 * 14 / 64.
    ratios = np.exp([-1.0, -2.0, -3.0, -4.0, -5.0, 6.0]).tolist()
    assert stats.wilcoxon_p(ratios) == pytest.approx(28 / 64)
    assert stats.wilcoxon_p([1.0, 1.0]) is None
    assert stats.wilcoxon_p([]) is None


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
