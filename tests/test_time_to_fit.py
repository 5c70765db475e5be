"""``bench/time_to_fit.py``: the protocol's selection rule, comparisons and verdicts on
synthetic runs with known answers, and its ``--quick`` end-to-end smoke run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import time_to_fit as ttf

from tiny import run_bench

D = ttf.PROTOCOL


def _run(stage, task, arm, seed, steps, acc=0.5, status="ok", setting="multi"):
    return {
        "key": ttf.run_key(arm, task, seed, setting),
        "stage": stage,
        "task": task,
        "setting": setting,
        "arm": arm,
        "seed": seed,
        "converged": steps is not None,
        "steps": steps,
        "test": {"accuracy": acc},
        "status": status,
    }


def test_parse_arm_round_trip_and_errors():
    assert ttf.parse_arm(ttf.arm_label("ce+ts", "sample_vocab", 0.03)) == (
        "ce+ts",
        "sample_vocab",
        0.03,
    )
    for bad in ("ce", "ce@normal", "nope@normal,lr=0.1", "ce@orthogonal,lr=0.1", "ce@text,lr=-1"):
        with pytest.raises(ValueError, match="arm"):
            ttf.parse_arm(bad)


def test_selection_rule_by_hand():
    runs = []
    # normal lr 0.03: slow but the most accurate; sample_vocab lr 0.1: fastest, 4 points
    # less accurate (inside the 5-point window); text lr 0.1: faster still but 10 points
    # less accurate (outside it); sample_vocab lr 0.03: in the window, slower on median.
    for seed, (a, b, c, e) in zip(
        D.tune_seeds, [(30, 9, 5, 9), (32, 10, 6, 12), (31, 11, 7, 13)], strict=True
    ):
        runs.append(_run("tune", "bbh", "ce@normal,lr=0.03", seed, a, acc=0.60))
        runs.append(_run("tune", "bbh", "ce@sample_vocab,lr=0.1", seed, b, acc=0.56))
        runs.append(_run("tune", "bbh", "ce@text,lr=0.1", seed, c, acc=0.50))
        runs.append(_run("tune", "bbh", "ce@sample_vocab,lr=0.03", seed, e, acc=0.57))
    table = ttf.tuning_table(runs, "bbh", D)
    assert ttf.select_best(table, D) == "ce@sample_vocab,lr=0.1"
    best = ttf.best_baselines(runs, D)
    assert best["bbh"]["arm"] == "ce@sample_vocab,lr=0.1"
    assert best["gsm8k"] == {"arm": "ce@sample_vocab,lr=0.1", "source": best["gsm8k"]["source"]}
    assert "BBH's choice" in best["gsm8k"]["source"]
    # A censored arm (median infinite) never wins on steps.
    cens = [_run("tune", "bbh", "ce@normal,lr=0.01", s, None, acc=0.9) for s in D.tune_seeds]
    cens += [_run("tune", "bbh", "ce@normal,lr=0.1", s, 40, acc=0.88) for s in D.tune_seeds]
    assert ttf.select_best(ttf.tuning_table(cens, "bbh", D), D) == "ce@normal,lr=0.1"


def test_primary_comparisons_holm_and_verdicts():
    base = "ce@sample_vocab,lr=0.1"
    runs = [_run("tune", "bbh", base, s, 10) for s in D.tune_seeds]
    for seed in D.eval_seeds:
        runs.append(_run("primary", "bbh", base, seed, 20 + seed, acc=0.5))
        # TSLoss halves the steps on every seed, same accuracy: exact p = 2/1024.
        runs.append(_run("primary", "bbh", "ce+ts@sample_vocab,lr=0.1", seed, 10, acc=0.5))
        # The scale-free arm: one more step on odd seeds, one fewer on even: no effect.
        runs.append(
            _run("primary", "bbh", "ts:mean@sample_vocab,lr=0.1", seed, 20 + seed + (-1) ** seed)
        )
    res = ttf.build_result(runs, {"git": {"commit": None}}, {}, D)
    by = {c["name"]: c for c in res["primary"]}
    ts = by["bbh-tsloss"]
    assert ts["p"] == pytest.approx(2 / 1024)
    # Holm over three comparisons (gsm8k not run counts with p = 1): the smallest p x 3.
    assert ts["p_holm"] == pytest.approx(3 * 2 / 1024)
    assert ts["verdict"] == "fits faster; accuracy equal or better"
    assert by["gsm8k-tsloss"]["status"] == "not run" and by["gsm8k-tsloss"]["p_holm"] == 1.0
    assert by["bbh-tsloss-scalefree"]["verdict"].startswith("no difference detected at 10 seeds")
    assert res["headline"]["name"] == "bbh-tsloss"
    assert ts["ratio"] < ttf.MOONSHOT_RATIO and res["moonshot_met"] is True


def test_a_comparison_short_of_its_seeds_is_not_run_and_its_pairs_stay_exploratory():
    """PROTOCOL section 5: never tested on fewer seeds; p = 1 in the Holm family."""
    base = "ce@text,lr=0.01"
    runs = [_run("tune", "bbh", base, s, 10) for s in D.tune_seeds]
    for seed in D.eval_seeds:  # P1 complete: TSLoss halves the steps on every seed
        runs.append(_run("primary", "bbh", base, seed, 20))
        runs.append(_run("primary", "bbh", "ce+ts@text,lr=0.01", seed, 10))
    for seed in D.eval_seeds[:3]:  # P2: 3 of 10 pairs, also halved
        runs.append(_run("primary", "gsm8k", base, seed, 40, acc=0.0))
        runs.append(_run("primary", "gsm8k", "ce+ts@text,lr=0.01", seed, 20, acc=0.0))
    res = ttf.build_result(runs, ttf.common.run_metadata(), {}, D)
    by = {c["name"]: c for c in res["primary"]}
    p2 = by["gsm8k-tsloss"]
    assert p2["status"] == "not run" and p2["p"] == 1.0 and p2["p_holm"] == 1.0
    assert p2["verdict"] == "not run" and p2["n_pairs"] == 3
    assert p2["partial"]["ratio"] == pytest.approx(0.5) and p2["partial"]["faster"] == 3
    # P1's Holm adjustment still counts P2 (and P3, with no runs) in the family of three.
    assert by["bbh-tsloss"]["p_holm"] == pytest.approx(3 * 2 / 1024)
    assert res["headline"]["name"] == "bbh-tsloss"
    assert "not run (exploratory, 3 of 10 pairs: ratio 0.50)" in ttf.markdown(res)


def test_failed_and_worse_accuracy_runs_are_counted_not_dropped():
    base = "ce@normal,lr=0.03"
    runs = [_run("tune", "bbh", base, s, 10) for s in D.tune_seeds]
    for seed in D.eval_seeds:
        runs.append(_run("primary", "bbh", base, seed, 20, acc=0.6))
        status = "failed" if seed == 0 else "ok"
        runs.append(_run("primary", "bbh", "ce+ts@normal,lr=0.03", seed, 5, acc=0.3, status=status))
    c = {x["name"]: x for x in ttf.build_result(runs, {}, {}, D)["primary"]}["bbh-tsloss"]
    assert c["n_pairs"] == 10 and c["arm_failed"] == 1
    assert c["ratios"]["0"] == pytest.approx((D.budget + 1) / 20)  # failed = censored
    assert c["verdict"].endswith("accuracy may be worse")
    assert not ttf.moonshot_met(c)


def test_explore_comparisons_stay_out_of_the_holm_family_and_apart_by_setting():
    """PROTOCOL 6b: MMLU and single-sample pairs are compared at the task's best baseline
    (BBH's choice for MMLU), uncorrected; single-sample runs never mix with multi-sample ones."""
    base, ts = "ce@text,lr=0.01", "ce+ts@text,lr=0.01"
    runs = [_run("tune", "bbh", base, s, 10) for s in D.tune_seeds]
    for seed in D.eval_seeds:  # P1: TSLoss doubles the steps on every seed
        runs.append(_run("primary", "bbh", base, seed, 10))
        runs.append(_run("primary", "bbh", ts, seed, 20))
    for seed in range(6):  # E2: BBH single-sample, 1 step faster on seeds 0-4, a tie on 5
        runs.append(_run("explore", "bbh", base, seed, 4, setting="single"))
        runs.append(_run("explore", "bbh", ts, seed, 4 if seed == 5 else 3, setting="single"))
    for seed in range(3):  # E1: MMLU, 3 of 10 pairs, accuracy 0.1 lower with TSLoss
        runs.append(_run("explore", "mmlu", base, seed, 8, acc=0.4))
        runs.append(_run("explore", "mmlu", ts, seed, 8, acc=0.3))
    assert len({r["key"] for r in runs}) == len(runs)  # single and multi keys never collide
    res = ttf.build_result(runs, ttf.common.run_metadata(), {}, D)
    by = {c["name"]: c for c in res["primary"]}
    # Same Holm family of three as without the exploratory runs: P1's p = 2/1024, times 3.
    assert by["bbh-tsloss"]["ratio"] == pytest.approx(2.0)
    assert by["bbh-tsloss"]["p_holm"] == pytest.approx(3 * 2 / 1024)
    assert res["best_baseline"]["mmlu"]["arm"] == base
    assert "BBH's choice" in res["best_baseline"]["mmlu"]["source"]
    ex = {c["name"]: c for c in res["exploratory"]["tsloss_on_best"]}
    assert set(ex) == {"bbh-single-tsloss", "mmlu-tsloss"}  # GSM8K single has no pairs
    e2 = ex["bbh-single-tsloss"]
    assert e2["setting"] == "single" and e2["n_pairs"] == 6 and e2["planned_pairs"] == 10
    assert (e2["faster"], e2["slower"], e2["ties"]) == (5, 0, 1)
    assert e2["ratio"] == pytest.approx((3 / 4) ** (5 / 6))
    assert e2["p"] == pytest.approx(2 / 32)  # exact Wilcoxon, 5 non-zero pairs, all one sign
    assert "p_holm" not in e2
    e1 = ex["mmlu-tsloss"]
    assert e1["ratio"] == pytest.approx(1.0) and e1["accuracy_diff"] == pytest.approx(-0.1)
    md = ttf.markdown(res)
    assert "PROTOCOL 6b" in md and "6 of 10" in md and "3 of 10" in md


@pytest.mark.slow
def test_time_to_fit_quick(tmp_path):
    out = tmp_path / "ttf"
    run_bench("time_to_fit.py", "--quick", "--out", str(out), cwd=tmp_path)
    data = json.loads((out / "time_to_fit.json").read_text())
    assert {"protocol", "tuning", "best_baseline", "primary", "headline", "provenance"} <= set(data)
    fields = {"name", "config", "baseline", "seeds", "ratio", "ci_low", "ci_high", "p", "p_holm"}
    ran = [c for c in data["primary"] if c["status"] == "ok"]
    assert {c["name"] for c in ran} == {"bbh-tsloss", "bbh-tsloss-scalefree"}
    for c in ran:
        assert fields <= set(c) and c["seeds"] == [0, 1]
    assert fields <= set(data["headline"])
    assert len(data["tuning"]["bbh"]) == 3  # one lr x three inits in the quick design
    lines = [json.loads(x) for x in (out / "time_to_fit_runs.jsonl").read_text().splitlines()]
    runs = [r for r in lines if r.get("status") != "started"]  # end records
    # common.record_run: every run has its started record first, and none is left unfinished.
    assert sorted(r["run_id"] for r in lines if r.get("status") == "started") == sorted(
        r["run_id"] for r in runs
    )
    # tuning + (baseline, two arms, paper init = baseline) x 2 + explore (2 arms x 2 seeds x 3)
    assert len(runs) == 3 + 2 * 3 + 2 * 2 * 3
    explore = [r for r in runs if r["stage"] == "explore"]
    assert {(r["task"], r["setting"]) for r in explore} == {
        ("mmlu", "multi"),
        ("bbh", "single"),
        ("gsm8k", "single"),
    }
    assert all(r["k"] == (1 if r["setting"] == "single" else 10) for r in explore)
    assert {c["name"] for c in data["exploratory"]["tsloss_on_best"]} == set(ttf.EXPLORE)
    assert all(r["commit"] and "dirty" in r for r in runs)
    assert {r["init"] for r in runs if r["stage"] == "tune"} == {"normal", "sample_vocab", "text"}
    assert set(data["scale"][0]["inits"]) == {"normal", "sample_vocab", "text"}
    assert "Holm" in (out / "time_to_fit.md").read_text()
    again = run_bench("time_to_fit.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert "tune: 0 run(s) to do" in again.stdout


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path, tiny_model_dir):
    """``bench/gpu.sh --quick``: the GPU script's CPU dry run (tiny model) runs every stage."""
    from procs import run_process
    from tiny import BENCH_DIR, write_tiny_gsm8k

    data = write_tiny_gsm8k(tmp_path / "gsm8k")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = ["bash", str(BENCH_DIR / "gpu.sh"), "--quick", "--model", str(tiny_model_dir)]
    done = run_process([*cmd, "--data", str(data)], env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = Path(done.stdout.strip().splitlines()[-1].rsplit("results in ", 1)[1])
    assert json.loads((out / "time_to_fit.json").read_text())["headline"]["p_holm"] is not None
    assert json.loads((out / "overhead.json").read_text())["benchmark"] == "overhead"
