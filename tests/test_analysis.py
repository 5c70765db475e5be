"""Table II statistics and Table IV convergence on synthetic runs with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, spearmanr

from hf_tsprompt.analysis import (
    METRICS,
    analyze_runs,
    convergence_from_records,
    convergence_step,
    correlation_table,
)
from hf_tsprompt.errors import ConfigError, DataError, MissingFileError
from hf_tsprompt.records import make_record, topology_dir, write_snapshot
from hf_tsprompt.topology import persistence

_CLOUD = persistence(np.random.default_rng(0).normal(size=(5, 4)))


def _write_run(
    run: Path,
    steps: list[int],
    accuracy: list[float | None],
    metrics: dict[str, list[float]] | None = None,
    eval_info: list[dict | None] | None = None,
) -> Path:
    """A run folder whose records carry the given accuracies and summary values.

    Summaries start from a real persistence result (so every key exists) and the listed
    metrics are overwritten; metrics not listed keep that constant value.
    """
    tdir = topology_dir(run)
    for i, step in enumerate(steps):
        record = make_record(
            step=step,
            epoch=None,
            event="step",
            result=_CLOUD,
            prompt_file=None,
            time=0.0,
            accuracy=accuracy[i],
            eval_info=eval_info[i] if eval_info else None,
        )
        for key, values in (metrics or {}).items():
            record["summary"][key] = float(values[i])
        write_snapshot(tdir, record, None)
    return run


def _monotone_runs(tmp_path: Path) -> list[Path]:
    """Two runs, 10 snapshots each: pooled, accuracy rises strictly with h0_mean_lifespan and
    falls strictly with entropy; h0_count is constant; h1_count is unrelated."""
    runs = []
    for r, offset in enumerate((0.0, 0.05)):
        steps = list(range(0, 100, 10))
        acc = [offset + s / 100 for s in steps]
        metrics = {
            "h0_mean_lifespan": [0.1 + a for a in acc],
            "entropy": [3.0 - a for a in acc],
            "h0_count": [8.0] * 10,
            "h1_count": [(3 * i + r) % 5 for i in range(10)],
        }
        runs.append(_write_run(tmp_path / f"run{r}", steps, acc, metrics))
    return runs


def test_known_correlations_and_median_split(tmp_path):
    table = correlation_table(_monotone_runs(tmp_path))
    assert table["n_pairs"] == 20
    assert table["split"]["n_low"] == table["split"]["n_high"] == 10
    assert table["split"]["dropped_middle"] == 0
    m = table["metrics"]
    assert list(m) == list(METRICS)
    # scipy's default for 10 vs 10 is the normal approximation with continuity correction:
    # mean n1 n2 / 2 = 50, sd sqrt(n1 n2 (n1 + n2 + 1) / 12) = sqrt(175).
    z = (50 - 0.5) / math.sqrt(175)
    approx_p = math.erfc(z / math.sqrt(2))  # two-sided: 2 * (1 - Phi(z))
    life = m["h0_mean_lifespan"]
    assert life["spearman_rho"] == pytest.approx(1.0)
    assert life["mannwhitney_u"] == 0.0  # every low-accuracy value below every high one
    assert life["mannwhitney_p"] == pytest.approx(approx_p)
    pe = m["entropy"]
    assert pe["spearman_rho"] == pytest.approx(-1.0)
    assert pe["mannwhitney_u"] == 100.0
    assert pe["mannwhitney_p"] == pytest.approx(approx_p)


def test_constant_metric_is_na_like_the_papers_h0_count(tmp_path):
    row = correlation_table(_monotone_runs(tmp_path))["metrics"]["h0_count"]
    assert row["spearman_rho"] is None and row["spearman_p"] is None
    assert "constant" in row["note"]
    # As in Table II: all comparisons tied, U = n1 * n2 / 2 with p = 1.
    assert row["mannwhitney_u"] == 50.0 and row["mannwhitney_p"] == 1.0


def test_matches_scipy_computed_independently(tmp_path):
    runs = _monotone_runs(tmp_path)
    table = correlation_table(runs)
    acc = np.array([o + s / 100 for o in (0.0, 0.05) for s in range(0, 100, 10)])
    h1 = np.array([(3 * i + r) % 5 for r in range(2) for i in range(10)], dtype=float)
    rho, p = spearmanr(h1, acc)
    order = np.argsort(acc)
    u = mannwhitneyu(h1[order[:10]], h1[order[10:]], alternative="two-sided")
    row = table["metrics"]["h1_count"]
    assert row["spearman_rho"] == pytest.approx(rho) and row["spearman_p"] == pytest.approx(p)
    assert row["mannwhitney_u"] == pytest.approx(u.statistic)
    assert row["mannwhitney_p"] == pytest.approx(u.pvalue)


def test_hand_counted_tiny_case(tmp_path):
    # accuracies 0.1 < 0.2 < 0.3 < 0.4, metric 1, 3, 2, 4: low half {1, 3}, high half {2, 4}.
    # U(low) counts low > high pairs: only (3, 2), so U = 1. Rank differences (0, 1, -1, 0):
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    run = _write_run(tmp_path / "r", [0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], {"h1_count": [1, 3, 2, 4]})
    row = correlation_table(run)["metrics"]["h1_count"]
    assert row["mannwhitney_u"] == 1.0
    assert row["spearman_rho"] == pytest.approx(0.8)
    # exact two-sided p for n1 = n2 = 2: P(U <= 1) * 2 = (2 / 6) * 2
    assert row["mannwhitney_p"] == pytest.approx(4 / 6)


def test_odd_count_drops_the_middle_and_ties_break_by_step(tmp_path):
    # Accuracy ties: three snapshots at 0.5. Earlier steps rank lower, so with 5 pairs the
    # low half is steps 0, 1 (metric 10, 20), the middle step 2 is dropped, the high half is
    # steps 3, 4 (metric 40, 50): U = 0.
    run = _write_run(
        tmp_path / "r",
        [0, 1, 2, 3, 4],
        [0.5, 0.5, 0.5, 0.9, 1.0],
        {"h0_mean_lifespan": [10, 20, 30, 40, 50]},
    )
    table = correlation_table(run)
    assert table["split"] == {
        "method": table["split"]["method"],
        "n_low": 2,
        "n_high": 2,
        "dropped_middle": 1,
        "low_accuracy_max": 0.5,
        "high_accuracy_min": 0.9,
    }
    assert table["metrics"]["h0_mean_lifespan"]["mannwhitney_u"] == 0.0
    assert correlation_table(run) == table  # deterministic


def test_constant_accuracy_leaves_everything_na(tmp_path):
    run = _write_run(tmp_path / "r", [0, 1, 2, 3], [0.5] * 4, {"entropy": [1, 2, 3, 4]})
    for row in correlation_table(run)["metrics"].values():
        assert row["spearman_rho"] is None and row["mannwhitney_u"] is None
        assert row["note"] == "accuracy is constant across snapshots"


def test_records_without_accuracy_are_ignored(tmp_path):
    run = _write_run(
        tmp_path / "r", [0, 1, 2, 3, 4], [None, 0.1, 0.2, None, 0.3], {"entropy": [9, 3, 2, 9, 1]}
    )
    table = correlation_table(run)
    assert table["n_pairs"] == 3
    assert table["metrics"]["entropy"]["spearman_rho"] == pytest.approx(-1.0)


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="no run folder"):
        correlation_table([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no topology records"):
        correlation_table([tmp_path / "empty"])
    run = _write_run(tmp_path / "two", [0, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="only 2 snapshot"):
        correlation_table(run)
    no_acc = _write_run(tmp_path / "none", [0, 1, 2], [None] * 3)
    with pytest.raises(DataError, match="evaluate="):
        correlation_table(no_acc)


# -- convergence (Table IV) -------------------------------------------------------------------


def test_convergence_step_from_train_accuracy(tmp_path):
    evals = [{"train_accuracy": a} for a in (0.2, 0.5, 1.0, 1.0)]
    run = _write_run(tmp_path / "r", [0, 5, 10, 15], [0.1, 0.3, 0.4, 0.6], eval_info=evals)
    assert convergence_step(run) == 10
    assert convergence_step(run, threshold=0.5) == 5
    # an absent key falls back to the held-out accuracy, which never reaches 100%
    assert convergence_step(run, key="no_such_key") is None


def test_convergence_falls_back_to_accuracy(tmp_path):
    run = _write_run(tmp_path / "r", [0, 3, 6], [0.5, 1.0, 1.0])
    assert convergence_step(run) == 3
    never = _write_run(tmp_path / "n", [0, 3, 6], [0.5, 0.7, 0.99])
    assert convergence_step(never) is None
    # float ratios (e.g. 10 * 0.1) count as 100%
    assert convergence_from_records([{"step": 4, "accuracy": sum([0.1] * 10)}]) == 4


def test_convergence_needs_some_accuracy(tmp_path):
    run = _write_run(tmp_path / "r", [0, 3], [None, None])
    with pytest.raises(DataError, match="no record carries"):
        convergence_step(run)
    with pytest.raises(MissingFileError):
        convergence_step(tmp_path / "missing")


# -- report -----------------------------------------------------------------------------------


def test_analyze_runs_writes_markdown_and_json(tmp_path):
    runs = _monotone_runs(tmp_path)
    md, js = analyze_runs(runs, tmp_path / "out")
    text = md.read_text()
    assert "| Metric | ρ | p-value | U | p-value |" in text
    assert "| \\|H0\\| | N/A | N/A | 50.0 | 1.000 |" in text
    assert "| Avg. l_i (H0) | 1.000 | 0.00e+00 | 0.0 | 1.83e-04 |" in text
    assert "| run0 | not reached | 90 |" in text
    data = json.loads(js.read_text())
    assert data["correlation"]["metrics"]["h0_count"]["spearman_rho"] is None
    assert data["correlation"]["metrics"]["entropy"]["mannwhitney_u"] == 100.0
    assert [c["step"] for c in data["convergence"]] == [None, None]
    assert data["threshold"] == 1.0 and "fields" in data
    # Deterministic: a second analysis writes the same bytes.
    md2, js2 = analyze_runs(runs, tmp_path / "again")
    assert md2.read_bytes() == md.read_bytes() and js2.read_bytes() == js.read_bytes()


def test_analyze_runs_reports_convergence_per_run(tmp_path):
    evals = [{"train_accuracy": a} for a in (0.2, 1.0, 1.0)]
    fast = _write_run(tmp_path / "fast", [0, 3, 6], [0.1, 0.2, 0.3], {"entropy": [3, 2, 1]}, evals)
    slow = _write_run(tmp_path / "slow", [0, 3, 6], [0.0, 0.1, 1.0], {"entropy": [3, 2, 0]})
    md, js = analyze_runs([fast, slow], tmp_path / "out")
    conv = {c["name"]: c["step"] for c in json.loads(js.read_text())["convergence"]}
    assert conv == {"fast": 3, "slow": 6}
    assert "| fast | 3 | 6 |" in md.read_text()
