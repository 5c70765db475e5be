"""Smoke tests of the paper-reproduction benchmarks (``bench/convergence.py``,
``bench/accuracy.py``, ``bench/correlation.py``): each ``--quick`` mode runs as a subprocess
on the tiny model into a temporary folder, and its JSON result must hold the documented
fields."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiny import run_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import convergence  # bench/convergence.py
import stats  # bench/stats.py

REPO = Path(__file__).resolve().parent.parent


def _runs(path: str | Path) -> list[dict[str, Any]]:
    """The end records of a runs file; every one was preceded by its run's ``started``
    record (``common.record_run``), and no started run is left without an end."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    started = [r["run_id"] for r in lines if r.get("status") == "started"]
    ended = [r for r in lines if r.get("status") != "started"]
    assert sorted(started) == sorted(r["run_id"] for r in ended)
    return ended


def _check_provenance(data: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Every run carries the commit of the process that ran it (a real commit of this
    repository) and a dirty flag; the page's provenance counts them."""
    git = data["meta"]["git"]
    assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)
    exists = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", git["commit"] + "^{commit}"])
    assert exists.returncode == 0
    for r in runs:
        assert r["commit"] == git["commit"] and r["dirty"] is git["dirty"], r["key"]
    prov = data["provenance"]
    assert prov["head"] == git["commit"] and prov["n_runs"] == len({r["key"] for r in runs})
    assert prov["carried_forward"] == 0 and prov["unrecorded"] == 0


@pytest.mark.slow
def test_convergence_quick(tmp_path: Path) -> None:
    out = tmp_path / "conv"
    run_bench("convergence.py", "--quick", "--out", str(out), cwd=tmp_path)
    data = json.loads((out / "convergence.json").read_text())
    assert {"meta", "protocol", "methods", "groups", "trainer_check", "runs_file"} <= set(data)
    assert data["meta"]["command"].endswith("--quick --out " + str(out))
    assert data["protocol"]["criterion"]
    groups = {(g["task"], g["setting"], g["method"]) for g in data["groups"]}
    assert ("gsm8k", "single", "ce") in groups and ("bbh", "single", "ce+ts") in groups
    for g in data["groups"]:
        assert g["n"] == 2 and len(g["steps"]) == 2
        for key in ("median", "q25", "q75", "n_converged", "improvement_vs_ce", "grad_ratio"):
            assert key in g
        assert g["test_accuracy"]["n"] == 2  # every quick run is scored on 4 test rows
    runs = _runs(data["runs_file"])
    assert len(runs) == 12
    assert all(r["verify"] is not None and len(r["ce"]) >= 1 for r in runs)
    assert all(r["status"] == "ok" for r in runs)
    _check_provenance(data, runs)
    assert (out / "convergence.md").read_text().startswith("# Convergence")
    # A rerun skips every finished configuration and rewrites the same groups.
    done = run_bench("convergence.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert "0 run(s) to do" in done.stdout

    # A run that raises (AdamW refuses a negative lr) is recorded and counted, not dropped;
    # one whose loss becomes NaN (lr 1e30) is counted as diverged and as not fitted.
    one = ("--tasks", "bbh", "--methods", "ce", "--out", str(out))
    run_bench("convergence.py", "--quick", *one, "--seeds", "5", "--lr", "-1", cwd=tmp_path)
    run_bench("convergence.py", "--quick", *one, "--seeds", "6", "--lr", "1e30", cwd=tmp_path)
    runs = _runs(data["runs_file"])
    failed = next(r for r in runs if r["key"] == "bbh|single|ce|5")
    assert failed["status"] == "failed" and "learning rate" in failed["error"]
    diverged = next(r for r in runs if r["key"] == "bbh|single|ce|6")
    assert diverged["status"] == "diverged" and diverged["converged"] is False
    assert diverged["ce"][-1] is None and diverged["steps"] is None
    data = json.loads((out / "convergence.json").read_text())
    ce = next(
        g
        for g in data["groups"]
        if (g["task"], g["setting"], g["method"]) == ("bbh", "single", "ce")
    )
    assert (ce["n"], ce["n_failed"], ce["n_diverged"], ce["seeds"]) == (3, 1, 1, [0, 1, 6])
    assert data["provenance"]["n_failed"] == 1 and data["provenance"]["n_diverged"] == 1
    assert [f["key"] for f in data["provenance"]["failed"]] == ["bbh|single|ce|5"]
    page = (out / "convergence.md").read_text()
    assert "| `bbh|single|ce|5` |" in page and "| 1 (+1 diverged) |" in page
    # A rerun retries the failed run (and only it).
    again = run_bench("convergence.py", "--quick", *one, "--seeds", "5", "6", cwd=tmp_path)
    assert "1 run(s) to do" in again.stdout


@pytest.mark.slow
def test_accuracy_quick(tmp_path: Path) -> None:
    out = tmp_path / "acc"
    run_bench("accuracy.py", "--quick", "--out", str(out), cwd=tmp_path)
    data = json.loads((out / "accuracy.json").read_text())
    assert {"meta", "protocol", "methods", "results", "paper", "runs_file"} <= set(data)
    assert {"act", "dpc", "soft-prompt", "tsloss"} <= set(data["methods"])
    methods = {r["method"] for r in data["results"]}
    assert methods == {"soft-prompt", "tsloss", "act", "dpc"}
    for r in data["results"]:
        assert r["task"] == "bbh" and r["n_seeds"] == 1 and r["n_test"] == 4
        assert 0.0 <= r["mean"] <= 1.0 and r["sd"] is None
    runs = _runs(data["runs_file"])
    assert len(runs) == 4
    _check_provenance(data, runs)
    for r in runs:
        assert Path(r["run_dir"], "run.json").is_file()
        assert 0 <= r["correct"] <= r["total"] == 4
        if r["method"] in ("act", "dpc"):
            # Inference methods evaluate the soft-prompt run of the same seed.
            assert r["snapshots"] == [] and r["run_dir"].endswith("soft-prompt/seed0")
        else:
            assert [s["step"] for s in r["snapshots"]] == [0, 1, 2]
    soft = next(r for r in runs if r["method"] == "soft-prompt")
    assert Path(soft["run_dir"], "calibration", "act.json").is_file(), "ACT saves its heads"
    # A run that raises is recorded with its error and counted on the page.
    args = ("--methods", "soft-prompt", "--seeds", "1", "--lr", "-1", "--out", str(out))
    run_bench("accuracy.py", "--quick", *args, cwd=tmp_path)
    failed = _runs(data["runs_file"])[-1]
    assert failed["key"] == "bbh|soft-prompt|1" and failed["status"] == "failed"
    assert "learning_rate" in failed["error"] and failed["commit"]  # the recipe refuses it
    data = json.loads((out / "accuracy.json").read_text())
    soft = next(r for r in data["results"] if r["method"] == "soft-prompt")
    assert (soft["n_seeds"], soft["n_failed"]) == (1, 1)
    assert data["provenance"]["n_failed"] == 1
    assert "| `bbh|soft-prompt|1` |" in (out / "accuracy.md").read_text()


def _rec(method: str, seed: int, steps: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "key": f"gsm8k|single|{method}|{seed}",
        "task": "gsm8k",
        "setting": "single",
        "method": method,
        "seed": seed,
        "max_steps": 99,
        "converged": steps is not None,
        "steps": steps,
        "test": None,
        "seconds_per_step": 1.0,
        **extra,
    }


def test_convergence_statistics_by_hand() -> None:
    """The page's paired ratio is the geometric mean of per-seed step ratios (a run that did not
    fit counts as budget + 1 = 100 steps); failed runs are counted apart, never paired."""
    runs = [_rec("ce", s, n) for s, n in enumerate([10, 20, 40, 50, 25])]
    runs += [_rec("ce+ts", s, n) for s, n in enumerate([5, 10, 20, 25])]  # ratio 0.5 each
    runs.append(_rec("ce+ts", 4, None, status="diverged"))  # 100 / 25 = 4
    runs.append({**_rec("ce+ts", 5, None), "status": "failed", "error": "RuntimeError: x"})
    runs.append({**_rec("ce", 5, None), "status": "failed", "error": "RuntimeError: y"})
    groups = {g["method"]: g for g in convergence.aggregate(runs)}
    ts = groups["ce+ts"]
    assert (ts["n"], ts["n_failed"], ts["n_diverged"], ts["n_paired"]) == (5, 1, 1, 5)
    expected = (0.5**4 * 4.0) ** (1 / 5)  # 0.758
    assert abs(ts["paired_ratio"] - expected) < 1e-12
    # The test runs on exactly these five ratios (stats.wilcoxon_p has its own known answers);
    # one comparison on the page: Holm leaves its p as it is.
    assert ts["paired_p"] == stats.wilcoxon_p([0.5, 0.5, 0.5, 0.5, 4.0])
    assert ts["paired_p_holm"] == ts["paired_p"]
    lo, hi = ts["paired_ci"]
    assert 0.5 <= lo <= expected <= hi <= 4.0
    assert groups["ce"]["paired_ratio"] is None and groups["ce"]["n_failed"] == 1
    pooled = convergence.pooled_paired(runs)
    assert [(x["scope"], x["n_pairs"]) for x in pooled] == [("gsm8k/single", 5)]
    assert pooled[0]["geo_mean_ratio"] == ts["paired_ratio"]
    assert (pooled[0]["faster"], pooled[0]["slower"], pooled[0]["ties"]) == (4, 1, 0)


@pytest.mark.slow
def test_correlation_quick(tmp_path: Path) -> None:
    out = tmp_path / "corr"
    run_bench("correlation.py", "--quick", "--out", str(out), cwd=tmp_path)
    data = json.loads((out / "correlation.json").read_text())
    assert {"meta", "source", "tables", "paper", "figures"} <= set(data)
    assert {"bbh", "bbh (step > 0)", "pooled"} <= set(data["tables"])
    table = data["tables"]["bbh"]
    assert table["n_pairs"] == 6
    assert set(table["metrics"]) >= {"h0_count", "h1_count", "h0_mean_lifespan", "entropy"}
    assert data["figures"], "the quick mode draws the figures"
    for name in data["figures"]:
        assert (out / "figures" / name).is_file()
    assert "| \\|H0\\| |" in (out / "correlation.md").read_text()
