"""Correlation benchmark: the paper's Table II protocol, plus the paper's figures.

What it measures: across the topology snapshots of the accuracy benchmark's runs
(``bench/accuracy.py``: every run folder records, at each snapshot, the persistence of the
prompt and its accuracy on held-out test rows), Spearman's rho and a Mann-Whitney U test
between each topology metric and accuracy (:func:`hf_tsprompt.analysis.correlation_table`:
the low- vs high-accuracy halves of the pooled snapshots, the split Table II's numbers imply).
One table per task, one pooled over tasks, and one per task with the snapshot at step 0
left out (at step 0 every prompt is the untrained N(0, 0.02^2) draw, which by itself ties
"small lifespans" to "low accuracy").

Figures: ``--figures`` draws, through the ``hf-tsprompt plot`` command, the paper's figures
that these runs can feed, and copies them into ``<out>/figures/``:

- one run (TSLoss, BBH, seed 0): Fig. 1b/1d (diagrams, barcodes), 1a/1c and 10/11 (counts
  and lifespans over training), 2a/2b (density, entropy), 7 (distance heatmaps), 8/9 (PCA,
  t-SNE), the loss and the accuracy at the snapshots;
- soft prompt vs + L2 vs TSLoss (BBH and MMLU, seed 0): Fig. 6 (topology curves), Fig. 4
  (losses), Figs. 8/9 (PCA, t-SNE per run), entropy and accuracy;
- from the convergence runs (``bench/convergence.py``'s JSONL; minimal run folders with a
  ``trainer_state.json`` are written for them): Fig. 4 (CE vs CE + TSLoss) and Fig. 5 (the
  lambda_ts sweep) on GSM8K single-sample, seed 0.

Run::

    python bench/correlation.py --figures
    python bench/correlation.py --quick --out /tmp/corr    # tiny model, seconds

Output: ``<out>/correlation.json`` and ``correlation.md``. JSON fields:

- ``meta``: ``command``, ``machine``, ``versions``, ``git`` (commit, dirty), ``started``
  (``common.run_metadata``);
- ``source``: the accuracy runs file read;
- ``tables``: ``{name: correlation_table(...)}`` with ``name`` one of ``<task>``,
  ``<task> (step > 0)``, ``pooled``, ``pooled (step > 0)``; each table has ``n_pairs``,
  ``runs``, ``split`` and ``metrics.<metric>.{label, spearman_rho, spearman_p,
  mannwhitney_u, mannwhitney_p, note}`` (see ``hf_tsprompt.analysis.JSON_FIELDS``);
- ``paper``: Table II of the paper (rho, p, U, p per metric);
- ``figures``: ``{file name: what it shows}`` of the PNGs copied into ``<out>/figures/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_bench import import_common, read_runs

from hf_tsprompt.metrics import format_value  # the library's Table II number formats
from hf_tsprompt.runs import RECORDS_FILE, TRAINER_STATE_FILE, records_file

common = import_common()

#: Table II of the paper: metric -> (rho, p, U, p); None = N/A.
PAPER_TABLE_II: dict[str, tuple[float | None, float | None, float, float]] = {
    "h0_count": (None, None, 2664.5, 1.0),
    "h1_count": (-0.324, 6.60e-5, 3600.5, 9.7e-5),
    "h0_mean_lifespan": (0.866, 3.40e-45, 0.0, 1.9e-25),
    "h1_mean_lifespan": (0.018, 0.826, 2608.0, 0.827),
    "entropy": (-0.809, 5.10e-35, 5153.0, 2.1e-22),
}


def _runs_by_task(runs_file: Path) -> dict[str, dict[str, dict[int, Path]]]:
    """``{task: {method: {seed: run_dir}}}`` of training runs with a topology record."""
    out: dict[str, dict[str, dict[int, Path]]] = {}
    for rec in read_runs(runs_file):
        if common.run_status(rec) == "failed":  # no run folder: counted on the accuracy page
            continue
        run = Path(rec["run_dir"])
        if rec.get("snapshots") and records_file(run).is_file():
            out.setdefault(rec["task"], {}).setdefault(rec["method"], {})[rec["seed"]] = run
    return out


def _without_first(runs: list[Path], scratch: Path) -> list[Path]:
    """Copies of ``runs`` whose records keep only snapshots after step 0 (topology only)."""
    out = []
    for i, run in enumerate(runs):
        dst = scratch / f"r{i}" / "topology"
        dst.mkdir(parents=True, exist_ok=True)
        lines = records_file(run).read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] > 0]
        (dst / RECORDS_FILE).write_text("\n".join(kept) + "\n", encoding="utf-8")
        out.append(dst.parent)
    return out


def tables(by_task: dict[str, dict[str, dict[int, Path]]], scratch: Path) -> dict[str, Any]:
    """Every correlation table (see the module docstring); a group with fewer than three
    snapshots carrying an accuracy is left out."""
    from hf_tsprompt.analysis import correlation_table
    from hf_tsprompt.errors import DataError

    groups: dict[str, list[Path]] = {}
    for task, methods in sorted(by_task.items()):
        groups[task] = [run for seeds in methods.values() for run in seeds.values()]
    groups["pooled"] = [run for runs in list(groups.values()) for run in runs]
    out: dict[str, Any] = {}
    for name, runs in groups.items():
        if not runs:
            continue
        for label, use in ((name, runs), (f"{name} (step > 0)", None)):
            try:
                if use is None:
                    use = _without_first(runs, scratch / label.replace(" ", "_"))
                table = correlation_table(use)
            except DataError as err:
                print(f"{label}: skipped ({err})")
                continue
            table["runs"] = [str(r) for r in runs]
            out[label] = table
    return out


# --------------------------------------------------------------------------- figures


def export_convergence_runs(conv_runs: Path, keys: list[str], dest: Path) -> dict[str, Path]:
    """Minimal run folders (``trainer_state.json`` with ``loss``, ``loss_ce``, ``loss_ts``
    per step) for the convergence runs ``keys``, so ``hf-tsprompt plot`` can draw their
    losses. Returns ``{key: folder}`` for the keys found."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from convergence import METHODS as CONV_METHODS

    records = {rec["key"]: rec for rec in read_runs(conv_runs)}
    out = {}
    for key in keys:
        rec = records.get(key)
        if rec is None or common.run_status(rec) != "ok":  # failed / diverged: no loss curve
            continue
        weight = CONV_METHODS[rec["method"]].weight
        history = []
        for t, ce in enumerate(rec["ce"]):
            entry: dict[str, Any] = {"step": t + 1, "loss_ce": ce}
            reg = rec["reg"][t] if t < len(rec["reg"]) else None
            entry["loss"] = ce + (reg or 0.0)
            if reg is not None and weight:
                entry["loss_ts"] = reg / weight
            history.append(entry)
        folder = dest / key.replace("|", "_").replace(":", "-").replace("=", "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TRAINER_STATE_FILE).write_text(json.dumps({"log_history": history}))
        out[key] = folder
    return out


def _plot(run_dirs: list[Path], labels: list[str] | None, out: Path) -> list[Path]:
    """``hf-tsprompt plot RUN... [--labels ...] --out OUT``; the PNGs it reports."""
    exe = Path(sys.executable).with_name("hf-tsprompt")
    cmd = [str(exe) if exe.is_file() else "hf-tsprompt", "plot", *map(str, run_dirs)]
    if labels:
        cmd += ["--labels", *labels]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"plot failed ({' '.join(cmd)}): {done.stderr[-500:]}")
        return []
    return [Path(line) for line in done.stdout.splitlines() if line.endswith(".png")]


FIGURE_NOTES: dict[str, str] = {
    "diagrams": "Fig. 1b: persistence diagrams at snapshots",
    "barcodes": "Fig. 1d: persistence barcodes at snapshots",
    "topology_curves": "Figs. 1a/1c, 6, 10, 11: feature counts and mean lifespans",
    "entropy": "Fig. 2b: persistence entropy over training",
    "density": "Fig. 2a: H1 density vs point-cloud density",
    "heatmaps": "Fig. 7: pairwise distance heatmaps",
    "pca": "Fig. 8: prompt vectors, PCA",
    "tsne": "Fig. 9: prompt vectors, t-SNE",
    "loss": "Figs. 4/5: total, CE and TS loss",
    "accuracy": "test accuracy at the snapshots (Table II pairs)",
}


def draw_figures(
    by_task: dict[str, dict[str, dict[int, Path]]],
    conv_runs: Path,
    out: Path,
    scratch: Path,
) -> dict[str, str]:
    """Draw the figures (module docstring) and copy them to ``<out>/figures/``."""
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}

    def keep(paths: list[Path], prefix: str, what: str) -> None:
        for p in paths:
            name = f"{prefix}_{p.name}"
            shutil.copyfile(p, fig_dir / name)
            notes[name] = f"{FIGURE_NOTES.get(p.stem, p.stem)}; {what}"

    single = by_task.get("bbh", {}).get("tsloss", {}).get(0)
    if single is not None:
        keep(_plot([single], None, scratch / "single"), "bbh_tsloss_seed0", "BBH, TSLoss, seed 0")
    for task in ("bbh", "mmlu", "gsm8k"):
        methods = by_task.get(task, {})
        chosen = [
            (m, methods[m][0]) for m in ("soft-prompt", "l2", "tsloss") if 0 in methods.get(m, {})
        ]
        if len(chosen) >= 2:
            paths = _plot([r for _, r in chosen], [m for m, _ in chosen], scratch / f"cmp_{task}")
            keep(paths, f"{task}_methods_seed0", f"{task}, soft prompt / + L2 / TSLoss, seed 0")
    conv = export_convergence_runs(
        conv_runs,
        [
            "gsm8k|single|ce|0",
            "gsm8k|single|ce+ts|0",
            "gsm8k|single|ts:lambda=0.1|0",
            "gsm8k|single|ts:lambda=0.5|0",
            "gsm8k|single|ts:lambda=10|0",
            "bbh|multi|ce|0",
            "bbh|multi|ce+ts|0",
        ],
        scratch / "conv",
    )
    fig4 = [k for k in ("gsm8k|single|ce|0", "gsm8k|single|ce+ts|0") if k in conv]
    if len(fig4) == 2:
        paths = _plot([conv[k] for k in fig4], ["CE", "CE + TSLoss"], scratch / "fig4")
        keep(paths, "fig4_gsm8k_single_seed0", "Fig. 4: GSM8K single-sample, seed 0 (convergence)")
    fig4b = [k for k in ("bbh|multi|ce|0", "bbh|multi|ce+ts|0") if k in conv]
    if len(fig4b) == 2:
        paths = _plot([conv[k] for k in fig4b], ["CE", "CE + TSLoss"], scratch / "fig4b")
        keep(paths, "fig4_bbh_multi_seed0", "Fig. 4: BBH multi-sample, seed 0 (convergence)")
    sweep = [
        ("gsm8k|single|ce|0", "λ=0"),
        ("gsm8k|single|ts:lambda=0.1|0", "λ=0.1"),
        ("gsm8k|single|ts:lambda=0.5|0", "λ=0.5"),
        ("gsm8k|single|ce+ts|0", "λ=1"),
        ("gsm8k|single|ts:lambda=10|0", "λ=10"),
    ]
    sweep = [(k, lab) for k, lab in sweep if k in conv]
    if len(sweep) >= 3:
        paths = _plot([conv[k] for k, _ in sweep], [lab for _, lab in sweep], scratch / "fig5")
        keep(paths, "fig5_gsm8k_single_lambda_seed0", "Fig. 5: lambda_ts sweep, GSM8K single")
    return notes


# --------------------------------------------------------------------------- report


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Topology vs accuracy (paper Table II protocol)",
        "",
        "Pairs: every topology snapshot of the accuracy benchmark's runs (`bench/accuracy.py`; "
        "all methods and seeds of a task), each with its accuracy on held-out test rows. "
        "Spearman: rho of the metric against accuracy; Mann-Whitney U: the metric in the "
        "low-accuracy half of the snapshots against the high-accuracy half (U of the low half; "
        "`hf_tsprompt.analysis.correlation_table`). `(step > 0)`: the untrained step-0 "
        "snapshots left out. The paper's values (Gemma-2B-IT, GSM8K multi-sample, 146 "
        "snapshots) are in the last columns.",
        "",
    ]
    for name, table in data["tables"].items():
        split = table["split"]
        rows = []
        for key, row in table["metrics"].items():
            paper = PAPER_TABLE_II.get(key)
            rows.append(
                [
                    row["label"].replace("|", "\\|"),
                    format_value("spearman_rho", row["spearman_rho"]),
                    format_value("spearman_p", row["spearman_p"]),
                    format_value("mannwhitney_u", row["mannwhitney_u"]),
                    format_value("mannwhitney_p", row["mannwhitney_p"]),
                    "" if paper is None else format_value("spearman_rho", paper[0]),
                    "" if paper is None else format_value("spearman_p", paper[1]),
                    "" if paper is None else format_value("mannwhitney_u", paper[2]),
                    "" if paper is None else format_value("mannwhitney_p", paper[3]),
                ]
            )
        lines += [
            f"## {name}: {table['n_pairs']} snapshots from {len(table['runs'])} runs",
            "",
            f"Halves: {split['n_low']} snapshots with accuracy <= "
            f"{split['low_accuracy_max']:.3g} vs {split['n_high']} with accuracy >= "
            f"{split['high_accuracy_min']:.3g}.",
            "",
            common.markdown_table(
                ["metric", "ρ", "p", "U", "p", "paper ρ", "paper p", "paper U", "paper p"],
                rows,
            ),
            "",
        ]
    if data["figures"]:
        lines += ["## Figures", ""]
        for name, what in data["figures"].items():
            lines.append(f"- [{name}](figures/{name}): {what}")
        lines.append("")
    lines += [common.environment_markdown(data["meta"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results (--quick: a temp folder)"
    )
    parser.add_argument("--runs", type=Path, help="accuracy runs JSONL (default <out>/...)")
    parser.add_argument(
        "--convergence-runs", type=Path, help="default <out>/convergence_runs.jsonl"
    )
    parser.add_argument("--figures", action="store_true", help="draw and copy the figures")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
    args = parser.parse_args(argv)
    args.out = common.output_dir(args.out, args.quick)

    meta = common.run_metadata()
    if args.quick:
        import accuracy

        work = args.out / "quick-work"
        accuracy.main(["--quick", "--out", str(work / "acc")])
        args.runs = work / "acc" / "accuracy_runs.jsonl"
        args.figures = True
    runs_file = args.runs or (args.out / "accuracy_runs.jsonl")
    conv_runs = args.convergence_runs or (args.out / "convergence_runs.jsonl")
    by_task = _runs_by_task(runs_file)
    previous = args.out / "correlation.json"
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        data = {
            "meta": meta,
            "source": str(runs_file),
            "tables": tables(by_task, scratch),
            "paper": {
                k: dict(zip(("rho", "p", "U", "p_u"), v, strict=True))
                for k, v in PAPER_TABLE_II.items()
            },
            "figures": (
                draw_figures(by_task, conv_runs, args.out, scratch)
                if args.figures
                else (json.loads(previous.read_text())["figures"] if previous.is_file() else {})
            ),
        }
    common.write_result(args.out, "correlation", data, markdown(data))
    print(f"wrote {args.out / 'correlation.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
