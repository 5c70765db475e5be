"""The statistics every benchmark comparison uses, in one place (not part of the library).

"Paired" means one thing everywhere in ``bench/``: two arms run on the same seed (same
training rows, same initial prompt draw), and the comparison is the ratio of their step
counts, ``steps_arm / steps_baseline``, summarised by its **geometric mean** over seeds.

- :func:`paired_ratios`: the per-seed ratios, with the pre-registered handling of censored
  runs (``bench/PROTOCOL.md``, section 4).
- :func:`geo_mean`: the geometric mean of ratios.
- :func:`wilcoxon_p`: two-sided Wilcoxon signed-rank p of the log ratios (exact for small n,
  zeros dropped as in scipy's default ``zero_method="wilcox"``).
- :func:`bootstrap_ci`: percentile bootstrap interval of the geometric-mean ratio, resampling
  seed pairs with a fixed RNG seed (reproducible).
- :func:`holm`: Holm's step-down adjustment of a family of p values.
- :func:`compare`: all of the above for one comparison, as the record the result pages print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Bootstrap resamples and RNG seed fixed by the protocol.
N_BOOT = 10_000
BOOT_SEED = 0


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


def wilcoxon_p(ratios: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p of ``log(ratios)`` against 0 (None if every pair ties).

    With n non-zero pairs the smallest possible two-sided p is ``2 / 2**n``: 0.0625 at n = 5,
    0.031 at n = 6, 0.002 at n = 10; the protocol asks for >= 10 pairs.
    """
    from scipy.stats import wilcoxon

    logs = np.log(np.asarray(list(ratios), dtype=float))
    if logs.size == 0 or not np.any(logs != 0):
        return None
    return float(wilcoxon(logs, alternative="two-sided", zero_method="wilcox").pvalue)


def bootstrap_ci(
    ratios: Sequence[float], *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the geometric-mean ratio (resampling seed pairs)."""
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
