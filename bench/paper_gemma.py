"""The paper's protocol on Gemma-3-270M: ``bench/PROTOCOL.md`` section 6a (exploratory).

GSM8K single-sample (k = 1), 20 virtual tokens, AdamW at the paper's lr 5e-5 (weight decay
0.01, linear decay to 0 over the budget), budget 300 updates; CE against CE + TSLoss (the
paper's form), each at the paper's N(0, 0.02^2) init (``normal``) and at an init of real-token
scale (``real_scale``, :func:`paper_bench.real_token_std`), seeds 0-4. One run is
:func:`convergence.run_one` (steps until the training target is reproduced exactly).

Run (both cores: one process per core, disjoint seeds; resumable, one JSONL line a run)::

    OMP_NUM_THREADS=1 taskset -c 0 python bench/paper_gemma.py --seeds 0 1 2
    OMP_NUM_THREADS=1 taskset -c 1 python bench/paper_gemma.py --seeds 3 4
    python bench/paper_gemma.py --report-only
    python bench/paper_gemma.py --quick          # tiny model, seconds (smoke test)

JSON fields: ``meta`` (``common.run_metadata``), ``design`` (the numbers above), ``arms``
(per arm: runs, fitted, median steps with censored = budget + 1, median CE at the start and
end, median target-token accuracy at the end (how close an unfitted prompt came), median
prompt row norm at the start and end (the init's scale, and how far training moved it),
median regulariser gradient share, median seconds per step, mean test accuracy;
``unfitted``, ``token_accuracy_unfitted``, ``ce_end_unfitted``: the runs that did not fit and
their medians; ``train_minutes``: [min, max] of the training loop's minutes per run, from the
records' ``seconds``, test generations not included),
``comparisons`` (per init, CE + TSLoss against CE: ``stats.compare`` fields plus
``ce_end_diff_median``, ``ce_end_lower``, ``ce_end_higher``: the paired final CE, arm minus
CE; exploratory),
``provenance`` (``common.page_provenance``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats
from convergence import run_one
from paper_bench import TASKS, import_common, read_runs

common = import_common()

TASK = "gsm8k"
SETTING = "single"
#: (method of :data:`convergence.METHODS`, init of :func:`paper_bench.seed_prompt`).
ARMS: tuple[tuple[str, str], ...] = (
    ("ce", "normal"),
    ("ce+ts", "normal"),
    ("ce", "real_scale"),
    ("ce+ts", "real_scale"),
)


@dataclass(frozen=True)
class Design:
    """PROTOCOL 6a's numbers (:data:`QUICK` shrinks them for the smoke test)."""

    model: str = "gemma-3-270m"
    lr: float = 5e-5
    schedule: str = "linear"
    budget: int = 300
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_n: int = 20


PAPER = Design()
QUICK = Design(model="", budget=3, seeds=(0, 1), test_n=2)


def arm_label(method: str, init: str) -> str:
    return f"{method}@{init}"


def run_key(arm: str, seed: int) -> str:
    return f"{TASK}|{SETTING}|{arm}|{seed}"


def _steps(r: dict[str, Any]) -> int | None:
    """Steps to fit; a failed or censored run is None (censored)."""
    if common.run_status(r) == "failed" or not r.get("converged"):
        return None
    return int(r["steps"])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]], d: Design) -> dict[str, Any]:
    """Per-arm figures and, per init, CE + TSLoss against CE (paired by seed)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:  # a retried failure replaces the failed record
        latest[r["key"]] = r
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in latest.values():
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = r
    arms: dict[str, Any] = {}
    for method, init in ARMS:
        label = arm_label(method, init)
        rs = list(by_arm.get(label, {}).values())
        ok = [r for r in rs if common.run_status(r) != "failed"]
        steps = [_steps(r) for r in rs]
        ces = [r["ce"] for r in ok if r.get("ce")]
        tests = [r["test"]["accuracy"] for r in ok if r.get("test")]
        unfitted = [r for r in ok if _steps(r) is None]
        minutes = [r["seconds"] / 60 for r in ok if r.get("seconds") is not None]
        arms[label] = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "fitted": sum(s is not None for s in steps),
            "median_steps": _median([d.budget + 1 if s is None else s for s in steps]),
            "ce_start": _median([c[0] for c in ces if c[0] is not None]),
            "ce_end": _median([c[-1] for c in ces if c[-1] is not None]),
            "token_accuracy": _median([r["token_accuracy"] for r in ok if "token_accuracy" in r]),
            "unfitted": len(unfitted),
            "token_accuracy_unfitted": _median(
                [r["token_accuracy"] for r in unfitted if "token_accuracy" in r]
            ),
            "ce_end_unfitted": _median(
                [r["ce"][-1] for r in unfitted if r.get("ce") and r["ce"][-1] is not None]
            ),
            "train_minutes": [min(minutes), max(minutes)] if minutes else None,
            "norm_start": _median([r["prompt_start"]["mean_norm"] for r in ok]),
            "norm_end": _median([r["prompt_end"]["mean_norm"] for r in ok if r.get("prompt_end")]),
            "grad_ratio": _median([r["grad_ratio"] for r in ok if r.get("grad_ratio")]),
            "seconds_per_step": _median([r["seconds_per_step"] for r in ok]),
            "test_accuracy": statistics.fmean(tests) if tests else None,
        }
    comparisons = []
    for init in dict.fromkeys(i for _, i in ARMS):
        arm, base = arm_label("ce+ts", init), arm_label("ce", init)
        a, b = by_arm.get(arm, {}), by_arm.get(base, {})
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        c = stats.compare(
            f"tsloss@{init}",
            arm,
            base,
            {s: _steps(a[s]) for s in seeds},
            {s: _steps(b[s]) for s in seeds},
            d.budget,
        )
        comparisons.append(c | _final_ce_pairs(a, b, seeds))
    return {"arms": arms, "comparisons": comparisons}


def _final_ce_pairs(
    arm: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], seeds: list[int]
) -> dict[str, Any]:
    """How the final CE of the arm compares with the baseline's, seed by seed: where neither
    fits within the budget the steps tie, and this says whether the arm got any closer."""
    diffs = [
        arm[s]["ce"][-1] - base[s]["ce"][-1]
        for s in seeds
        if arm[s].get("ce")
        and base[s].get("ce")
        and None not in (arm[s]["ce"][-1], base[s]["ce"][-1])
    ]
    return {
        "ce_end_diff_median": _median(diffs),
        "ce_end_lower": sum(x < 0 for x in diffs),
        "ce_end_higher": sum(x > 0 for x in diffs),
    }


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(res: dict[str, Any]) -> str:
    d = res["design"]
    lines = [
        "# The paper's protocol on Gemma-3-270M (exploratory)",
        "",
        "Protocol: [`bench/PROTOCOL.md`](../PROTOCOL.md) section 6a, committed before these "
        f"runs. Model `{d['model'] or 'tiny (quick)'}`, GSM8K single-sample, 20 virtual tokens, "
        f"AdamW lr {d['lr']:g} ({d['schedule']} to 0), weight decay 0.01, budget {d['budget']} "
        f"updates, seeds {', '.join(map(str, d['seeds']))}. Exploratory: no test here is "
        "corrected or used for a claim, and 5 pairs cannot reach p < 0.0625.",
        "",
        "## Arms",
        "",
    ]
    rows = [
        [
            f"`{arm}`",
            f"{a['fitted']} / {a['runs']}" + (f" ({a['failed']} failed)" if a["failed"] else ""),
            _fmt(a["median_steps"], "g"),
            f"{_fmt(a['ce_start'])} -> {_fmt(a['ce_end'])}",
            _fmt(a["token_accuracy"], ".2f"),
            f"{a['unfitted']}: {_fmt(a['token_accuracy_unfitted'], '.2f')}, "
            f"CE {_fmt(a['ce_end_unfitted'])}",
            f"{_fmt(a['norm_start'])} -> {_fmt(a['norm_end'])}",
            _fmt(a["grad_ratio"]),
            _fmt(a["seconds_per_step"], ".2f"),
            "n/a"
            if not a["train_minutes"]
            else f"{a['train_minutes'][0]:.1f}-{a['train_minutes'][1]:.1f}",
            "n/a" if a["test_accuracy"] is None else f"{100 * a['test_accuracy']:.1f}%",
        ]
        for arm, a in res["arms"].items()
    ]
    lines.append(
        common.markdown_table(
            [
                "arm",
                "fitted / runs",
                f"median steps (censored = {d['budget'] + 1})",
                "CE start -> end (median)",
                "target-token accuracy at the end (median, all runs)",
                "not fitted: runs, their median target-token accuracy and CE at the end",
                "prompt row norm start -> end",
                "reg. gradient / CE gradient",
                "s / step",
                "training loop, min per run (range; test generations not timed)",
                f"test accuracy ({d['test_n']} rows)",
            ],
            rows,
        )
    )
    lines += ["", "## CE + TSLoss against CE, paired by seed (exploratory)", ""]
    lines += [stats.method_note(), ""]
    if not res["comparisons"]:
        lines.append("No seed has both arms yet.")
    else:
        lines.append(
            common.markdown_table(
                [
                    "init",
                    "pairs",
                    "ratio [95% CI]",
                    "faster / slower / tie",
                    "p (Wilcoxon)",
                    "final CE, arm - CE (median)",
                    "final CE lower / higher",
                ],
                [
                    [
                        c["name"].split("@", 1)[1],
                        str(c["n_pairs"]),
                        f"{c['ratio']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]",
                        f"{c['faster']}/{c['slower']}/{c['ties']}",
                        _fmt(c["p"], ".3g"),
                        _fmt(c["ce_end_diff_median"], "+.3g"),
                        f"{c['ce_end_lower']} / {c['ce_end_higher']}",
                    ]
                    for c in res["comparisons"]
                ],
            )
        )
    lines += ["", common.provenance_markdown(res["provenance"]), ""]
    lines.append(common.environment_markdown(res["meta"], res["meta"].get("load")))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs", type=Path, help="JSONL of finished runs (default <out>/...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf_tsprompt_bench/paper_gemma"))
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
    args = parser.parse_args(argv)
    args.out = common.output_dir(args.out, args.quick)

    from paper_bench import write_tiny_assets

    from hf_tsprompt.fsutil import atomic_write_json, atomic_write_text
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model

    common.single_thread()
    d = QUICK if args.quick else PAPER
    sources: dict[str, str] = {}
    model_name = d.model
    if args.quick:
        work = args.out / "quick-work"
        assets = write_tiny_assets(work / "assets")
        model_name, sources, args.work = assets["model"], assets["sources"], work
    meta = common.run_metadata()
    runs_file = args.runs or (args.out / "paper_gemma_runs.jsonl")
    seeds = args.seeds or list(d.seeds)
    with common.LoadMonitor() as load:
        done = common.done_keys(read_runs(runs_file))
        todo = [
            (method, init, seed)
            for seed in ([] if args.report_only else seeds)
            for method, init in ARMS
            if run_key(arm_label(method, init), seed) not in done
        ]
        print(f"{len(todo)} run(s) to do, {len(done)} done in {runs_file}", flush=True)
        if todo:
            loaded = load_base_model(model_name, device=args.device)
            model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=20)
        for i, (method, init, seed) in enumerate(todo):
            arm = arm_label(method, init)
            key = run_key(arm, seed)
            fields = {
                "stage": "paper-gemma",
                "task": TASK,
                "arm": arm,
                "method": method,
                "init": init,
                "lr": d.lr,
                "seed": seed,
                "setting": SETTING,
                "max_steps": d.budget,
                "model": d.model or "tiny",
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
                    TASKS[TASK],
                    SETTING,
                    method,
                    seed,
                    lr=d.lr,
                    max_steps=d.budget,
                    test_n=d.test_n,
                    source=sources.get(TASK),
                    work=args.work / arm.replace("@", "_"),
                    init=init,
                    schedule=d.schedule,
                ),
            )
            if rec is None:
                continue
            print(
                f"[{i + 1}/{len(todo)}] {key}: steps {rec['steps']} ({rec['seconds']:.0f}s)",
                flush=True,
            )
    meta["load"] = load.summary()
    runs = read_runs(runs_file)
    res = {
        "meta": meta,
        "design": asdict(d) | {"seeds": list(d.seeds), "arms": [arm_label(*a) for a in ARMS]},
        **summarise(runs, d),
        "provenance": common.page_provenance(runs, meta),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_file = args.out / "paper_gemma.json"
    atomic_write_json(json_file, res)
    atomic_write_text(args.out / "paper_gemma.md", markdown(res))
    print(f"wrote {json_file} and paper_gemma.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
