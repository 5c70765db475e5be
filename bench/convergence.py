"""Convergence benchmark: the paper's Tables IV, V and VI protocol on SmolLM2-135M (CPU).

What it measures: the number of optimiser steps until a soft prompt reproduces *all* of its
own training examples (the paper's "iterations for soft prompts to achieve complete task
accuracy"), for cross-entropy alone and with TSLoss or its parts, over several seeds.

Criterion (exact target match, read from the training forward pass): at the start of step
t+1 (after t updates) the training batch is run forward anyway; an example counts as solved
when the argmax at every target position equals the target token, end-of-turn token
included. Under teacher forcing that is exactly the condition for greedy decoding to emit the
target and stop, so "all examples solved" means 100% exact-match training accuracy, at no
extra cost. It is stricter than the extracted-answer accuracy the paper may have used (GSM8K:
the whole reasoning must be reproduced, not just the number). Every converged prompt is then
checked with real greedy generation (``hf_tsprompt.evaluation.evaluate_model``) on its
training rows; the agreement is reported.

Protocol (defaults; every number is also in the JSON):

- model: ``hf_tsprompt.models.load_base_model()`` (SmolLM2-135M-Instruct, float32, CPU);
- prompt tuning, 20 virtual tokens, init N(0, 0.02^2) (seeded);
- AdamW (weight decay 0.01, eps 1e-8), constant learning rate ``--lr`` (3e-2), gradient
  clipping at 1.0 (the ``Trainer`` default), full batch: all k training rows in every step;
- single-sample k = 1, multi-sample k = 10 (section V-B); the training rows depend on the
  seed (the same rows for every method of that seed: paired comparisons), GSM8K rows are
  restricted to short ones (``paper_bench.task_rows``);
- a step budget per task and setting (:data:`MAX_STEPS`); a run that does not converge within
  it is reported as censored (">budget"), never as the budget;
- TSLoss: ``L = CE + lambda_ts * (beta_H0 L_H0 + beta_H1 L_H1)``, computed by the library's
  regulariser registry (``hf_tsprompt.regularizers``, entry ``tsloss``) as the trainer does,
  with its declared defaults (tau 0.1, alpha 10, lambda_ts = beta = 1) unless a method says
  otherwise.

Methods (:data:`METHODS`): ``ce``, ``ce+h0``, ``ce+h1``, ``ce+ts`` (Tables IV and VI);
``ts:lambda=...`` and ``ts:alpha=...`` (Table V); labelled variants of TSLoss beside the
paper's form: ``ts:exact`` (true persistence pairs), ``ts:mean`` (scale-free distances) and
the others listed in :data:`METHODS`.

Each finished run is appended to a JSONL file (``--runs``), so an interrupted job loses at
most one run and a rerun skips what is done. The converged prompt of each run is saved as
``.npy`` under ``--work`` (not in the repository).

Run::

    # the whole grid (hours on one core), resumable:
    OMP_NUM_THREADS=1 taskset -c 1 python bench/convergence.py --plan core
    OMP_NUM_THREADS=1 taskset -c 1 python bench/convergence.py --plan sweep
    OMP_NUM_THREADS=1 taskset -c 1 python bench/convergence.py --plan variants
    OMP_NUM_THREADS=1 taskset -c 1 python bench/convergence.py --plan control   # noise floor
    # one configuration against TopologicalPromptTrainer (same first losses):
    OMP_NUM_THREADS=1 taskset -c 1 python bench/convergence.py --check-trainer
    # tables only, from the runs file:
    python bench/convergence.py --report-only
    # smoke test (tiny model, seconds):
    python bench/convergence.py --quick --out /tmp/conv

Output: ``<out>/convergence.json`` and ``convergence.md``. JSON fields:

- ``meta``: ``command``, ``machine``, ``versions``, ``git`` (commit, dirty), ``started``
  (``common.run_metadata``);
- ``protocol``: model, lr, optimiser, virtual tokens, init, k per setting, step budgets,
  GSM8K short-row limits, test-set sizes and token budgets, criterion text;
- ``methods``: ``{label: {regularizer, weight, <every parameter the regulariser declares,
  defaults filled in: beta_h0, beta_h1, tau, alpha, lambda_repel, lambda_attract, variant,
  scale for tsloss, none for ce>, tau_nn, rel_weight, description}}``;
- ``groups``: one entry per (task, setting, method) with ``n`` runs (failed ones excluded),
  ``n_converged``, ``n_diverged`` (loss NaN/inf; in ``n``, counted as not fitted),
  ``n_failed`` (runs that raised; not in ``n`` nor in any statistic), ``steps`` (per seed,
  null = censored), ``median``, ``q25``, ``q75`` (censored runs count as +infinity; a
  statistic that is infinite is null with ``censored_stat`` true), ``improvement_vs_ce``
  (``1 - median / median_ce``, null if undefined), ``paired_ratio`` (the geometric mean over
  seeds of steps / steps_ce, ``bench/stats.py``: a run that did not fit counts as budget + 1
  steps; null for CE itself), ``paired_ci`` (its bootstrap 95% interval), ``paired_p``
  (Wilcoxon), ``paired_p_holm`` (Holm over every per-setting comparison of the page),
  ``n_paired``, ``test_accuracy`` (mean, sd, n over
  the runs that were scored), ``train_greedy_accuracy`` (mean extracted-answer accuracy of the
  converged prompts under real greedy decoding), ``train_greedy_exact`` (fraction of training
  generations equal to the target text), ``grad_ratio`` (median over runs of the median
  ``|lambda grad L_reg| / |grad CE|`` per step), ``seconds_per_step``;
- ``pooled``: each method against CE per ``scope`` = ``"<task>/<setting>"`` (the test
  family, with ``p_holm``) and, when it ran in several, pooled over all of them (``scope``
  ``"all"``, ``p_holm`` null): ``n_pairs``, ``groups``, ``geo_mean_ratio`` (the same paired
  ratio as ``groups``), ``ci_low`` / ``ci_high``, ``ratio_q25`` / ``ratio_q75``, ``faster``
  / ``slower`` / ``ties`` (pair counts), ``wilcoxon_p`` (two-sided signed-rank test of the
  log ratios), ``p_holm`` (:func:`pooled_paired`);
- ``provenance``: ``common.provenance_summary`` of the runs against the commit the page was
  written at: runs per commit, how many were carried forward from another commit (or carry
  none: recorded before commits were logged), dirty trees, failed runs with their errors;
- ``scale``: :func:`scale_diagnostics` (distance scale of the init and converged CE prompts
  against tau and alpha, absolute and scale-free);
- ``trainer_check``: the first losses of this loop and of ``TopologicalPromptTrainer`` on one
  configuration (null when not run);
- ``runs_file``: the JSONL with every run (fields in :func:`run_one`'s docstring).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tsprompt.regularizers import DEFAULT_REGULARIZER, WEIGHT, get_regularizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_bench import (
    INIT_TEXTS,
    TASKS,
    TaskSpec,
    import_common,
    prompt_forward,
    prompt_stats,
    read_runs,
    seed_prompt,
    task_rows,
    topo_summary,
    train_batch,
)

common = import_common()
import stats  # noqa: E402  (bench/stats.py: the one definition of "paired")

SETTINGS: dict[str, int] = {"single": 1, "multi": 10}
#: Step budget per (task, setting): chosen so that the CE baseline converges (see the md).
MAX_STEPS: dict[tuple[str, str], int] = {
    ("gsm8k", "single"): 150,
    ("gsm8k", "multi"): 150,
    ("bbh", "single"): 100,
    ("bbh", "multi"): 150,
}
#: Test examples scored per converged prompt (0: not scored) per (task, setting).
TEST_N: dict[tuple[str, str], int] = {
    ("gsm8k", "single"): 0,
    ("gsm8k", "multi"): 0,
    ("bbh", "single"): 100,
    ("bbh", "multi"): 100,
}
LR = 3e-2
NUM_VIRTUAL_TOKENS = 20
INIT_STD = 0.02
WEIGHT_DECAY = 0.01
ADAM_EPS = 1e-8
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Method:
    """One objective: ``CE + weight * regulariser``.

    ``regularizer`` is a name of the library's registry (:mod:`hf_tsprompt.regularizers`)
    and ``params`` the values of its declared parameters that differ from the declared
    defaults (``{"scale": "mean"}``), checked against the declarations when the table is
    built; ``weight`` is lambda_ts. Two bench-only schedules sit on top: ``tau_nn`` (when
    set) replaces ``tau`` at every step by ``tau_nn`` times the prompt's current mean
    nearest-neighbour distance (detached): a temperature relative to the scale Eq. 1
    approximates. ``rel_weight`` (when set) replaces the fixed ``weight`` at every step by
    ``rel_weight * |grad CE| / |grad L_reg|`` (norms on the prompt), so the regulariser always
    contributes that fraction of the CE gradient's norm, whatever the scale of the distances.
    """

    regularizer: str = DEFAULT_REGULARIZER
    weight: float = WEIGHT.default
    params: Mapping[str, Any] = field(default_factory=dict)
    tau_nn: float | None = None
    rel_weight: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        get_regularizer(self.regularizer).resolve(self.params)  # a typo fails at import
        WEIGHT.check(self.weight)

    def resolved(self) -> dict[str, Any]:
        """Every parameter of the regulariser: ``params`` over the declared defaults."""
        return get_regularizer(self.regularizer).resolve(self.params)

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry: regulariser, weight, its parameters (defaults filled in), the
        schedules and the description."""
        return {
            "regularizer": self.regularizer,
            "weight": self.weight,
            **self.resolved(),
            "tau_nn": self.tau_nn,
            "rel_weight": self.rel_weight,
            "description": self.description,
        }


def ts(description: str, *, weight: float = WEIGHT.default, **params: Any) -> Method:
    """A TSLoss method: ``ts("...", alpha=5.0)``."""
    return Method(weight=weight, params=params, description=description)


METHODS: dict[str, Method] = {
    "ce": Method(regularizer="none", weight=0.0, description="cross-entropy only (Standard)"),
    "ce+h0": ts("CE + L_H0 (Table VI 'H0 only')", beta_h1=0.0),
    "ce+h1": ts("CE + L_H1 (Table VI 'H1 only')", beta_h0=0.0),
    "ce+ts": ts("CE + TSLoss, the paper's form (tau 0.1, alpha 10, lambda 1)"),
    "ts:lambda=0.1": ts("Table V, lambda_ts = 0.1", weight=0.1),
    "ts:lambda=0.5": ts("Table V, lambda_ts = 0.5", weight=0.5),
    "ts:lambda=10": ts("Table V, lambda_ts = 10", weight=10.0),
    "ts:alpha=5": ts("Table V, alpha = 5", alpha=5.0),
    "ts:alpha=20": ts("Table V, alpha = 20", alpha=20.0),
    "ts:exact": ts("variant: exact persistence pairs", variant="exact"),
    # The library's scale parameter (TSLOSS_PARAMS): distances divided by their mean.
    "ts:mean": ts("variant: scale-free distances (D / mean D)", scale="mean"),
    "ts:mean,lambda=10": ts(
        "variant: scale-free distances, lambda_ts = 10", scale="mean", weight=10.0
    ),
    "ts:lambda=100": ts("variant: paper's form, lambda_ts = 100", weight=100.0),
    # A control, not a method: its gradient is ~1e-5 of CE's, so it cannot pull the prompt
    # anywhere, yet it perturbs the trajectory; its spread against CE is the noise floor of
    # "steps to converge" (how much a negligible change alone moves the count).
    "ts:lambda=1e-4": ts("control: paper's form at lambda_ts = 1e-4 (noise floor)", weight=1e-4),
    "ts:tau=0.1nn": Method(
        tau_nn=0.1, description="variant: tau = 0.1 x mean nearest-neighbour distance"
    ),
    "ts:rel=0.5": Method(
        rel_weight=0.5,
        description="variant: paper's form, weight set each step to 0.5 |grad CE| / |grad L_ts|",
    ),
    "ts:mean,rel=0.5": Method(
        params={"scale": "mean"},
        rel_weight=0.5,
        description="variant: scale-free distances, weight set to 0.5 |grad CE| / |grad L_ts|",
    ),
}

CORE = ("ce", "ce+h0", "ce+h1", "ce+ts")
SWEEP = ("ts:lambda=0.1", "ts:lambda=0.5", "ts:lambda=10", "ts:alpha=5", "ts:alpha=20")
VARIANTS = (
    "ts:exact",
    "ts:mean",
    "ts:mean,lambda=10",
    "ts:lambda=100",
    "ts:tau=0.1nn",
    "ts:rel=0.5",
    "ts:mean,rel=0.5",
)
CONTROL = ("ts:lambda=1e-4",)

#: --plan name -> [(task, setting, methods)].
PLANS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "core": [
        ("gsm8k", "single", CORE),
        ("bbh", "single", CORE),
        ("bbh", "multi", CORE),
        ("gsm8k", "multi", CORE),
    ],
    "sweep": [("gsm8k", "single", SWEEP)],
    "variants": [("gsm8k", "single", VARIANTS), ("bbh", "multi", VARIANTS)],
    "control": [("gsm8k", "single", CONTROL), ("bbh", "multi", CONTROL)],
}

CRITERION = (
    "exact target match on every training example, read from the training forward pass "
    "(argmax = target token at every target position, end-of-turn included) at the start of "
    "step t+1; steps = t, the number of optimiser updates before it first holds"
)


# --------------------------------------------------------------------------- one run


def regularizer_value(method: Method, P: torch.Tensor) -> torch.Tensor:
    """The unweighted regulariser of ``method`` on prompt ``P`` (0-d tensor), computed by the
    library's registry entry exactly as the trainer computes it."""
    params = dict(method.params)
    if method.tau_nn is not None:
        params["tau"] = method.tau_nn * prompt_stats(P)["mean_nn_distance"]
    loss, _ = get_regularizer(method.regularizer)(P, **params)
    return loss


def run_one(
    model: Any,
    tokenizer: Any,
    spec: TaskSpec,
    setting: str,
    method_label: str,
    seed: int,
    *,
    lr: float,
    max_steps: int,
    test_n: int,
    source: str | None,
    work: Path,
    verify: bool = True,
    init: str = "normal",
    schedule: str = "constant",
) -> dict[str, Any]:
    """Train one soft prompt until it solves its training rows (or the budget ends).

    ``init`` is one of :data:`paper_bench.PROMPT_INITS` (``normal``: N(0, 0.02^2), the
    paper's; ``sample_vocab`` / ``text``: peft's, with :data:`paper_bench.INIT_TEXTS`) or
    :data:`paper_bench.EXTRA_INITS`. ``schedule``: ``constant`` lr, or ``linear`` decay from
    ``lr`` to 0 over ``max_steps`` updates (the paper's, PROTOCOL 6a).

    Returns the run's record (one JSONL line): ``key``, ``task``, ``setting``, ``k``,
    ``method``, ``seed``, ``lr``, ``max_steps``, ``converged``, ``steps`` (updates before the
    criterion first held; null when censored), ``ce`` (CE at each checked step),
    ``reg`` (weighted regulariser at each update), ``grad_ratio`` (median of
    ``|lambda grad L_reg| / |grad CE|`` over updates; null for CE), ``token_accuracy`` (at the
    last check), ``prompt_start`` / ``prompt_end`` (:func:`paper_bench.prompt_stats`),
    ``topology_start`` / ``topology_end`` (:func:`paper_bench.topo_summary`), ``verify``
    (greedy decoding on the training rows at the final prompt: ``accuracy``, ``exact``),
    ``test`` (``{"n", "accuracy", "max_new_tokens"}`` or null), ``seconds``,
    ``seconds_per_step``, ``prompt_file``, ``status`` (``ok``; ``diverged`` when the CE became
    NaN/inf: training stops there, the run counts as not fitted, its last ``ce`` entry is null
    and the end-prompt fields, the greedy check and the test score are null). ``main`` adds
    ``commit`` and ``dirty`` (``common.provenance``); a run that raises is recorded by
    ``common.failed_record`` instead (``status: "failed"``, ``error``).
    """
    from hf_tsprompt.evaluation import evaluate_model
    from hf_tsprompt.prompts import prompt_matrix, prompt_parameters

    method = METHODS[method_label]
    k = SETTINGS[setting]
    task, train_rows, test_rows = task_rows(
        spec, tokenizer, k=k, seed=seed, n_test=test_n, source=source
    )
    batch = train_batch(tokenizer, task, train_rows, next(model.parameters()).device)
    seed_prompt(
        model, seed, init, std=INIT_STD, tokenizer=tokenizer, init_text=INIT_TEXTS.get(spec.key)
    )
    params = prompt_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS)
    if schedule not in ("constant", "linear"):
        raise ValueError(f"schedule must be 'constant' or 'linear', got {schedule!r}")
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / max_steps))
        if schedule == "linear"
        else None
    )
    start_prompt = prompt_matrix(model).detach().clone()
    ces: list[float] = []
    regs: list[float] = []
    ratios: list[float] = []
    steps: int | None = None
    diverged = False
    token_acc = 0.0
    t0 = time.perf_counter()
    model.train()
    for t in range(max_steps + 1):
        last = t == max_steps
        with torch.set_grad_enabled(not last):
            out = prompt_forward(model, batch)
        ce_value = float(out.ce.detach())
        if not math.isfinite(ce_value):  # diverged: it can never fit, and NaN would spread
            diverged = True
            ces.append(None)
            break
        ces.append(round(ce_value, 5))
        token_acc = out.token_accuracy
        if bool(out.example_correct.all()):
            steps = t
            break
        if last:
            break
        P = prompt_matrix(model)
        if method.rel_weight is not None:
            # The weight that gives the regulariser rel_weight x the CE gradient's norm.
            out.ce.backward()
            g_ce = params[0].grad.detach().clone()
            raw = regularizer_value(method, P)
            (g_raw,) = torch.autograd.grad(raw, params[0])
            weight = method.rel_weight * float(g_ce.norm() / g_raw.norm().clamp_min(1e-30))
            params[0].grad.add_(g_raw, alpha=weight)
            regs.append(weight * float(raw.detach()))
            ratios.append(float((weight * g_raw).norm() / g_ce.norm().clamp_min(1e-30)))
        else:
            reg = method.weight * regularizer_value(method, P) if method.weight else None
            total = out.ce if reg is None else out.ce + reg
            g_reg = None
            if reg is not None and reg.requires_grad:
                (g_reg,) = torch.autograd.grad(reg, params[0], retain_graph=True, allow_unused=True)
            total.backward()
            g_total = params[0].grad.detach().clone()
            if reg is not None:
                regs.append(float(reg.detach()))
                if g_reg is not None:
                    g_ce = g_total - g_reg
                    ratios.append(float(g_reg.norm() / g_ce.norm().clamp_min(1e-30)))
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    P_end = prompt_matrix(model).detach().clone()
    key = run_key(spec.key, setting, method_label, seed)
    prompt_file = work / "prompts" / (key.replace("|", "__").replace(":", "-") + ".npy")
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(prompt_file, P_end.float().numpy())

    record: dict[str, Any] = {
        "key": key,
        "task": spec.key,
        "task_config": spec.config,
        "setting": setting,
        "k": k,
        "method": method_label,
        "seed": seed,
        "init": init,
        "lr": lr,
        "schedule": schedule,
        "max_steps": max_steps,
        "status": "diverged" if diverged else "ok",
        "converged": steps is not None,
        "steps": steps,
        "ce": ces,
        "reg": [round(r, 8) for r in regs],
        "grad_ratio": statistics.median(ratios) if ratios else None,
        "token_accuracy": token_acc,
        "prompt_start": prompt_stats(start_prompt),
        "prompt_end": None if diverged else prompt_stats(P_end),
        "topology_start": topo_summary(start_prompt),
        "topology_end": None if diverged else topo_summary(P_end),
        "verify": None,
        "test": None,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, len(ces)), 3),
        "prompt_file": str(prompt_file),
    }
    with torch.no_grad():
        if verify and not diverged:
            n_target = int((batch["labels"] != -100).sum(dim=1).max())
            res = evaluate_model(
                model,
                tokenizer,
                task,
                train_rows,
                batch_size=10,
                max_new_tokens=n_target + 2,
                progress=False,
            )
            exact = [
                p["generation"].strip() == task.target_text(r).strip()
                for p, r in zip(res.predictions, train_rows, strict=True)
            ]
            record["verify"] = {"accuracy": res.accuracy, "exact": sum(exact) / len(exact)}
        if test_n and not diverged:
            res = evaluate_model(
                model,
                tokenizer,
                task,
                test_rows,
                batch_size=20,
                max_new_tokens=spec.max_new_tokens,
                progress=False,
            )
            record["test"] = {
                "n": res.total,
                "accuracy": res.accuracy,
                "max_new_tokens": spec.max_new_tokens,
            }
    return record


def run_key(task: str, setting: str, method: str, seed: int) -> str:
    return f"{task}|{setting}|{method}|{seed}"


# --------------------------------------------------------------------------- trainer check


def check_trainer(
    model: Any, tokenizer: Any, spec: TaskSpec, source: str | None, *, lr: float, n_steps: int = 3
) -> dict[str, Any]:
    """The first ``n_steps`` losses of :func:`run_one`'s loop and of
    ``TopologicalPromptTrainer`` from the same initial prompt (GSM8K single-sample, seed 0,
    ``ce+ts``): ``{"config", "ours": {"ce", "ts"}, "trainer": {"ce", "ts"},
    "max_abs_diff_ce", "max_abs_diff_ts"}``."""
    from hf_tsprompt.data import TrainCollator, build_train_dataset
    from hf_tsprompt.prompts import prompt_matrix, prompt_parameters
    from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

    method = METHODS["ce+ts"]
    task, train_rows, _ = task_rows(spec, tokenizer, k=1, seed=0, n_test=0, source=source)
    batch = train_batch(tokenizer, task, train_rows)

    seed_prompt(model, 0, std=INIT_STD)
    params = prompt_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS)
    ours_ce, ours_ts = [], []
    model.train()
    for _ in range(n_steps):
        out = prompt_forward(model, batch)
        reg = regularizer_value(method, prompt_matrix(model))
        ours_ce.append(float(out.ce))
        ours_ts.append(float(reg))
        (out.ce + method.weight * reg).backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seed_prompt(model, 0, std=INIT_STD)
    with tempfile.TemporaryDirectory() as tmp:
        args = TopologicalPromptConfig(
            output_dir=tmp,
            per_device_train_batch_size=1,
            max_steps=n_steps,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=WEIGHT_DECAY,
            adam_epsilon=ADAM_EPS,
            max_grad_norm=MAX_GRAD_NORM,
            optim="adamw_torch",
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            ts_regularizer=method.regularizer,
            ts_weight=method.weight,
            # The built-ins' parameters are config fields of their own (ts_tau, ...).
            **{f"ts_{k}": v for k, v in method.params.items()},
        )
        trainer = TopologicalPromptTrainer(
            model=model,
            args=args,
            train_dataset=build_train_dataset(tokenizer, task, train_rows),
            data_collator=TrainCollator(tokenizer),
        )
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss_ce" in h]
    tr_ce = [float(h["loss_ce"]) for h in logs]
    tr_ts = [float(h["loss_ts"]) for h in logs]
    n = min(len(tr_ce), n_steps)
    return {
        "config": f"{spec.key} single-sample, seed 0, ce+ts, lr {lr}, {n_steps} steps",
        "ours": {"ce": ours_ce, "ts": ours_ts},
        "trainer": {"ce": tr_ce, "ts": tr_ts},
        "max_abs_diff_ce": max(abs(a - b) for a, b in zip(ours_ce[:n], tr_ce[:n], strict=True)),
        "max_abs_diff_ts": max(abs(a - b) for a, b in zip(ours_ts[:n], tr_ts[:n], strict=True)),
    }


# --------------------------------------------------------------------------- report


def _quantile(values: list[float], q: float) -> float:
    arr = np.array(values, dtype=float)
    return float(np.quantile(arr, q, method="linear")) if arr.size else math.nan


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _counted(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs every statistic uses: all but the failed ones (those are counted apart)."""
    return [r for r in runs if common.run_status(r) != "failed"]


def _fit_steps(rs: list[dict[str, Any]]) -> dict[int, int | None]:
    """``{seed: steps}`` of one group, None where the run did not fit (censored, diverged)."""
    return {r["seed"]: (r["steps"] if r["converged"] else None) for r in rs}


def per_setting_vs_ce(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method against CE within each (task, setting), paired by seed: the family of
    tests this page makes, with Holm's adjustment over all of them.

    Each entry is ``stats.compare`` (``ratio`` = geometric mean of the per-seed
    ``steps / steps(CE)``, censored runs counted as budget + 1 steps, ``ci_low`` /
    ``ci_high`` its bootstrap 95% interval, ``p`` the Wilcoxon signed-rank p) plus ``task``,
    ``setting``, ``method`` and ``p_holm``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in _counted(runs):
        groups.setdefault((r["task"], r["setting"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for (task, setting, method), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))
    ):
        base = groups.get((task, setting, "ce"))
        if method == "ce" or not base:
            continue
        budget = max(r["max_steps"] for r in rs + base)
        cmp = stats.compare(
            method, f"{task}/{setting}", "ce", _fit_steps(rs), _fit_steps(base), budget
        )
        if cmp["n_pairs"]:
            out.append({"task": task, "setting": setting, "method": method, **cmp})
    for entry, p_holm in zip(out, stats.holm([e["p"] for e in out]), strict=True):
        entry["p_holm"] = p_holm
    return out


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (task, setting, method); see the module docstring for the fields."""
    counted = _counted(runs)
    failed: dict[tuple[str, str, str], int] = {}
    for r in runs:
        if common.run_status(r) == "failed":
            key = (r["task"], r["setting"], r["method"])
            failed[key] = failed.get(key, 0) + 1
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in counted:
        groups.setdefault((r["task"], r["setting"], r["method"]), []).append(r)
    ce_median: dict[tuple[str, str], float] = {}
    for (task, setting, method), rs in groups.items():
        if method == "ce":
            steps = [r["steps"] if r["converged"] else math.inf for r in rs]
            ce_median[(task, setting)] = _quantile(steps, 0.5)
    paired = {(c["task"], c["setting"], c["method"]): c for c in per_setting_vs_ce(runs)}
    out = []
    order = {m: i for i, m in enumerate(METHODS)}
    for (task, setting, method), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))
    ):
        rs = sorted(rs, key=lambda r: r["seed"])
        vals = [float(r["steps"]) if r["converged"] else math.inf for r in rs]
        med, q25, q75 = (_quantile(vals, q) for q in (0.5, 0.25, 0.75))
        base = ce_median.get((task, setting))
        improvement = None
        if base is not None and math.isfinite(base) and base > 0 and math.isfinite(med):
            improvement = 1.0 - med / base
        cmp = paired.get((task, setting, method))
        tests = [r["test"]["accuracy"] for r in rs if r.get("test")]
        verifies = [r["verify"] for r in rs if r.get("verify") and r["converged"]]
        grads = [r["grad_ratio"] for r in rs if r.get("grad_ratio") is not None]
        scored = next((r for r in rs if r.get("test")), None)
        out.append(
            {
                "task": task,
                "setting": setting,
                "method": method,
                "n": len(rs),
                "n_converged": sum(r["converged"] for r in rs),
                "n_diverged": sum(common.run_status(r) == "diverged" for r in rs),
                "n_failed": failed.get((task, setting, method), 0),
                "seeds": [r["seed"] for r in rs],
                "steps": [r["steps"] for r in rs],
                "median": _finite_or_none(med),
                "q25": _finite_or_none(q25),
                "q75": _finite_or_none(q75),
                "censored_stat": not (
                    math.isfinite(med) and math.isfinite(q25) and math.isfinite(q75)
                ),
                "max_steps": max(r["max_steps"] for r in rs),
                "improvement_vs_ce": improvement,
                "paired_ratio": cmp["ratio"] if cmp else None,
                "paired_ci": [cmp["ci_low"], cmp["ci_high"]] if cmp else None,
                "paired_p": cmp["p"] if cmp else None,
                "paired_p_holm": cmp["p_holm"] if cmp else None,
                "n_paired": cmp["n_pairs"] if cmp else 0,
                "test_accuracy": {
                    "mean": statistics.fmean(tests) if tests else None,
                    "sd": statistics.stdev(tests) if len(tests) > 1 else None,
                    "n": len(tests),
                    "n_examples": scored["test"]["n"] if scored else None,
                },
                "train_greedy_accuracy": (
                    statistics.fmean(v["accuracy"] for v in verifies) if verifies else None
                ),
                "train_greedy_exact": (
                    statistics.fmean(v["exact"] for v in verifies) if verifies else None
                ),
                "grad_ratio": statistics.median(grads) if grads else None,
                "seconds_per_step": statistics.median(r["seconds_per_step"] for r in rs),
            }
        )
    return out


def pooled_paired(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method against CE, paired by seed: one row per (task, setting) it ran in (the
    family of :func:`per_setting_vs_ce`, with ``p_holm``) and, when it ran in several, a
    pooled row (``scope`` ``"all"``) over all their pairs (a summary of the same data, not a
    further test: ``p_holm`` null).

    ``{"method", "scope", "n_pairs", "groups", "geo_mean_ratio", "ci_low", "ci_high",
    "ratio_q25", "ratio_q75", "faster", "slower", "ties", "wilcoxon_p", "p_holm"}``: the
    geometric mean of the per-seed ``steps / steps(CE)`` (``bench/stats.py``, censored runs
    as budget + 1 steps), its bootstrap 95% interval and quartiles, the pair counts, and the
    two-sided Wilcoxon signed-rank p of the log ratios (null when every pair ties).
    """
    family = per_setting_vs_ce(runs)
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for method in sorted({c["method"] for c in family}, key=lambda m: order.get(m, 99)):
        rows = [c for c in family if c["method"] == method]
        if len(rows) > 1:
            ratios = [x for c in rows for x in c["ratios"].values()]
            out.append(_pooled_row(method, "all", [c["config"] for c in rows], ratios, None))
        for c in rows:
            ratios = list(c["ratios"].values())
            out.append(_pooled_row(method, c["config"], [c["config"]], ratios, c["p_holm"]))
    return out


def _pooled_row(
    method: str, scope: str, groups: list[str], ratios: list[float], p_holm: float | None
) -> dict[str, Any]:
    logs = np.log(ratios)
    lo, hi = stats.bootstrap_ci(ratios)
    return {
        "method": method,
        "scope": scope,
        "n_pairs": len(ratios),
        "groups": groups,
        "geo_mean_ratio": stats.geo_mean(ratios),
        "ci_low": lo,
        "ci_high": hi,
        "ratio_q25": float(np.exp(np.quantile(logs, 0.25))),
        "ratio_q75": float(np.exp(np.quantile(logs, 0.75))),
        "faster": int((logs < 0).sum()),
        "slower": int((logs > 0).sum()),
        "ties": int((logs == 0).sum()),
        "wilcoxon_p": stats.wilcoxon_p(ratios),
        "p_holm": p_holm,
    }


def scale_diagnostics(
    runs: list[dict[str, Any]],
    tau: float = get_regularizer("tsloss").defaults["tau"],
    alpha: float = get_regularizer("tsloss").defaults["alpha"],
) -> dict:
    """Why the paper's TSLoss is weak here: the distance scale against tau and alpha.

    For the CE runs (their saved end prompts) and for fresh N(0, 0.02^2) prompts (the init),
    per (task, setting): the mean off-diagonal and nearest-neighbour distances, the soft
    quantiles delta / zeta of Eq. 4 against the true min / max distance, the fraction of
    pairs on which the repel / attract hinges of Eq. 3 are active, and L_H0 / L_H1, for the
    absolute distances (the paper) and the scale-free ones (``scale="mean"``). Medians over
    runs. ``{"<task>/<setting>": {"init" | "end": {"absolute" | "mean": {...}}}}``.
    """
    from hf_tsprompt.losses import (
        _off_diagonal,
        h0_loss,
        h1_loss,
        pairwise_distances,
        soft_quantile_scales,
    )

    def measures(P: torch.Tensor) -> dict[str, dict[str, float]]:
        out = {}
        D0 = pairwise_distances(P)
        for scale in ("absolute", "mean"):
            D = D0 / _off_diagonal(D0).mean() if scale == "mean" else D0
            d = _off_diagonal(D)
            delta, zeta = soft_quantile_scales(D, alpha)
            nn = D.masked_fill(torch.eye(len(D), dtype=torch.bool), float("inf")).min(1).values
            out[scale] = {
                "mean_distance": float(d.mean()),
                "mean_nn_distance": float(nn.mean()),
                "min_distance": float(d.min()),
                "max_distance": float(d.max()),
                "delta": float(delta),
                "zeta": float(zeta),
                "repel_active": float((d < delta).float().mean()),
                "attract_active": float((d > zeta).float().mean()),
                "l_h0": float(h0_loss(D, tau)),
                "l_h1": float(h1_loss(D, delta, zeta)),
            }
        return out

    def median_of(items: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {
            sc: {k: float(np.median([it[sc][k] for it in items])) for k in items[0][sc]}
            for sc in items[0]
        }

    result: dict[str, Any] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        ok = common.run_status(r) == "ok"
        if ok and r["method"] == "ce" and Path(r.get("prompt_file", "")).is_file():
            groups.setdefault(f"{r['task']}/{r['setting']}", []).append(r)
    for name, rs in sorted(groups.items()):
        ends = [
            measures(torch.from_numpy(np.load(r["prompt_file"], allow_pickle=False))) for r in rs
        ]
        inits = []
        for r in rs:
            torch.manual_seed(r["seed"])
            inits.append(measures(torch.randn(NUM_VIRTUAL_TOKENS, 576) * INIT_STD))
        result[name] = {"init": median_of(inits), "end": median_of(ends), "n_runs": len(rs)}
    return result


def _fmt_steps(g: dict[str, Any]) -> str:
    def f(x: float | None) -> str:
        return ">" + str(g["max_steps"]) if x is None else f"{x:g}"

    return f"{f(g['median'])} [{f(g['q25'])}, {f(g['q75'])}]"


def _fmt_paired(g: dict[str, Any]) -> str:
    if g["paired_ratio"] is None:
        return "baseline" if g["method"] == "ce" else "n/a"
    lo, hi = g["paired_ci"]
    return (
        f"{g['paired_ratio']:.2f} [{lo:.2f}, {hi:.2f}], p {_fmt(g['paired_p'], '.3f')}, "
        f"Holm {_fmt(g['paired_p_holm'], '.2f')}"
    )


def _fmt(x: float | None, spec: str = ".3f", pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:{spec}}%" if pct else f"{x:{spec}}"


def markdown(data: dict[str, Any]) -> str:
    """The Markdown page of the result (tables per task and setting)."""
    p = data["protocol"]
    lines = [
        "# Convergence: steps to 100% training accuracy (paper Tables IV, V, VI)",
        "",
        f"Model {p['model']}, prompt tuning with {p['num_virtual_tokens']} virtual tokens, "
        f"init N(0, {p['init_std']}^2), AdamW lr {p['lr']} (constant, weight decay "
        f"{p['weight_decay']}, grad clip {p['max_grad_norm']}), full batch. "
        f"Single-sample k = {p['settings']['single']}, multi-sample k = "
        f"{p['settings']['multi']}.",
        "",
        f"Criterion: {p['criterion']}.",
        "",
        *([banner, ""] if (banner := common.provenance_banner(data.get("provenance"))) else []),
        "Steps are median [25th, 75th percentile] over seeds; a run that did not converge "
        "within the budget counts as +infinity (shown as >budget). `vs CE` is "
        "1 - median / median(CE) (the paper's 'improvement'); `paired` is the geometric mean "
        "over seeds of steps / steps(CE) for the same seed (same rows, same init; a run that "
        "did not fit counts as budget + 1 steps) with its bootstrap 95% interval, as "
        "everywhere in `bench/` (`bench/stats.py`); `p` is the Wilcoxon signed-rank p and "
        "`Holm` the same p adjusted over every per-setting comparison on this page ("
        + stats.method_note()
        + ") A failed run (an exception of any type, or a run started with no end record: "
        "killed or timed out) is in no statistic and is counted in `failed`; a diverged one "
        "(loss NaN/inf) counts as not fitted. Greedy check: "
        "extracted-answer accuracy and exact-text match of real greedy generation on the "
        "training rows of the converged prompts. ‖∇reg‖/‖∇CE‖: median ratio of the "
        "gradient norms on the prompt.",
        "",
    ]
    groups = data["groups"]
    for task, setting in sorted({(g["task"], g["setting"]) for g in groups}):
        rows = []
        for g in (g for g in groups if g["task"] == task and g["setting"] == setting):
            t = g["test_accuracy"]
            test = (
                f"{100 * t['mean']:.1f} ± {100 * (t['sd'] or 0):.1f} (n={t['n']})"
                if t["mean"] is not None
                else "not scored"
            )
            rows.append(
                [
                    f"`{g['method']}`",
                    f"{g['n_converged']}/{g['n']}",
                    f"{g.get('n_failed', 0)}"
                    + (f" (+{g['n_diverged']} diverged)" if g.get("n_diverged") else ""),
                    _fmt_steps(g),
                    _fmt(g["improvement_vs_ce"], ".1f", pct=True),
                    _fmt_paired(g),
                    test,
                    _fmt(g["train_greedy_accuracy"], ".2f"),
                    _fmt(g["train_greedy_exact"], ".2f"),
                    _fmt(g["grad_ratio"], ".2g"),
                    f"{g['seconds_per_step']:.1f}",
                ]
            )
        n_test = next((g["test_accuracy"]["n_examples"] for g in groups if g["task"] == task), None)
        lines += [
            f"## {task} ({TASKS[task].config or 'main'}), {setting}-sample "
            f"(k = {p['settings'][setting]}, budget {p['max_steps'].get(f'{task}|{setting}')} "
            "steps)",
            "",
            common.markdown_table(
                [
                    "method",
                    "converged",
                    "failed",
                    "steps median [IQR]",
                    "vs CE",
                    "paired [95% CI], p, Holm",
                    f"test acc % ({n_test or 0} ex.)",
                    "greedy train acc",
                    "greedy exact",
                    "‖∇reg‖/‖∇CE‖",
                    "s/step",
                ],
                rows,
            ),
            "",
        ]
    pooled = data.get("pooled") or []
    n_family = sum(1 for x in pooled if x["scope"] != "all")
    if pooled:
        lines += [
            "## Each method against CE, paired by seed (per task and setting, then pooled)",
            "",
            "Ratio = steps / steps(CE) for the same rows and init (a run that did not fit "
            "counts as budget + 1 steps): geometric mean over seeds, its bootstrap 95% "
            "interval and the quartiles of the per-seed ratios; Wilcoxon signed-rank test of "
            f"log ratio = 0 (two-sided). Holm: adjusted over the {n_family} per-setting "
            "comparisons of this table (the family this page tests); a pooled row (`all`) "
            "summarises rows already in the family and is not a further test. With n pairs "
            "the smallest two-sided p is 2 / 2^n (0.0625 at n = 5).",
            "",
            common.markdown_table(
                [
                    "method",
                    "scope",
                    "pairs",
                    "geo-mean ratio [95% CI]",
                    "IQR",
                    "faster / slower / ties",
                    "Wilcoxon p",
                    "Holm p",
                ],
                [
                    [
                        f"`{x['method']}`",
                        x["scope"],
                        x["n_pairs"],
                        f"{x['geo_mean_ratio']:.2f} [{x['ci_low']:.2f}, {x['ci_high']:.2f}]",
                        f"[{x['ratio_q25']:.2f}, {x['ratio_q75']:.2f}]",
                        f"{x['faster']} / {x['slower']} / {x['ties']}",
                        _fmt(x["wilcoxon_p"], ".3f"),
                        _fmt(x["p_holm"], ".3f") if x["scope"] != "all" else "(pooled)",
                    ]
                    for x in pooled
                ],
            ),
            "",
        ]
    scale = data.get("scale") or {}
    if scale:
        lines += [
            "## Distance scale against tau = 0.1 and alpha = 10 (CE runs, medians)",
            "",
            "`init`: fresh N(0, 0.02^2) prompts; `end`: the converged CE prompts. "
            "delta / zeta: the soft quantiles of Eq. 4 (alpha = 10); repel / attract: share "
            "of pairs where the hinge of Eq. 3 is active; `mean` = distances divided by their "
            "mean (library `scale='mean'`).",
            "",
        ]
        rows = []
        for name, g in scale.items():
            for when in ("init", "end"):
                for sc in ("absolute", "mean"):
                    m = g[when][sc]
                    rows.append(
                        [
                            name,
                            when,
                            sc,
                            f"{m['mean_distance']:.3g}",
                            f"{m['mean_nn_distance']:.3g}",
                            f"{m['min_distance']:.3g} / {m['max_distance']:.3g}",
                            f"{m['delta']:.3g} / {m['zeta']:.3g}",
                            f"{100 * m['repel_active']:.1f}% / {100 * m['attract_active']:.1f}%",
                            f"{m['l_h0']:.2e}",
                            f"{m['l_h1']:.2e}",
                        ]
                    )
        lines += [
            common.markdown_table(
                [
                    "runs",
                    "prompt",
                    "distances",
                    "mean D",
                    "mean NN",
                    "min / max",
                    "delta / zeta",
                    "repel / attract active",
                    "L_H0",
                    "L_H1",
                ],
                rows,
            ),
            "",
        ]
    lines += ["## Methods", ""]
    for label, m in data["methods"].items():
        lines.append(f"- `{label}`: {m['description']}")
    tc = data.get("trainer_check")
    if tc:
        lines += [
            "",
            "## This loop vs TopologicalPromptTrainer",
            "",
            f"{tc['config']}: CE per step ours {tc['ours']['ce']}, trainer "
            f"{tc['trainer']['ce']} (max |diff| {tc['max_abs_diff_ce']:.2e}); TSLoss ours "
            f"{tc['ours']['ts']}, trainer {tc['trainer']['ts']} (max |diff| "
            f"{tc['max_abs_diff_ts']:.2e}).",
        ]
    if data.get("provenance"):
        lines += ["", common.provenance_markdown(data["provenance"])]
    lines += ["", common.environment_markdown(data["meta"], data.get("load"))]
    return "\n".join(lines)


def write_report(out: Path, runs_file: Path, meta: dict[str, Any], extra: dict[str, Any]) -> None:
    runs = read_runs(runs_file)
    prev = out / "convergence.json"
    previous = json.loads(prev.read_text()) if prev.is_file() else {}
    trainer_check = extra.get("trainer_check") or previous.get("trainer_check")
    # The scale table reads the CE runs' saved prompts, which live in --work (outside the
    # repository): where they are gone, keep the previous page's group rather than shrink it.
    scale = scale_diagnostics(runs)
    for name, group in (previous.get("scale") or {}).items():
        if group.get("n_runs", 0) > scale.get(name, {}).get("n_runs", 0):
            scale[name] = group
    data = {
        "meta": meta,
        "load": extra.get("load"),
        "protocol": extra["protocol"],
        "methods": {k: v.to_dict() for k, v in METHODS.items()},
        "groups": aggregate(runs),
        "pooled": pooled_paired(runs),
        "provenance": common.page_provenance(runs, meta),
        "scale": scale,
        "trainer_check": trainer_check,
        "runs_file": str(runs_file),
    }
    common.write_result(out, "convergence", data, markdown(data))


# --------------------------------------------------------------------------- main


def _protocol(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    from paper_bench import GSM8K_MAX_TARGET_TOKENS, GSM8K_MAX_TOTAL_TOKENS

    return {
        "model": model_name,
        "lr": args.lr,
        "optimizer": "AdamW",
        "weight_decay": WEIGHT_DECAY,
        "adam_eps": ADAM_EPS,
        "max_grad_norm": MAX_GRAD_NORM,
        "schedule": "constant",
        "num_virtual_tokens": NUM_VIRTUAL_TOKENS,
        "init_std": INIT_STD,
        "settings": SETTINGS,
        "max_steps": {f"{t}|{s}": v for (t, s), v in _budgets(args).items()},
        "test_n": {f"{t}|{s}": v for (t, s), v in _test_n(args).items()},
        "test_max_new_tokens": {k: v.max_new_tokens for k, v in TASKS.items()},
        "gsm8k_train_rows": (
            f"target <= {GSM8K_MAX_TARGET_TOKENS} tokens and example <= "
            f"{GSM8K_MAX_TOTAL_TOKENS} tokens"
        ),
        "criterion": CRITERION,
    }


def _budgets(args: argparse.Namespace) -> dict[tuple[str, str], int]:
    if args.max_steps is not None:
        return {key: args.max_steps for key in MAX_STEPS}
    return dict(MAX_STEPS)


def _test_n(args: argparse.Namespace) -> dict[tuple[str, str], int]:
    out = dict(TEST_N)
    for item in args.test_n or []:
        name, _, n = item.partition("=")
        task, _, setting = name.partition(":")
        for key in out:
            if key[0] == task and (not setting or key[1] == setting):
                out[key] = int(n)
    return out


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    todo = []
    for plan in args.plan:
        for task, setting, methods in PLANS[plan]:
            if args.tasks and task not in args.tasks:
                continue
            if args.settings and setting not in args.settings:
                continue
            for seed in args.seeds:
                for m in args.methods or methods:
                    todo.append((task, setting, m, seed))
    seen = set()
    return [x for x in todo if not (x in seen or seen.add(x))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", nargs="+", choices=sorted(PLANS), default=["core"])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS))
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--max-steps", type=int, help="one budget for every task and setting")
    parser.add_argument(
        "--test-n",
        nargs="+",
        help="test examples per converged prompt, e.g. bbh=100 gsm8k:single=50",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results (--quick: a temp folder)"
    )
    parser.add_argument("--runs", type=Path, help="JSONL of finished runs (default <out>/...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf_tsprompt_bench/convergence"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--check-trainer", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip the greedy check")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
    args = parser.parse_args(argv)
    args.out = common.output_dir(args.out, args.quick)

    from paper_bench import write_tiny_assets

    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model

    common.single_thread()
    meta = common.run_metadata()
    sources: dict[str, str] = {}
    model_name = "smollm2-135m-instruct"
    if args.quick:
        work = args.out / "quick-work"
        assets = write_tiny_assets(work / "assets")
        model_name, sources = assets["model"], assets["sources"]
        args.work = work
        args.seeds = args.seeds if args.seeds != [0, 1, 2, 3, 4] else [0, 1]
        args.max_steps = args.max_steps or 3
        args.tasks = args.tasks or ["gsm8k", "bbh"]
        args.settings = args.settings or ["single"]
        args.methods = args.methods or ["ce", "ce+ts", "ts:exact"]
        args.test_n = args.test_n or ["bbh=4", "gsm8k=4"]
    runs_file = args.runs or (args.out / "convergence_runs.jsonl")
    protocol = _protocol(args, model_name)
    if args.report_only:
        write_report(args.out, runs_file, meta, {"protocol": protocol})
        print(f"wrote {args.out / 'convergence.md'}")
        return 0

    loaded = load_base_model(model_name)
    model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    for p in model.parameters():
        if not p.requires_grad:
            p.requires_grad_(False)
    extra: dict[str, Any] = {"protocol": protocol}
    with common.LoadMonitor() as load:
        if args.check_trainer:
            tc = check_trainer(
                model, loaded.tokenizer, TASKS["gsm8k"], sources.get("gsm8k"), lr=args.lr
            )
            print(json.dumps(tc, indent=1))
            extra["trainer_check"] = tc
        else:
            done = common.done_keys(read_runs(runs_file))  # failed runs are retried
            budgets, test_n = _budgets(args), _test_n(args)
            todo = [x for x in _plan(args) if run_key(x[0], x[1], x[2], x[3]) not in done]
            print(f"{len(todo)} run(s) to do, {len(done)} already in {runs_file}", flush=True)
            for i, (task, setting, method, seed) in enumerate(todo):
                fields = {"task": task, "setting": setting, "method": method, "seed": seed}
                fields |= {"lr": args.lr, "max_steps": budgets[(task, setting)]}
                rec = common.record_run(
                    runs_file,
                    run_key(task, setting, method, seed),
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
                        lr=args.lr,
                        max_steps=budgets[(task, setting)],
                        test_n=test_n[(task, setting)],
                        source=sources.get(task),
                        work=args.work,
                        verify=not args.no_verify,
                    ),
                )
                if rec is None:
                    continue
                test = rec["test"]["accuracy"] if rec["test"] else None
                print(
                    f"[{i + 1}/{len(todo)}] {rec['key']}: steps {rec['steps']} "
                    f"(converged {rec['converged']}), {rec['seconds']:.0f}s, "
                    f"verify {rec['verify']}, test {test}, grad ratio {rec['grad_ratio']}",
                    flush=True,
                )
    extra["load"] = load.summary()
    write_report(args.out, runs_file, meta, extra)
    print(f"wrote {args.out / 'convergence.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
