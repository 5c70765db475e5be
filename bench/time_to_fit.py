r"""Time to fit against peft's strongest configuration: the protocol of ``bench/PROTOCOL.md``.

Stages (each resumable; every finished run is one line of ``--runs``):

- ``tune``: CE only, init x learning-rate grid on the tuning seeds (PROTOCOL section 4);
- ``select``: prints the best baseline the rule picks from the tuning runs (no runs);
- ``primary``: the baseline (CE at init*, lr*) and the arms of the primary comparisons
  (section 5) on the evaluation seeds; ``--comparisons`` picks which;
- ``explore``: TSLoss against the best baseline on MMLU and single-sample (section 6b,
  exploratory, uncorrected); ``--explore`` picks which;
- ``scale``: the embedding scale of each init against real tokens (exploratory, no training);
- ``--report-only``: ``time_to_fit.json`` / ``.md`` from the runs file.

One run is :func:`convergence.run_one` (steps until every training target is reproduced
exactly; a censored run never counts as its budget) with the init and learning rate of its
arm. An *arm* is ``<method>@<init>,lr=<lr>`` with ``method`` a key of
:data:`convergence.METHODS` (``ce``, ``ce+ts``, ``ts:mean``), e.g. ``ce@sample_vocab,lr=0.03``.

Run (both cores: one process per core, disjoint seeds)::

    OMP_NUM_THREADS=1 taskset -c 0 python bench/time_to_fit.py --stage tune --seeds 100 101
    OMP_NUM_THREADS=1 taskset -c 1 python bench/time_to_fit.py --stage tune --seeds 102
    python bench/time_to_fit.py --stage select
    OMP_NUM_THREADS=1 taskset -c 0 python bench/time_to_fit.py --stage primary --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 taskset -c 1 python bench/time_to_fit.py --stage primary --seeds 5 6 7 8 9
    OMP_NUM_THREADS=1 taskset -c 0 python bench/time_to_fit.py --stage explore \
        --explore mmlu-tsloss
    OMP_NUM_THREADS=1 taskset -c 1 python bench/time_to_fit.py --stage explore \
        --explore bbh-single-tsloss gsm8k-single-tsloss
    python bench/time_to_fit.py --stage scale
    python bench/time_to_fit.py --report-only
    python bench/time_to_fit.py --quick          # tiny model, seconds (smoke test)

JSON fields: ``meta`` (``common.run_metadata``), ``protocol`` (version, budget, grids,
seeds), ``tuning`` (per arm: seeds, steps, median, mean test accuracy), ``best_baseline``
(``{task: {"arm", "source"}}``), ``primary`` (list of {name, config, baseline, seeds, n_pairs,
ratio, ci_low, ci_high, p, p_holm, faster, slower, ties, ratios, accuracy_diff,
accuracy_ci_low, accuracy_ci_high, verdict}; ``status`` "not run" with p 1 where an arm has no
runs), ``headline`` (the primary with the lowest p_holm), ``moonshot_met``, ``exploratory``
(``paper_init_vs_best``: CE at the paper's init against the best baseline;
``tsloss_on_best``: section 6b's comparisons, the fields of ``primary`` without ``p_holm``
plus ``setting``), ``scale`` (per model and init: median
norm of virtual vs real tokens), ``provenance`` (``common.provenance_summary``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats
from convergence import METHODS, run_one
from paper_bench import INIT_TEXTS, PROMPT_INITS, TASKS, import_common, read_runs, seed_prompt

common = import_common()

PROTOCOL_VERSION = 1
K = 10  # multi-sample


@dataclass(frozen=True)
class Design:
    """The numbers of PROTOCOL.md sections 2-5 (``QUICK`` shrinks them for the smoke test)."""

    budget: int = 150
    test_n: dict[str, int] = field(default_factory=lambda: {"bbh": 100, "gsm8k": 50, "mmlu": 100})
    tune_lrs: tuple[float, ...] = (1e-2, 3e-2, 1e-1)
    tune_seeds: tuple[int, ...] = (100, 101, 102)
    eval_seeds: tuple[int, ...] = tuple(range(10))


PROTOCOL = Design()
#: ``bench/gpu.sh``: more evaluation seeds and the paper's budget (300 epochs = 300 full-batch
#: updates); exploratory by PROTOCOL section 6, reported on its own page.
GPU = Design(budget=300, eval_seeds=tuple(range(20)))
QUICK = Design(
    budget=3,
    test_n={"bbh": 4, "gsm8k": 4, "mmlu": 4},
    tune_lrs=(3e-2,),
    tune_seeds=(100,),
    eval_seeds=(0, 1),
)
#: Accuracy window of the selection rule and the non-inferiority margin (fractions).
SELECT_WINDOW = 0.05
NONINFERIORITY = 0.05
MOONSHOT_RATIO = 0.60
PAPER_ARM = "ce@normal,lr=0.03"

#: The primary comparisons (PROTOCOL section 5): name -> (task, method of the arm).
PRIMARY: dict[str, tuple[str, str]] = {
    "bbh-tsloss": ("bbh", "ce+ts"),
    "gsm8k-tsloss": ("gsm8k", "ce+ts"),
    "bbh-tsloss-scalefree": ("bbh", "ts:mean"),
}

#: Exploratory comparisons (PROTOCOL section 6b), each at its task's best baseline and never
#: in the Holm family: name -> (task, setting, method of the arm, number of evaluation seeds).
EXPLORE: dict[str, tuple[str, str, str, int]] = {
    "mmlu-tsloss": ("mmlu", "multi", "ce+ts", 10),
    "bbh-single-tsloss": ("bbh", "single", "ce+ts", 10),
    "gsm8k-single-tsloss": ("gsm8k", "single", "ce+ts", 6),
}


def arm_label(method: str, init: str, lr: float) -> str:
    return f"{method}@{init},lr={lr:g}"


def parse_arm(arm: str) -> tuple[str, str, float]:
    """``"ce+ts@sample_vocab,lr=0.03"`` -> ``("ce+ts", "sample_vocab", 0.03)``."""
    try:
        method, rest = arm.split("@", 1)
        init, lr = rest.split(",lr=", 1)
        out = (method, init, float(lr))
    except ValueError:
        raise ValueError(f"arm {arm!r} is not <method>@<init>,lr=<lr>") from None
    if method not in METHODS or init not in PROMPT_INITS or not out[2] > 0:
        raise ValueError(f"arm {arm!r}: unknown method or init, or lr <= 0")
    return out


def arm_on(base_arm: str, method: str) -> str:
    """The arm that runs ``method`` at the init and learning rate of ``base_arm``."""
    _, init, lr = parse_arm(base_arm)
    return arm_label(method, init, lr)


class Job(NamedTuple):
    """One run to do: what :func:`plan` returns and what :func:`run_key` names."""

    stage: str
    task: str
    setting: str
    arm: str
    seed: int


def tuning_grid(d: Design) -> list[str]:
    """The CE arms of the tuning grid, in the protocol's tie-breaking order."""
    return [arm_label("ce", init, lr) for init in PROMPT_INITS for lr in d.tune_lrs]


def run_key(arm: str, task: str, seed: int, setting: str = "multi") -> str:
    """Multi-sample keys keep the form the primary runs were recorded under."""
    where = task if setting == "multi" else f"{task}/{setting}"
    return f"{where}|{arm}|{seed}"


def job_key(job: Job) -> str:
    return run_key(job.arm, job.task, job.seed, job.setting)


# --------------------------------------------------------------------------- analysis


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest record of every key (a retried failure replaces the failed record)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:
        latest[r["key"]] = r
    return list(latest.values())


def _steps(r: dict[str, Any]) -> int | None:
    """Steps to fit; a failed or censored run is None (censored, PROTOCOL section 5)."""
    if common.run_status(r) == "failed" or not r.get("converged"):
        return None
    return int(r["steps"])


def _by_arm(
    runs: list[dict[str, Any]], task: str, setting: str = "multi"
) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in _ok(runs):
        if r["task"] == task and r.get("setting", "multi") == setting:
            out.setdefault(r["arm"], {})[int(r["seed"])] = r
    return out


def _test_acc(r: dict[str, Any]) -> float | None:
    return (r.get("test") or {}).get("accuracy")


def tuning_table(runs: list[dict[str, Any]], task: str, d: Design) -> list[dict[str, Any]]:
    """Per tuning arm: seeds, steps, median (censored = inf -> null), mean test accuracy."""
    arms = _by_arm([r for r in runs if r.get("stage") == "tune"], task)
    rows = []
    for arm in tuning_grid(d):
        rs = arms.get(arm, {})
        if not rs:
            continue
        steps = [_steps(rs[s]) for s in sorted(rs)]
        vals = [math.inf if x is None else float(x) for x in steps]
        accs = [a for a in (_test_acc(rs[s]) for s in sorted(rs)) if a is not None]
        med = statistics.median(vals)
        rows.append(
            {
                "arm": arm,
                "seeds": sorted(rs),
                "steps": steps,
                "median": med if math.isfinite(med) else None,
                "mean_steps": statistics.mean(d.budget + 1 if x is None else x for x in steps),
                "test_accuracy": statistics.mean(accs) if accs else None,
                "failed": sum(common.run_status(rs[s]) == "failed" for s in rs),
            }
        )
    return rows


def select_best(table: list[dict[str, Any]], d: Design) -> str | None:
    """The protocol's rule (section 4): within 5 points of the best mean test accuracy, the
    lowest median steps (censored = inf), then lower mean steps, then grid order."""
    scored = [r for r in table if r["test_accuracy"] is not None]
    if not scored:
        return None
    best_acc = max(r["test_accuracy"] for r in scored)
    eligible = [r for r in scored if r["test_accuracy"] >= best_acc - SELECT_WINDOW - 1e-12]
    order = {a: i for i, a in enumerate(tuning_grid(d))}
    eligible.sort(
        key=lambda r: (
            math.inf if r["median"] is None else r["median"],
            r["mean_steps"],
            order[r["arm"]],
        )
    )
    return eligible[0]["arm"]


def best_baselines(runs: list[dict[str, Any]], d: Design) -> dict[str, dict[str, str]]:
    """``{task: {"arm", "source"}}`` for every task the primary and exploratory comparisons
    use."""
    bbh = select_best(tuning_table(runs, "bbh", d), d)
    out: dict[str, dict[str, str]] = {}
    tasks = {t for t, _ in PRIMARY.values()} | {e[0] for e in EXPLORE.values()}
    for task in sorted(tasks):
        own = select_best(tuning_table(runs, task, d), d)
        if own is not None:
            out[task] = {"arm": own, "source": f"tuned on {task}"}
        elif bbh is not None:
            out[task] = {"arm": bbh, "source": "BBH's choice (no tuning runs on this task)"}
    return out


def _paired_accuracy(
    arm: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]]
) -> tuple[float | None, float | None, float | None]:
    """Mean paired test-accuracy difference (arm - base) and its 95% bootstrap interval."""
    diffs = []
    for s in sorted(set(arm) & set(base)):
        a, b = _test_acc(arm[s]), _test_acc(base[s])
        if a is not None and b is not None:
            diffs.append(a - b)
    if not diffs:
        return None, None, None
    lo, hi = stats.bootstrap_mean_ci(diffs)
    return float(np.mean(diffs)), lo, hi


def verdict(c: dict[str, Any]) -> str:
    """The one-line verdict of PROTOCOL section 5, from the comparison's numbers only."""
    if c.get("status") == "not run":
        return "not run"
    p = c["p_holm"]
    if p is not None and p < 0.05 and c["ci_high"] < 1:
        v = "fits faster"
    elif p is not None and p < 0.05 and c["ci_low"] > 1:
        v = "fits slower"
    else:
        v = f"no difference detected at {c['n_pairs']} seeds"
    lo = c.get("accuracy_ci_low")
    acc = (
        "accuracy not scored"
        if lo is None
        else ("accuracy equal or better" if lo > -NONINFERIORITY else "accuracy may be worse")
    )
    return f"{v}; {acc}"


def _compare_arms(
    name: str,
    runs: list[dict[str, Any]],
    task: str,
    setting: str,
    arm: str,
    base_arm: str,
    d: Design,
) -> dict[str, Any] | None:
    """``stats.compare`` of ``arm`` against ``base_arm`` over their common seeds, with the
    paired test-accuracy difference and the failed runs of each; None without a pair."""
    arms = _by_arm(runs, task, setting)
    a, b = arms.get(arm, {}), arms.get(base_arm, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    c = stats.compare(
        name,
        arm,
        base_arm,
        {s: _steps(a[s]) for s in seeds},
        {s: _steps(b[s]) for s in seeds},
        d.budget,
    )
    diff, lo, hi = _paired_accuracy(a, b)
    return c | {
        "status": "ok",
        "accuracy_diff": diff,
        "accuracy_ci_low": lo,
        "accuracy_ci_high": hi,
        "arm_failed": sum(common.run_status(a[s]) == "failed" for s in a),
        "baseline_failed": sum(common.run_status(b[s]) == "failed" for s in b),
    }


def primary_comparisons(
    runs: list[dict[str, Any]], best: dict[str, dict[str, str]], d: Design
) -> list[dict[str, Any]]:
    out = []
    prim = [r for r in runs if r.get("stage") == "primary"]
    for name, (task, method) in PRIMARY.items():
        base_arm = best.get(task, {}).get("arm")
        entry: dict[str, Any] = {"name": name, "task": task}
        if base_arm is None:
            out.append(entry | {"status": "not run", "p": 1.0, "config": method, "baseline": None})
            continue
        arm = arm_on(base_arm, method)
        result = _compare_arms(name, prim, task, "multi", arm, base_arm, d)
        if result is None:
            out.append(entry | {"status": "not run", "p": 1.0, "config": arm, "baseline": base_arm})
            continue
        if result["n_pairs"] < len(d.eval_seeds):
            # PROTOCOL section 5: a comparison not run to all its seeds is "not run" (p = 1 in
            # the Holm family), never tested on fewer; its pairs so far are kept, exploratory.
            out.append(
                entry
                | {
                    "status": "not run",
                    "p": 1.0,
                    "config": arm,
                    "baseline": base_arm,
                    "n_pairs": result["n_pairs"],
                    "partial": result,
                }
            )
            continue
        out.append(entry | result)
    holm = stats.holm([1.0 if c["p"] is None else c["p"] for c in out])
    for c, ph in zip(out, holm, strict=True):
        c["p_holm"] = ph
        c["verdict"] = verdict(c)
    return out


def headline(primary: list[dict[str, Any]]) -> dict[str, Any] | None:
    ran = [c for c in primary if c.get("status") == "ok"]
    if not ran:
        return None
    return min(ran, key=lambda c: (c["p_holm"], c["ratio"]))


def moonshot_met(c: dict[str, Any] | None) -> bool:
    return bool(
        c
        and c["verdict"].startswith("fits faster")
        and c["ratio"] <= MOONSHOT_RATIO
        and "equal or better" in c["verdict"]
    )


def exploratory_paper_init(
    runs: list[dict[str, Any]], best: dict[str, dict[str, str]], d: Design
) -> list[dict[str, Any]]:
    """CE at the paper's init and lr against the best baseline (exploratory, uncorrected)."""
    out = []
    prim = [r for r in runs if r.get("stage") == "primary"]
    for task, choice in sorted(best.items()):
        arms = _by_arm(prim, task)
        a, b = arms.get(PAPER_ARM, {}), arms.get(choice["arm"], {})
        seeds = sorted(set(a) & set(b))
        if seeds and choice["arm"] != PAPER_ARM:
            c = stats.compare(
                f"{task}-paper-init",
                PAPER_ARM,
                choice["arm"],
                {s: _steps(a[s]) for s in seeds},
                {s: _steps(b[s]) for s in seeds},
                d.budget,
            )
            out.append(c)
    return out


def explore_comparisons(
    runs: list[dict[str, Any]], best: dict[str, dict[str, str]], d: Design
) -> list[dict[str, Any]]:
    """PROTOCOL section 6b: TSLoss against the best baseline on MMLU and single-sample, on
    whatever pairs have run (their number is reported); uncorrected, never in the Holm family."""
    out = []
    ran = [r for r in runs if r.get("stage") == "explore"]
    for name, (task, setting, method, n_seeds) in EXPLORE.items():
        base_arm = best.get(task, {}).get("arm")
        if base_arm is None:
            continue
        arm = arm_on(base_arm, method)
        c = _compare_arms(name, ran, task, setting, arm, base_arm, d)
        if c is not None:
            out.append(c | {"task": task, "setting": setting, "planned_pairs": n_seeds})
    return out


# --------------------------------------------------------------------------- scale


@torch.no_grad()
def embedding_scale(model_name: str, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Median norm of the initial virtual tokens per init against real tokens as the decoder
    layers see them (the embedding layer's *output*), and against raw embedding rows."""
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model, prompt_matrix

    loaded = load_base_model(model_name, device=device)
    model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=20)
    emb = model.word_embeddings
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, emb.num_embeddings, (2000,), generator=g).to(emb.weight.device)
    seen = emb(ids).float().norm(dim=-1)
    raw = emb.weight[ids].float().norm(dim=-1)
    out: dict[str, Any] = {
        "model": model_name,
        "real_token_median_norm": float(seen.median()),
        "raw_row_median_norm": float(raw.median()),
        "embedding_scale": float((seen / raw.clamp_min(1e-12)).median()),
        "inits": {},
    }
    for init in PROMPT_INITS:
        seed_prompt(model, seed, init, tokenizer=loaded.tokenizer, init_text=INIT_TEXTS["bbh"])
        norm = float(prompt_matrix(model).float().norm(dim=-1).median())
        out["inits"][init] = {
            "median_norm": norm,
            "ratio_to_real": norm / out["real_token_median_norm"],
        }
    return out


# --------------------------------------------------------------------------- report


def build_result(
    runs: list[dict[str, Any]], meta: dict[str, Any], extra: dict[str, Any], d: Design
) -> dict[str, Any]:
    best = best_baselines(runs, d)
    primary = primary_comparisons(runs, best, d)
    head = headline(primary)
    return {
        "meta": meta,
        "protocol": {
            "version": PROTOCOL_VERSION,
            "file": "bench/PROTOCOL.md",
            "budget": d.budget,
            "device": extra.get("device", "cpu"),
            "k": K,
            "tune_lrs": list(d.tune_lrs),
            "tune_seeds": list(d.tune_seeds),
            "eval_seeds": list(d.eval_seeds),
            "inits": list(PROMPT_INITS),
            "init_texts": INIT_TEXTS,
            "test_n": d.test_n,
            "primary": {k: {"task": t, "method": m} for k, (t, m) in PRIMARY.items()},
        },
        "tuning": {t: tuning_table(runs, t, d) for t in sorted({r["task"] for r in runs})},
        "best_baseline": best,
        "primary": primary,
        "headline": head,
        "moonshot_met": moonshot_met(head),
        "exploratory": {
            "paper_init_vs_best": exploratory_paper_init(runs, best, d),
            "tsloss_on_best": explore_comparisons(runs, best, d),
        },
        "scale": extra.get("scale"),
        "provenance": common.page_provenance(runs, meta),
    }


def _f(x: Any, spec: str = ".2f") -> str:
    return "n/a" if x is None else f"{x:{spec}}"


def _ratio_cell(c: dict[str, Any]) -> str:
    return f"{c['ratio']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"


def _accuracy_cell(c: dict[str, Any]) -> str:
    """The paired test-accuracy difference in points with its interval."""
    if c["accuracy_diff"] is None:
        return "n/a"
    return (
        f"{100 * c['accuracy_diff']:+.1f} [{100 * c['accuracy_ci_low']:+.1f}, "
        f"{100 * c['accuracy_ci_high']:+.1f}]"
    )


def markdown(res: dict[str, Any]) -> str:
    budget = res["protocol"]["budget"]
    lines = [
        "# Time to fit against peft's best prompt-tuning configuration",
        "",
        f"Protocol: [`bench/PROTOCOL.md`](../PROTOCOL.md) version {res['protocol']['version']}, "
        f"committed before these runs. Budget {res['protocol']['budget']} updates; multi-sample "
        f"k = {res['protocol']['k']}; SmolLM2-135M-Instruct on {res['protocol']['device']}.",
        "",
        "## Primary comparisons (Holm-corrected over all three)",
        "",
    ]
    rows = []
    for c in res["primary"]:
        if c.get("status") != "ok":
            part = c.get("partial")
            rows.append(
                [
                    c["name"],
                    f"`{c.get('config')}`",
                    f"`{c.get('baseline')}`",
                    str(c.get("n_pairs", 0)),
                    "not run"
                    if part is None
                    else f"not run (exploratory, {part['n_pairs']} of "
                    f"{len(res['protocol']['eval_seeds'])} pairs: ratio {part['ratio']:.2f})",
                    "" if part is None else f"{part['faster']}/{part['slower']}/{part['ties']}",
                    "",
                    "1 (counted)",
                    "",
                    "not run",
                ]
            )
            continue
        rows.append(
            [
                c["name"],
                f"`{c['config']}`",
                f"`{c['baseline']}`",
                str(c["n_pairs"]),
                _ratio_cell(c),
                f"{c['faster']}/{c['slower']}/{c['ties']}",
                _f(c["p"], ".3g"),
                _f(c["p_holm"], ".3g"),
                _accuracy_cell(c),
                c["verdict"],
            ]
        )
    lines.append(
        common.markdown_table(
            [
                "comparison",
                "arm",
                "baseline",
                "pairs",
                "ratio [95% CI]",
                "faster/slower/tie",
                "p",
                "p (Holm)",
                "test acc. diff, points [95% CI]",
                "verdict",
            ],
            rows,
        )
    )
    head = res["headline"]
    lines += [
        "",
        "Ratio: geometric mean over seeds of steps(arm) / steps(baseline), same seed = same "
        "training rows and initial prompt; a censored run (and a failed one: an exception, or "
        "a run started with no end record) counts as budget + 1. " + stats.method_note(),
        "",
        "**Headline**: "
        + (
            "no primary comparison has been run yet."
            if head is None
            else f"`{head['name']}`: ratio {head['ratio']:.2f} [{head['ci_low']:.2f}, "
            f"{head['ci_high']:.2f}], Holm p = {head['p_holm']:.3g}: {head['verdict']}."
        ),
        "",
        "**Moonshot (>= 40% fewer steps than the best baseline, equal accuracy, after Holm)**: "
        + ("met." if res["moonshot_met"] else "not met."),
        "",
        "## Choosing the best baseline (tuning seeds; not a test)",
        "",
    ]
    for task, table in res["tuning"].items():
        if not table:
            continue
        lines += [f"### {task}", ""]
        lines.append(
            common.markdown_table(
                ["arm", "seeds", "steps per seed", "median", "mean test acc.", "failed"],
                [
                    [
                        f"`{r['arm']}`",
                        " ".join(map(str, r["seeds"])),
                        " ".join(f">{budget}" if s is None else str(s) for s in r["steps"]),
                        _f(r["median"], "g"),
                        _f(None if r["test_accuracy"] is None else 100 * r["test_accuracy"], ".1f"),
                        str(r["failed"]),
                    ]
                    for r in table
                ],
            )
        )
        lines.append("")
    for task, b in res["best_baseline"].items():
        lines.append(f"- best baseline for {task}: `{b['arm']}` ({b['source']})")
    lines += ["", "## Exploratory (uncorrected; no claim rests on these)", ""]
    for c in res["exploratory"]["paper_init_vs_best"]:
        lines.append(
            f"- `{c['config']}` (the paper's init) vs `{c['baseline']}`: ratio "
            f"{c['ratio']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}], p = {_f(c['p'], '.3g')}, "
            f"{c['n_pairs']} seeds."
        )
    explore = res["exploratory"].get("tsloss_on_best") or []
    if explore:
        lines += [
            "",
            "### TSLoss on the best baseline: MMLU and single-sample (PROTOCOL 6b)",
            "",
            "Uncorrected, not in the Holm family above; pairs = the seeds both arms ran, of "
            "the planned. A seed with a failed or unfinished run in one arm only is in no pair; "
            "it is counted in the last column and listed, with its error, under *Provenance of "
            "the runs*.",
            "",
        ]
        rows = []
        for c in explore:
            rows.append(
                [
                    c["name"],
                    f"{c['task']} {c['setting']}",
                    f"`{c['config']}`",
                    f"`{c['baseline']}`",
                    f"{c['n_pairs']} of {c['planned_pairs']}",
                    _ratio_cell(c),
                    f"{c['faster']}/{c['slower']}/{c['ties']}",
                    _f(c["p"], ".3g"),
                    _accuracy_cell(c),
                    f"{c['arm_failed']} / {c['baseline_failed']}",
                ]
            )
        lines.append(
            common.markdown_table(
                [
                    "comparison",
                    "task",
                    "arm",
                    "baseline",
                    "pairs",
                    "ratio [95% CI]",
                    "faster/slower/tie",
                    "p (uncorrected)",
                    "test acc. diff, points [95% CI]",
                    "failed (arm / baseline)",
                ],
                rows,
            )
        )
    if res.get("scale"):
        lines += ["", "### Embedding scale of each init (seed 0)", ""]
        rows = []
        for s in res["scale"]:
            for init, v in s["inits"].items():
                rows.append(
                    [
                        s["model"],
                        init,
                        f"{v['median_norm']:.3f}",
                        f"{v['ratio_to_real']:.3f}",
                        f"{s['real_token_median_norm']:.2f}",
                        f"{s['raw_row_median_norm']:.3f}",
                    ]
                )
        lines.append(
            common.markdown_table(
                [
                    "model",
                    "init",
                    "virtual token norm",
                    "/ real token norm",
                    "real token norm (as layers see it)",
                    "raw embedding row norm",
                ],
                rows,
            )
        )
    lines += ["", common.provenance_markdown(res["provenance"]), ""]
    lines.append(common.environment_markdown(res["meta"], res["meta"].get("load")))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def plan(args: argparse.Namespace, runs: list[dict[str, Any]], d: Design) -> list[Job]:
    """The runs a stage asks for, in order, each once."""
    todo: list[Job] = []
    if args.stage == "tune":
        for task in args.tasks:
            for arm in tuning_grid(d):
                todo += [Job("tune", task, "multi", arm, s) for s in args.seeds or d.tune_seeds]
    elif args.stage == "primary":
        best = best_baselines(runs, d)
        for name in args.comparisons:
            task, method = PRIMARY[name]
            if task not in best:
                raise SystemExit(
                    f"no best baseline for {task} yet: run --stage tune first (PROTOCOL 4)"
                )
            base = best[task]["arm"]
            arms = [base, arm_on(base, method)]
            if args.with_paper_init:
                arms.append(PAPER_ARM)
            for seed in args.seeds or d.eval_seeds:
                todo += [Job("primary", task, "multi", a, seed) for a in arms]
    elif args.stage == "explore":
        best = best_baselines(runs, d)
        for name in args.explore:
            task, setting, method, n_seeds = EXPLORE[name]
            if task not in best:
                raise SystemExit(
                    f"no best baseline for {task} yet: run --stage tune first (PROTOCOL 4)"
                )
            base = best[task]["arm"]
            for seed in args.seeds or d.eval_seeds[:n_seeds]:
                todo += [
                    Job("explore", task, setting, a, seed) for a in (base, arm_on(base, method))
                ]
    seen: set[Job] = set()
    return [x for x in todo if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["tune", "select", "primary", "explore", "scale"])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["bbh"])
    parser.add_argument("--comparisons", nargs="+", choices=list(PRIMARY), default=list(PRIMARY))
    parser.add_argument("--explore", nargs="+", choices=list(EXPLORE), default=list(EXPLORE))
    parser.add_argument(
        "--with-paper-init",
        action="store_true",
        help="also run CE at the paper's init on the evaluation seeds",
    )
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs", type=Path, help="JSONL of finished runs (default <out>/...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf_tsprompt_bench/time_to_fit"))
    parser.add_argument("--device", default="cpu", help="cpu | cuda (bench/gpu.sh)")
    parser.add_argument(
        "--design", choices=["protocol", "gpu"], default="protocol", help="gpu: bench/gpu.sh"
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
    args = parser.parse_args(argv)
    args.out = common.output_dir(args.out, args.quick)

    from paper_bench import write_tiny_assets

    from hf_tsprompt.fsutil import atomic_write_json, atomic_write_text
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model

    common.single_thread()
    d = QUICK if args.quick else (GPU if args.design == "gpu" else PROTOCOL)
    meta = common.run_metadata()
    runs_file = args.runs or (args.out / "time_to_fit_runs.jsonl")
    model_name, sources = "smollm2-135m-instruct", {}
    scale_models = ["smollm2-135m-instruct", "gemma-3-270m"]
    if args.quick:
        # The smoke test: the whole protocol end to end on the tiny model in seconds.
        work = args.out / "quick-work"
        assets = write_tiny_assets(work / "assets")
        model_name, sources, args.work = assets["model"], assets["sources"], work
        scale_models = [model_name]
    extra: dict[str, Any] = {"device": args.device}
    json_file = args.out / "time_to_fit.json"

    stages = ["tune", "primary", "explore", "scale"] if args.quick else [args.stage]
    if args.report_only:
        stages = []
    loaded = model = None
    with common.LoadMonitor() as load:
        for stage in stages:
            if stage is None:
                parser.error("give --stage, --report-only or --quick")
            if stage == "select":
                best = best_baselines(read_runs(runs_file), d)
                print(json.dumps(best, indent=1))
                return 0
            if stage == "scale":
                extra["scale"] = [embedding_scale(m, device=args.device) for m in scale_models]
                continue
            args.stage = stage
            if args.quick and stage == "primary":
                args.comparisons = ["bbh-tsloss", "bbh-tsloss-scalefree"]
                args.seeds, args.with_paper_init = None, True
            if args.quick and stage in ("tune", "explore"):
                args.seeds = None
            runs = read_runs(runs_file)
            done = common.done_keys(runs)
            todo = [j for j in plan(args, runs, d) if job_key(j) not in done]
            print(f"{stage}: {len(todo)} run(s) to do, {len(done)} done in {runs_file}", flush=True)
            if todo and loaded is None:
                loaded = load_base_model(model_name, device=args.device)
                model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=20)
            for i, job in enumerate(todo):
                st, task, setting, arm, seed = job
                method, init, lr = parse_arm(arm)
                key = job_key(job)
                fields = {
                    "stage": st,
                    "task": task,
                    "arm": arm,
                    "method": method,
                    "init": init,
                    "lr": lr,
                    "seed": seed,
                    "setting": setting,
                    "max_steps": d.budget,
                }
                rec = common.record_run(
                    runs_file,
                    key,
                    fields,
                    meta,
                    partial(
                        run_one,
                        model,
                        loaded.tokenizer,
                        TASKS[task],
                        setting,
                        method,
                        seed,
                        lr=lr,
                        max_steps=d.budget,
                        test_n=d.test_n[task],
                        source=sources.get(task),
                        work=args.work / setting / arm.replace("@", "_").replace(",", "_"),
                        init=init,
                    ),
                )
                if rec is None:
                    continue
                test = rec["test"]["accuracy"] if rec["test"] else None
                print(
                    f"[{i + 1}/{len(todo)}] {key}: steps {rec['steps']} "
                    f"({rec['seconds']:.0f}s), test {test}",
                    flush=True,
                )
    meta["load"] = load.summary()
    if "scale" not in extra and json_file.is_file():
        # Read at the end, not the start: another stage may have measured it meanwhile.
        extra["scale"] = json.loads(json_file.read_text()).get("scale")
    res = build_result(read_runs(runs_file), meta, extra, d)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_file, res)
    atomic_write_text(args.out / "time_to_fit.md", markdown(res))
    print(f"wrote {json_file} and time_to_fit.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
