"""``bench/paper_gemma.py`` (PROTOCOL 6a): the per-arm summary and the paired comparison on
synthetic runs with known answers, the real-scale init against its definition, the linear
schedule of ``convergence.run_one``, and the ``--quick`` end-to-end smoke run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import paper_gemma as pg
from paper_bench import real_token_std, seed_prompt

from hf_tsprompt.prompts import get_prompt_model, prompt_matrix

from tiny import run_bench, tiny_llama

D = pg.PAPER


def _run(method, init, seed, steps, ce=(2.0, 1.0), grad=None, status="ok", acc=0.0, norm=0.5):
    arm = pg.arm_label(method, init)
    fitted = steps is not None
    return {
        "token_accuracy": 1.0 if fitted else 0.5 + 0.1 * seed,
        "prompt_start": {"mean_norm": norm},
        "prompt_end": {"mean_norm": norm + 0.01 * seed},
        "key": pg.run_key(arm, seed),
        "arm": arm,
        "seed": seed,
        "converged": steps is not None,
        "steps": steps,
        "ce": list(ce),
        "grad_ratio": grad,
        "seconds_per_step": 3.0,
        "test": {"accuracy": acc},
        "status": status,
    }


def test_summary_counts_censored_and_failed_runs_and_pairs_by_seed():
    runs = []
    for seed in D.seeds:
        runs.append(_run("ce", "normal", seed, None, ce=(2.0, 1.5)))  # never fits
        # Neither fits; TSLoss ends 0.1 lower in CE on seeds 0-3 and 0.2 higher on seed 4.
        runs.append(_run("ce+ts", "normal", seed, None, ce=(2.0, 1.4 if seed < 4 else 1.7)))
        runs.append(_run("ce", "real_scale", seed, 40, norm=26.0))
        # TSLoss halves the steps at real scale, except seed 0, which failed (= censored).
        status = "failed" if seed == 0 else "ok"
        runs.append(_run("ce+ts", "real_scale", seed, 20, grad=0.2, status=status))
    res = pg.summarise(runs, D)
    normal, real_ts = res["arms"]["ce@normal"], res["arms"]["ce+ts@real_scale"]
    assert normal["fitted"] == 0 and normal["median_steps"] == D.budget + 1
    assert normal["ce_start"] == 2.0 and normal["ce_end"] == 1.5
    # Unfitted: the median of 0.5 + 0.1 * seed over seeds 0-4; norms: the median seed's (2).
    assert normal["token_accuracy"] == pytest.approx(0.7)
    assert (normal["norm_start"], normal["norm_end"]) == pytest.approx((0.5, 0.52))
    real_ce = res["arms"]["ce@real_scale"]
    assert real_ce["token_accuracy"] == 1.0 and real_ce["norm_start"] == 26.0
    assert real_ts["runs"] == 5 and real_ts["failed"] == 1 and real_ts["fitted"] == 4
    assert real_ts["grad_ratio"] == pytest.approx(0.2)
    by = {c["name"]: c for c in res["comparisons"]}
    assert by["tsloss@normal"]["ties"] == 5 and by["tsloss@normal"]["ratio"] == 1.0
    assert by["tsloss@normal"]["ce_end_diff_median"] == pytest.approx(-0.1)
    assert (by["tsloss@normal"]["ce_end_lower"], by["tsloss@normal"]["ce_end_higher"]) == (4, 1)
    real = by["tsloss@real_scale"]
    assert real["faster"] == 4 and real["slower"] == 1
    assert real["ratios"]["0"] == pytest.approx((D.budget + 1) / 40)
    # Exact two-sided Wilcoxon on 5 pairs, 4 one way: p = 2 * (1 + ...) / 32 > 0.0625.
    assert real["p"] >= 0.0625


def test_real_scale_init_matches_real_token_norms():
    torch.manual_seed(0)
    base = tiny_llama(64, seed=0)
    with torch.no_grad():  # make real tokens far larger than N(0, 0.02^2) rows
        base.get_input_embeddings().weight.mul_(50.0)
    model = get_prompt_model(base, "prompt_tuning", num_virtual_tokens=20)
    s = real_token_std(model)
    emb = model.word_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, emb.num_embeddings, (2000,), generator=g)
    expected = float(emb(ids).float().norm(dim=-1).median()) / math.sqrt(emb.weight.shape[1])
    assert s == pytest.approx(expected)
    seed_prompt(model, 3, "real_scale")
    rows = prompt_matrix(model).float().norm(dim=-1)
    real = float(emb(ids).float().norm(dim=-1).median())
    assert 0.7 * real < float(rows.median()) < 1.3 * real  # ~ sqrt(d) s at d = 64
    seed_prompt(model, 3, "normal")
    assert float(prompt_matrix(model).float().norm(dim=-1).median()) < 0.1 * real
    with pytest.raises(ValueError, match="real_scale"):
        seed_prompt(model, 3, "orthogonal")


@pytest.mark.slow
def test_paper_gemma_quick(tmp_path):
    out = tmp_path / "pg"
    run_bench("paper_gemma.py", "--quick", "--out", str(out), cwd=tmp_path)
    data = json.loads((out / "paper_gemma.json").read_text())
    assert data["design"]["schedule"] == "linear" and data["design"]["budget"] == 3
    assert set(data["arms"]) == {pg.arm_label(*a) for a in pg.ARMS}
    assert all(a["runs"] == 2 for a in data["arms"].values())
    lines = [json.loads(x) for x in (out / "paper_gemma_runs.jsonl").read_text().splitlines()]
    runs = [r for r in lines if r.get("status") != "started"]  # end records
    # common.record_run: every run has its started record first, and none is left unfinished.
    assert sorted(r["run_id"] for r in lines if r.get("status") == "started") == sorted(
        r["run_id"] for r in runs
    )
    assert len(runs) == 8 and {r["schedule"] for r in runs} == {"linear"}
    assert all("commit" in r and "dirty" in r for r in runs)  # provenance on every run
    assert (out / "paper_gemma.md").read_text().startswith("# The paper's protocol on Gemma")
