"""Statistics over recorded runs: topology vs accuracy (Table II) and convergence (Table IV).

:func:`correlation_table` pools every (snapshot, accuracy) pair of one or more runs and, for
each topology metric, reports Spearman's rank correlation with accuracy and a Mann-Whitney U
test between the low- and high-accuracy halves of the snapshots. :func:`convergence_step`
is the first step at which training accuracy reaches 100% (Table IV's "iterations to achieve
complete task accuracy"). :func:`analyze_runs` writes both as Markdown and JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .fsutil import atomic_write_json, atomic_write_text
from .metrics import MISSING, TABLE_II_KEYS, TABLE_II_STATISTICS, format_value, get_metric
from .records import read_records
from .runs import ANALYSIS_JSON, ANALYSIS_MD

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "analyze_runs",
    "convergence_from_records",
    "convergence_step",
    "correlation_table",
]

PathLike = str | os.PathLike

#: The metrics of Table II (first five, in the paper's order) and three more
#: (:data:`hf_tsprompt.metrics.TABLE_II_KEYS`).
METRICS: tuple[str, ...] = TABLE_II_KEYS

#: Row labels as the paper's Table II writes them: the metrics' symbols.
METRIC_LABELS: dict[str, str] = {key: get_metric(key).symbol for key in METRICS}

#: What each field of the JSON written by :func:`analyze_runs` means.
JSON_FIELDS: dict[str, str] = {
    "correlation.n_pairs": "number of pooled (snapshot, accuracy) pairs",
    "correlation.runs": "run folders pooled (those with at least one accuracy)",
    "correlation.split": "the Mann-Whitney groups: low / high accuracy halves by rank",
    "correlation.metrics.<m>.spearman_rho": "Spearman rho of metric vs accuracy (null: N/A)",
    "correlation.metrics.<m>.spearman_p": "two-sided p-value of rho (null: N/A)",
    "correlation.metrics.<m>.mannwhitney_u": "U of the low-accuracy half vs the high half",
    "correlation.metrics.<m>.mannwhitney_p": "two-sided p-value of U (null: N/A)",
    "correlation.metrics.<m>.note": "why a value is N/A, or null",
    "convergence[].step": "first step with train accuracy >= threshold (null: never)",
}


def _as_run_list(run_dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        return [Path(run_dirs)]
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ConfigError("no run folder given; pass one run folder or a list of them.")
    return runs


def _pairs(runs: list[Path]) -> tuple[list[tuple[float, int, int, dict[str, Any]]], list[Path]]:
    """(accuracy, step, run index, summary) of every record with a finite accuracy."""
    pairs = []
    used = []
    for index, run in enumerate(runs):
        n_before = len(pairs)
        for rec in read_records(run):  # MissingFileError names the folder
            acc = rec.get("accuracy")
            if acc is None or not math.isfinite(float(acc)):
                continue
            summary = rec.get("summary")
            if not isinstance(summary, dict):
                raise DataError(f"{run}: the record of step {rec['step']} has no summary.")
            pairs.append((float(acc), int(rec["step"]), index, summary))
        if len(pairs) > n_before:
            used.append(run)
    return pairs, used


def _float_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def correlation_table(run_dirs: PathLike | Sequence[PathLike]) -> dict[str, Any]:
    """Spearman and Mann-Whitney statistics of each topology metric vs accuracy (Table II).

    All (snapshot, accuracy) pairs of all runs are pooled (records without ``accuracy`` are
    ignored). For each metric of :data:`METRICS`:

    - **Spearman**: ``scipy.stats.spearmanr(metric, accuracy)``, rho and its two-sided p.
    - **Mann-Whitney U**: ``scipy.stats.mannwhitneyu(low, high, alternative="two-sided")``
      (scipy's ``method="auto"``: exact when a group has at most 8 values and there are no
      ties, else the normal approximation with tie and continuity corrections), where
      ``low`` / ``high`` are the metric's values in the lower / upper half of the snapshots
      ranked by accuracy, and U is the statistic of ``low``.

    **Why a median split.** The paper does not name its two groups; Table II pins them down.
    For the constant ``|H0|`` it reports U = 2664.5 = 73 * 73 / 2 with p = 1: every
    comparison a tie, so two groups of 73, i.e. 146 snapshots split in equal halves. For
    ``Avg. l_i (H0)`` (rho = +0.866) it reports U = 0: every value of the first group below
    every value of the second, so the first group is the *low*-accuracy half; PE (rho < 0)
    has U = 5153 near the maximum 5329, consistent with that. And U = 0 with 73 + 73 gives
    p = 1.87e-25 under the normal approximation, the paper's 1.9e-25.

    **Ties and odd counts.** Snapshots are ranked by ``(accuracy, step, run order)``: among
    equal accuracies the earlier snapshot counts as lower, so the split is deterministic. With
    an odd count the middle snapshot is left out so the halves have equal size (as in the
    paper); ``split`` in the result says how many went where.

    **N/A.** A constant metric has no Spearman rho (reported ``None``, "N/A" in Markdown, as
    the paper does for ``|H0|``); its U is n1 * n2 / 2 with p = 1 (every permutation of the
    groups gives the same U), which is what the paper reports. A constant accuracy leaves
    every statistic undefined (the split would be by step alone): all ``None``.

    Returns:
        ``{"n_pairs", "runs", "split": {"method", "n_low", "n_high", "dropped_middle",
        "low_accuracy_max", "high_accuracy_min"}, "metrics": {metric: {"label",
        "spearman_rho", "spearman_p", "mannwhitney_u", "mannwhitney_p", "note"}}}``.

    Raises:
        ConfigError: no run folder given.
        MissingFileError: a run folder has no ``topology/records.jsonl``.
        DataError: fewer than 3 pairs with an accuracy.
    """
    from scipy.stats import mannwhitneyu, spearmanr

    runs = _as_run_list(run_dirs)
    pairs, used = _pairs(runs)
    if len(pairs) < 3:
        raise DataError(
            f"only {len(pairs)} snapshot(s) with an accuracy in {', '.join(map(str, runs))}; "
            "need at least 3. Pass evaluate= to PersistenceCallback so snapshots carry accuracy."
        )
    pairs.sort(key=lambda p: (p[0], p[1], p[2]))
    acc = np.array([p[0] for p in pairs])
    half = len(pairs) // 2
    low_idx = np.arange(half)
    high_idx = np.arange(len(pairs) - half, len(pairs))
    constant_acc = bool(np.all(acc == acc[0]))

    metrics: dict[str, dict[str, Any]] = {}
    for key in METRICS:
        missing = [p[1] for p in pairs if p[3].get(key) is None]
        if missing:
            raise DataError(f"metric {key!r} is missing from the summary of step(s) {missing}.")
        x = np.array([float(p[3][key]) for p in pairs])
        row: dict[str, Any] = {
            "label": METRIC_LABELS[key],
            "spearman_rho": None,
            "spearman_p": None,
            "mannwhitney_u": None,
            "mannwhitney_p": None,
            "note": None,
        }
        if constant_acc:
            row["note"] = "accuracy is constant across snapshots"
        else:
            if np.all(x == x[0]):
                row["note"] = "metric is constant across snapshots"
            else:
                rho, p = spearmanr(x, acc)
                row["spearman_rho"], row["spearman_p"] = _float_or_none(rho), _float_or_none(p)
            u = mannwhitneyu(x[low_idx], x[high_idx], alternative="two-sided")
            row["mannwhitney_u"] = _float_or_none(u.statistic)
            row["mannwhitney_p"] = _float_or_none(u.pvalue)
        metrics[key] = row

    return {
        "n_pairs": len(pairs),
        "runs": [str(r) for r in used],
        "split": {
            "method": "halves by accuracy rank (ties: earlier step lower); U of the low half",
            "n_low": int(half),
            "n_high": int(half),
            "dropped_middle": len(pairs) - 2 * half,
            "low_accuracy_max": float(acc[low_idx].max()),
            "high_accuracy_min": float(acc[high_idx].min()),
        },
        "metrics": metrics,
    }


def convergence_from_records(
    records: Sequence[dict[str, Any]], key: str = "train_accuracy", threshold: float = 1.0
) -> int | None:
    """:func:`convergence_step` on records already read (see there)."""
    seen = False
    for rec in sorted(records, key=lambda r: r["step"]):
        ev = rec.get("eval")
        value = ev.get(key) if isinstance(ev, dict) else None
        if value is None:
            value = rec.get("accuracy")
        if value is None:
            continue
        seen = True
        # A tolerance for accuracies computed as float ratios (e.g. 0.1 * 10).
        if float(value) >= threshold - 1e-9:
            return int(rec["step"])
    if not seen:
        raise DataError(
            f"no record carries eval[{key!r}] or accuracy; pass evaluate= to PersistenceCallback."
        )
    return None


def convergence_step(
    run_dir: PathLike, key: str = "train_accuracy", threshold: float = 1.0
) -> int | None:
    """First optimiser step at which training accuracy reaches ``threshold`` (Table IV).

    The value of a snapshot is ``record["eval"][key]``, or ``record["accuracy"]`` when that
    key is absent. Returns None if no snapshot reaches it. Resolution is the snapshot
    schedule: with ``every_n_steps=k`` the answer is a multiple of k (or the last step).

    Raises:
        MissingFileError: no ``topology/records.jsonl``.
        DataError: no record carries an accuracy at all (so "never" would be meaningless).
    """
    return convergence_from_records(read_records(run_dir), key, threshold)


# -- report -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def analyze_runs(
    run_dirs: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    *,
    key: str = "train_accuracy",
    threshold: float = 1.0,
) -> tuple[Path, Path]:
    """Write ``analysis.md`` and ``analysis.json`` into ``out_dir``.

    The Markdown has the correlation table laid out like the paper's Table II (metric | rho |
    p | U | p) and the convergence step of each run (Table IV). The JSON holds the same
    numbers: ``{"correlation": correlation_table(...), "convergence": [{"run", "name",
    "step", "last_step", "note"}], "key", "threshold", "fields"}``, ``fields`` describing each
    field (:data:`JSON_FIELDS`). Output depends only on the runs' records (no timestamps).

    Returns:
        (markdown path, JSON path).
    """
    runs = _as_run_list(run_dirs)
    table = correlation_table(runs)
    convergence = []
    for run in runs:
        records = read_records(run)
        entry: dict[str, Any] = {
            "run": str(run),
            "name": Path(run).resolve().name,
            "step": None,
            "last_step": int(records[-1]["step"]) if records else None,
            "note": None,
        }
        try:
            entry["step"] = convergence_from_records(records, key, threshold)
        except DataError:
            entry["note"] = "no accuracy recorded"
        convergence.append(entry)

    split = table["split"]
    lines = [
        "# Topology and accuracy",
        "",
        "## Correlation and significance of topological features and accuracy (Table II)",
        "",
        f"{table['n_pairs']} (snapshot, accuracy) pairs pooled from {len(table['runs'])} "
        f"run(s). Mann-Whitney U compares the metric in the low-accuracy half "
        f"(n = {split['n_low']}, accuracy <= {split['low_accuracy_max']:.4g}) with the "
        f"high-accuracy half (n = {split['n_high']}, accuracy >= "
        f"{split['high_accuracy_min']:.4g}); U is the low half's statistic"
        + (", the middle snapshot left out." if split["dropped_middle"] else "."),
        "",
        "| Metric | " + " | ".join(get_metric(k).symbol for k in TABLE_II_STATISTICS) + " |",
        "|---|" + "---:|" * len(TABLE_II_STATISTICS),
    ]
    for row in table["metrics"].values():
        cells = [format_value(k, row[k]) for k in TABLE_II_STATISTICS]
        lines.append(f"| {_md_cell(row['label'])} | " + " | ".join(cells) + " |")
    notes = [f"{r['label']}: {r['note']}" for r in table["metrics"].values() if r["note"]]
    if notes:
        lines += ["", f"{MISSING}: " + "; ".join(_md_cell(n) for n in notes) + "."]
    lines += [
        "",
        f"## Steps to reach {threshold:.0%} training accuracy (Table IV)",
        "",
        f"From `eval.{key}` of each snapshot (`accuracy` where absent); resolution is the "
        "snapshot schedule.",
        "",
        "| Run | Steps | Last step |",
        "|---|---:|---:|",
    ]
    for entry in convergence:
        if entry["note"]:
            steps = entry["note"]
        else:
            steps = str(entry["step"]) if entry["step"] is not None else "not reached"
        last = "" if entry["last_step"] is None else str(entry["last_step"])
        lines.append(f"| {_md_cell(entry['name'])} | {steps} | {last} |")

    out = Path(out_dir)
    md = atomic_write_text(out / ANALYSIS_MD, "\n".join(lines) + "\n")
    js = atomic_write_json(
        out / ANALYSIS_JSON,
        {
            "correlation": table,
            "convergence": convergence,
            "key": key,
            "threshold": threshold,
            "fields": JSON_FIELDS,
        },
    )
    return md, js
