"""Smoke tests of the paper-reproduction benchmarks (``bench/convergence.py``,
``bench/accuracy.py``, ``bench/correlation.py``): each ``--quick`` mode runs as a subprocess
on the tiny model into a temporary folder, and its JSON result must hold the documented
fields."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import run_bench


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
    runs = [json.loads(x) for x in Path(data["runs_file"]).read_text().splitlines()]
    assert len(runs) == 12
    assert all(r["verify"] is not None and len(r["ce"]) >= 1 for r in runs)
    assert (out / "convergence.md").read_text().startswith("# Convergence")
    # A rerun skips every finished configuration and rewrites the same groups.
    done = run_bench("convergence.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert "0 run(s) to do" in done.stdout


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
    runs = [json.loads(x) for x in Path(data["runs_file"]).read_text().splitlines()]
    assert len(runs) == 4
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
