"""The statistics every benchmark comparison uses, in one place (not part of the library).

"Paired" means one thing everywhere in ``bench/``: two arms run on the same seed (same
training rows, same initial prompt draw), and the comparison is the ratio of their step
counts, ``steps_arm / steps_baseline``, summarised by its **geometric mean** over seeds.

- :func:`paired_ratios`: the per-seed ratios, with the pre-registered handling of censored
  runs (``bench/PROTOCOL.md``, section 4).
- :func:`geo_mean`: the geometric mean of ratios.
- :func:`wilcoxon_p`: two-sided Wilcoxon signed-rank p of the log ratios, **exact at any
  number of pairs**: the permutation (sign-flip) distribution of the positive rank sum with
  midranks for tied magnitudes, zeros dropped (:data:`ZERO_METHOD`, PROTOCOL section 5),
  counted over all ``2**n`` sign assignments by a dynamic programme over doubled ranks (never
  a normal approximation, whatever scipy's ``method="auto"`` would choose).
- :func:`bootstrap_ci`: percentile bootstrap interval of the geometric-mean ratio, resampling
  seed pairs (:data:`CI_LEVEL`, :data:`BOOT_STATISTIC`, :data:`N_BOOT`, :data:`BOOT_SEED`,
  the protocol's choices, printed by :func:`method_note` on every page).
- :func:`holm`: Holm's step-down adjustment of a family of p values.
- :func:`compare`: all of the above for one comparison, as the record the result pages print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The protocol's choices (``bench/PROTOCOL.md`` section 5), named once: every page prints
#: them (:func:`method_note`) and ``tests/test_bench_stats.py`` pins each by a known answer.
#: Zeros (ties of a pair, ratio 1) are dropped before ranking (Wilcoxon's own method, scipy's
#: ``zero_method="wilcox"``), not ranked with the others (``"pratt"``) or split (``"zsplit"``).
ZERO_METHOD = "wilcox"
#: Two-sided level of every bootstrap interval.
CI_LEVEL = 0.95
#: What is bootstrapped: the geometric mean of the ratios (the mean of their logs).
BOOT_STATISTIC = "geometric mean"
#: Bootstrap resamples and RNG seed (``numpy.random.default_rng``) fixed by the protocol.
N_BOOT = 10_000
BOOT_SEED = 0
#: Two log ratios whose magnitudes agree to this relative tolerance are one tie (a ratio and
#: its inverse, 17/15 and 15/17, give logs that differ in the last bit).
TIE_RTOL = 1e-9


def paired_ratios(
    arm: Mapping[int, int | None],
    baseline: Mapping[int, int | None],
    budget: int,
) -> dict[int, float]:
    """Per-seed ``steps_arm / steps_baseline`` over the seeds both arms ran.

    ``None`` means censored (did not fit within ``budget`` steps). A censored run counts as
    ``budget + 1`` steps, which understates its true count, so the ratio is conservative
    for the arm that fitted. A seed where both are censored is a tie (ratio 1). A run that fits
    at step 0 counts as 1 step, so a ratio is always finite and positive.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    out: dict[int, float] = {}
    for seed in sorted(set(arm) & set(baseline)):
        a, b = arm[seed], baseline[seed]
        if a is None and b is None:
            out[seed] = 1.0
            continue
        a_steps = budget + 1 if a is None else max(a, 1)
        b_steps = budget + 1 if b is None else max(b, 1)
        out[seed] = a_steps / b_steps
    return out


def geo_mean(ratios: Sequence[float]) -> float:
    """Geometric mean of positive ratios (NaN for none)."""
    arr = np.asarray(list(ratios), dtype=float)
    if arr.size == 0:
        return math.nan
    if np.any(arr <= 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"ratios must be finite and positive, got {arr.tolist()}")
    return float(np.exp(np.log(arr).mean()))


def signed_ranks(values: Sequence[float]) -> tuple[list[int], list[int]]:
    """Doubled midranks of the non-zero ``values`` by magnitude, split by sign:
    ``(positive, negative)`` lists of integers (rank 2.5 is 5).

    With :data:`ZERO_METHOD` ``"wilcox"`` (the protocol's) zeros are dropped before ranking;
    ``"pratt"`` / ``"zsplit"`` would rank them with the others (their ranks are then left out
    of both lists: a zero has no sign to flip, and splitting its rank between the two sums
    shifts the statistic and its null distribution alike). Magnitudes equal within
    :data:`TIE_RTOL` share their average rank; doubling keeps every midrank an integer (a tie
    group at sorted positions i..j, 1-based, has midrank (i + j) / 2)."""
    if ZERO_METHOD not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"unknown zero handling {ZERO_METHOD!r}")
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    ranked = [v for v in vals if v != 0.0] if ZERO_METHOD == "wilcox" else vals
    order = sorted(range(len(ranked)), key=lambda i: abs(ranked[i]))
    doubled = [0] * len(ranked)
    start = 0
    while start < len(order):
        end = start
        first = abs(ranked[order[start]])
        while end + 1 < len(order) and math.isclose(
            abs(ranked[order[end + 1]]), first, rel_tol=TIE_RTOL, abs_tol=0.0
        ):
            end += 1
        for pos in range(start, end + 1):
            doubled[order[pos]] = (start + 1) + (end + 1)
        start = end + 1
    pos_ranks = [r for v, r in zip(ranked, doubled, strict=True) if v > 0]
    neg_ranks = [r for v, r in zip(ranked, doubled, strict=True) if v < 0]
    return pos_ranks, neg_ranks


def signed_rank_null(doubled_ranks: Sequence[int]) -> list[int]:
    """``counts[s]``: how many of the ``2**n`` sign assignments of ``doubled_ranks`` give a
    doubled positive rank sum of ``s`` (exact integers; O(n * sum) time)."""
    counts = [1]
    for r in doubled_ranks:
        nxt = counts + [0] * r
        for s, c in enumerate(counts):
            if c:
                nxt[s + r] += c
        counts = nxt
    return counts


def wilcoxon_p(ratios: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p of ``log(ratios)`` against 0 (None if every pair ties).

    Exact for any number of pairs, ties and zeros included: zeros dropped, midranks for tied
    magnitudes, and p = the share of the ``2**n`` sign assignments of the n non-zero ranks
    whose positive rank sum lies at least as far from its null centre (half the rank total) as
    the observed one. Where scipy is exact (no ties or zeros) this is scipy's exact p; with
    n non-zero pairs the smallest possible p is ``2 / 2**n``: 0.0625 at n = 5, 0.031 at n = 6,
    0.002 at n = 10.
    """
    arr = np.asarray(list(ratios), dtype=float)
    if arr.size and (np.any(arr <= 0) or not np.all(np.isfinite(arr))):
        raise ValueError(f"ratios must be finite and positive, got {arr.tolist()}")
    pos, neg = signed_ranks(np.log(arr).tolist())
    ranks = pos + neg
    if not ranks:
        return None
    total = sum(ranks)
    observed = abs(2 * sum(pos) - total)
    counts = signed_rank_null(ranks)
    extreme = sum(c for s, c in enumerate(counts) if abs(2 * s - total) >= observed)
    return extreme / 2 ** len(ranks)


def bootstrap_ci(
    ratios: Sequence[float],
    *,
    level: float = CI_LEVEL,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the geometric-mean ratio (resampling seed pairs):
    ``n_boot`` resamples drawn by ``numpy.random.default_rng(seed)``, each summarised by the
    mean of its log ratios, and the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    exponentiated."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    logs = np.log(np.asarray(list(ratios), dtype=float))
    if logs.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, logs.size, size=(n_boot, logs.size))
    means = logs[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(np.exp(lo)), float(np.exp(hi)))


def bootstrap_mean_ci(
    diffs: Sequence[float], *, level: float = CI_LEVEL, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the arithmetic mean of paired differences (test
    accuracy, arm - baseline), with the same level, resamples and RNG seed as
    :func:`bootstrap_ci`."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = np.asarray(list(diffs), dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def interval_note() -> str:
    """The bootstrap interval as computed, in one sentence (pages without a test print this)."""
    return (
        f"Interval: {100 * CI_LEVEL:g}% percentile bootstrap of the {BOOT_STATISTIC} ratio, "
        f"{N_BOOT:,} resamples of the pairs, RNG seed {BOOT_SEED} (`bench/stats.py`)."
    )


def method_note() -> str:
    """The test and the interval as computed, in one sentence, for every page that tests."""
    return (
        f"p: two-sided Wilcoxon signed-rank test of the log ratios, exact (all 2^n sign "
        f"assignments, midranks for ties, zeros dropped: `{ZERO_METHOD}`). " + interval_note()
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p values, in the input order (None stays None, and counts
    as a comparison of the family: a comparison that could not be tested is not dropped)."""
    m = len(pvalues)
    order = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    out: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = float(pvalues[i])  # type: ignore[arg-type]
        if not 0 <= p <= 1:
            raise ValueError(f"p values must be in [0, 1], got {p}")
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(
    name: str,
    config: str,
    baseline: str,
    arm: Mapping[int, int | None],
    base: Mapping[int, int | None],
    budget: int,
) -> dict[str, Any]:
    """One comparison: ``{name, config, baseline, seeds, n_pairs, ratio, ci_low, ci_high, p,
    faster, slower, ties, ratios}`` (``p_holm`` is added by the caller, over the family)."""
    ratios = paired_ratios(arm, base, budget)
    values = list(ratios.values())
    lo, hi = bootstrap_ci(values)
    return {
        "name": name,
        "config": config,
        "baseline": baseline,
        "seeds": sorted(ratios),
        "n_pairs": len(values),
        "ratio": geo_mean(values),
        "ci_low": lo,
        "ci_high": hi,
        "p": wilcoxon_p(values),
        "faster": sum(r < 1 for r in values),
        "slower": sum(r > 1 for r in values),
        "ties": sum(r == 1 for r in values),
        "ratios": {str(s): r for s, r in ratios.items()},
    }
