"""One self-contained HTML report of one or more runs (``hf-tsprompt report RUN_DIR...``).

For each run: its configuration (the resolved recipe and the settings table of the card),
accuracy before and after training, loss curves, topology curves, barcodes and persistence
diagrams, distance heatmaps, PCA and t-SNE of the prompt, and the explain table
(:mod:`hf_tsprompt.explain`). With several runs a
comparison section comes first: a table with one column per run, the recipe keys that differ,
the overlay figures of :func:`hf_tsprompt.viz.plots.plot_runs`, and barcodes and heatmaps side by
side.

**The card's tables.** The settings, results, topology, structural-evolution and logged-metric
tables are the model card's, built by :mod:`hf_tsprompt.cards` (the same rows, chosen from the
metric registry when the report is built), here as HTML.

**Self-contained.** The figures are drawn by :mod:`hf_tsprompt.viz.plots` into a temporary folder
and embedded as ``data:image/png;base64`` URIs; the style is inline; there is no script and no
external link, so the file opens offline, from an e-mail or a CI artifact alike. Every string
read from a run folder (run and task names, recipe values, token texts) goes through
``html.escape``: a run folder is user input.

**Read-only.** Nothing is written into the run folders: an ``explain.json`` already there (and
newer than the run's records) is reused, otherwise the explanation is computed in memory (the
base model's embeddings are loaded once per distinct base model).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..cards import evolution_rows, result_rows, settings_rows, topology_rows, training_rows
from ..errors import ConfigError, MissingFileError, RunFolderError
from ..fsutil import atomic_write_text, read_json_dict
from ..metrics import (
    FIG_ACCURACY,
    FIG_BARCODES,
    FIG_DENSITY,
    FIG_DIAGRAMS,
    FIG_ENTROPY,
    FIG_EVOLUTION,
    FIG_HEATMAPS,
    FIG_LOSS,
    FIG_PCA,
    FIG_TOPOLOGY_CURVES,
    FIG_TSNE,
    MISSING,
    FigureSpec,
    format_number,
    format_value,
    metric_label,
    table_keys,
)
from ..records import evolution_stats, read_records
from ..runs import REPORT_FILE, eval_paths, read_recipe_text, read_run, records_file

__all__ = ["FIGURE_SECTIONS", "build_report"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Per-run sections made of figures: (id suffix, heading, figures of :mod:`hf_tsprompt.metrics`),
#: each captioned with its :attr:`~hf_tsprompt.metrics.FigureSpec.caption`.
FIGURE_SECTIONS: tuple[tuple[str, str, tuple[FigureSpec, ...]], ...] = (
    ("loss", "Loss curves", (FIG_LOSS,)),
    ("topology", "Topology curves", (FIG_TOPOLOGY_CURVES, FIG_ENTROPY, FIG_DENSITY, FIG_EVOLUTION)),
    ("barcodes", "Barcodes and persistence diagrams", (FIG_BARCODES, FIG_DIAGRAMS)),
    ("heatmaps", "Distance heatmaps", (FIG_HEATMAPS,)),
    ("embedding", "PCA and t-SNE", (FIG_PCA, FIG_TSNE)),
)
#: The overlays of :func:`hf_tsprompt.viz.plots.plot_runs` in the comparison section.
COMPARE_FIGURES: tuple[FigureSpec, ...] = (
    FIG_ACCURACY,
    FIG_LOSS,
    FIG_TOPOLOGY_CURVES,
    FIG_ENTROPY,
    FIG_DENSITY,
    FIG_EVOLUTION,
    FIG_PCA,
    FIG_TSNE,
)

#: Per-run figures shown side by side in the comparison section.
SIDE_BY_SIDE: tuple[FigureSpec, ...] = (FIG_BARCODES, FIG_HEATMAPS)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 1600px; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 2px solid #ccc; margin-top: 2.5rem; }
h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8rem 0; } figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.grid { display: grid; gap: 1rem; }
.note { color: #8a4b00; } .muted { color: #777; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.85rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; }
nav a { margin-right: 1rem; }
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _fmt(value: Any) -> str:
    """A run.json or recipe value: a float as :func:`~hf_tsprompt.metrics.format_number`
    prints it, a container as JSON, a missing one as :data:`~hf_tsprompt.metrics.MISSING`.
    A metric's value goes through :func:`~hf_tsprompt.metrics.format_value` instead."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, float):
        return format_number(value)
    return str(value)


class _Run:
    """What the report needs from one run folder."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        self.anchor = f"run-{index}"
        self.info = read_run(path, strict=False)
        self.recipe, self.recipe_text = read_recipe_text(path, strict=False)
        if not self.info and not records_file(path).is_file():
            raise RunFolderError(
                f"{path} is not a run folder (no run.json and no topology/records.jsonl); "
                "create one with `hf-tsprompt train RECIPE`."
            )
        self.name = str(self.info.get("name") or self.recipe.get("name") or path.resolve().name)
        self.label = self.name
        self.figures: dict[str, Path] = {}
        self.notes: list[str] = []
        self.explain: Any = None
        self.explain_error: str | None = None
        self._evolution: dict[str, dict[str, Any]] | None = None

    @property
    def evolution(self) -> dict[str, dict[str, Any]]:
        """Mean / max of each step-to-step diagram distance ({} without two snapshots)."""
        if self._evolution is None:
            try:
                self._evolution = evolution_stats(read_records(self.path))
            except MissingFileError:
                self._evolution = {}
        return self._evolution


def _unique_labels(runs: list[_Run], labels: Sequence[str] | None) -> None:
    if labels is not None:
        if len(labels) != len(runs):
            raise ConfigError(f"got {len(labels)} label(s) for {len(runs)} run folder(s).")
        for run, label in zip(runs, labels, strict=True):
            run.label = str(label)
        return
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:  # e.g. the same recipe with two seeds: add the folder
            run.label = f"{run.name} ({run.path.resolve().parent.name}/{run.path.name})"
    labels_now = [r.label for r in runs]
    for run in runs:
        if labels_now.count(run.label) > 1:  # the same folder twice
            run.label = f"{run.label} #{run.index}"


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect the reasons :mod:`hf_tsprompt.viz.plots` logs for figures it skips."""
    messages: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Handler(logging.WARNING)
    plot_logger = logging.getLogger("hf_tsprompt.viz.plots")
    plot_logger.addHandler(handler)
    try:
        yield messages
    finally:
        plot_logger.removeHandler(handler)


def _mpl_label(text: str, limit: int = 40) -> str:
    """A run label for a figure legend: shortened (a long one squeezes the axes away; the
    full name is in the page) and with "$" escaped (matplotlib reads "$...$" as TeX)."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path | None, caption: str, alt: str) -> str:
    if path is None or not path.is_file():
        return f'<p class="muted">{_e(caption)}: not available (see the notes).</p>'
    return (
        f'<figure><img src="{_data_uri(path)}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], num_cols: int = 0) -> str:
    """An HTML table; every cell escaped. The last ``num_cols`` columns are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            cls = ' class="num"' if num_cols and j >= len(row) - num_cols else ""
            cells.append(f"<td{cls}>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --- explain ----------------------------------------------------------------------------------


def _load_explain(run: _Run, vocabs: dict[Any, Any]) -> None:
    """Reuse a fresh ``explain.json``, else compute the explanation (never fails the report)."""
    from ..explain import (  # lazy: explaining loads the base model's embeddings
        EXPLAIN_JSON,
        _base_model_ref,
        _run_method,
        explain_run,
        in_key_value_space,
        load_explain,
        load_vocabulary,
    )

    saved = run.path / EXPLAIN_JSON
    records = records_file(run.path)
    try:
        if saved.is_file() and (
            not records.is_file() or saved.stat().st_mtime >= records.stat().st_mtime
        ):
            run.explain = load_explain(run.path)
            return
        vocab = None
        if not in_key_value_space(_run_method(run.path)):
            key = _base_model_ref(run.path)
            key = (key[0], str(key[1]))
            if key not in vocabs:
                vocabs[key] = load_vocabulary(run.path)
            vocab = vocabs[key]
        run.explain = explain_run(run.path, vocab=vocab)
    except Exception as err:  # the rest of the report is worth having without it
        run.explain_error = f"{type(err).__name__}: {err}"
        logger.warning("report: explain of %s failed: %s", run.path, run.explain_error)


def _explain_html(run: _Run) -> str:
    from ..explain import neighbour_text  # lazy: as in _load_explain

    res = run.explain
    if res is None:
        return f'<p class="note">Not available: {_e(run.explain_error or "not computed")}</p>'
    start, end = res.start, res.end
    parts = [
        f"<p>Snapshots at step {start.step} (start) and step {end.step} (end); "
        f"{_e(res.method)}, {res.n_tokens} virtual tokens of dimension {res.dim}.</p>"
    ]
    if start.neighbours is not None and end.neighbours is not None:
        parts.append(
            f"<p>Top {res.top_k} nearest vocabulary tokens of each virtual token by cosine "
            "similarity to the base model's input embeddings (the projection of PGSPT, Liou "
            "et al. 2025), and its merge scale (nearest-neighbour distance: where it stops "
            "being an H0 component of its own).</p>"
        )
        rows = [
            (
                s.index,
                neighbour_text(s),
                neighbour_text(e),
                f"{start.merge_scale[s.index]:.4g} → {end.merge_scale[s.index]:.4g}",
            )
            for s, e in zip(start.neighbours, end.neighbours, strict=True)
        ]
        parts.append(_table(["virtual token", "start", "end", "merge scale"], rows, num_cols=1))
    else:
        parts.append(f'<p class="note">No nearest tokens: {_e(res.note)}</p>')
        rows = [
            (i, f"{a:.4g}", f"{b:.4g}")
            for i, (a, b) in enumerate(zip(start.merge_scale, end.merge_scale, strict=True))
        ]
        parts.append(_table(["virtual token", "merge scale (start)", "merge scale (end)"], rows))
    for label, snap in (("start", start), ("end", end)):
        h0 = [(f"{b.death:.4g}", ", ".join(map(str, b.members))) for b in snap.h0[:5]]
        parts.append(
            f"<h4>Longest-lived H0 components at the {label} (step {snap.step})</h4>"
            + _table(["dies at ε", "tokens of the dying component"], h0)
        )
        header = ["birth ε", "death ε", "cycle (tokens)"]
        h1 = [
            [f"{loop.birth:.4g}", f"{loop.death:.4g}", " – ".join(map(str, loop.cycle))]
            for loop in snap.h1[:10]
        ]
        if label == "start" and end is not start:
            header.append("at the end")
            for row, loop in zip(h1, snap.h1, strict=False):
                row.append("kept" if loop.survives else "gone")
        parts.append(
            f"<h4>H1 loops at the {label}: {len(snap.h1)}</h4>" + (_table(header, h1) if h1 else "")
        )
    gone = res.gone_loops
    parts.append(f"<p>Loops of the start gone at the end: {len(gone)} of {len(start.h1)}.</p>")
    return "".join(parts)


# --- sections ---------------------------------------------------------------------------------


def _config_html(run: _Run) -> str:
    info = run.info
    facts = [
        ("run folder", str(run.path)),
        # A local folder with no Hub id records none: the report (local) names the folder.
        ("base model", info.get("base_model") or info.get("model_source")),
        ("peft method", info.get("method")),
        ("virtual tokens", info.get("num_virtual_tokens")),
        ("task", info.get("task")),
        ("dataset", info.get("dataset_hub_id") or info.get("dataset_source")),
        ("training / test examples", f"{info.get('train_size')} / {info.get('test_size')}"),
        ("status", info.get("status")),
        ("optimiser steps", info.get("global_step")),
        ("train runtime (s)", info.get("train_runtime")),
    ]
    versions = info.get("versions")
    if isinstance(versions, dict):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    parts = [_table(["run", "value"], [(k, _fmt(v)) for k, v in facts if v is not None])]
    settings: list[tuple[str, str]] = []
    with contextlib.suppress(RunFolderError, MissingFileError):  # no adapter: no settings
        settings = settings_rows(run.path)
    if settings:
        parts.append("<h4>Training settings</h4>" + _table(["setting", "value"], settings))
    if run.recipe:
        rows = [(k, _fmt(v)) for k, v in _flatten(run.recipe).items()]
        parts.append("<h4>Recipe</h4>" + _table(["key", "value"], rows))
    if run.recipe_text:
        parts.append(
            f"<details><summary>recipe.yaml</summary><pre>{_e(run.recipe_text)}</pre></details>"
        )
    return "".join(parts)


def _accuracy_html(run: _Run) -> str:
    rows = []
    for key, label, value in result_rows(run.path, run.info):
        ev: dict[str, Any] = {}
        if key.startswith("accuracy_"):  # a test accuracy: its eval/<name>.json has counts
            ev = read_json_dict(eval_paths(run.path, key.removeprefix("accuracy_"))[0])
        counts = f"{ev['correct']} / {ev['total']}" if "correct" in ev and "total" in ev else ""
        rows.append((label, value, counts))
    return _table(["metric", "value", "correct / total"], rows) + _figure(
        run.figures.get(FIG_ACCURACY.file), FIG_ACCURACY.caption, FIG_ACCURACY.stem
    )


def _topology_table(run: _Run) -> str:
    rows = topology_rows(run.info, run.path)
    return _table(["metric", "start", "end"], rows, num_cols=2) if rows else ""


def _training_table(run: _Run) -> str:
    rows, (first, last) = training_rows(run.path)
    if not rows:
        return ""
    header = ["logged metric", f"first (step {first})", f"last (step {last})"]
    return _table(header, rows, num_cols=2)


def _evolution_table(run: _Run) -> str:
    rows, intervals = evolution_rows(run.evolution)
    if not rows:
        return ""
    note = (
        f'<p class="muted">Structural evolution: the distance between the persistence diagrams '
        f"of consecutive snapshots, over {intervals} snapshot interval(s) (persim; the infinite "
        "H0 bar left out).</p>"
    )
    return note + _table(["distance to the previous snapshot", "mean", "max"], rows, num_cols=2)


def _run_html(run: _Run) -> str:
    a = run.anchor
    parts = [
        f'<section id="{a}" class="run"><h2>Run {run.index}: {_e(run.label)}</h2>',
        f'<h3 id="{a}-config">Configuration</h3>{_config_html(run)}',
        f'<h3 id="{a}-accuracy">Accuracy</h3>{_accuracy_html(run)}',
    ]
    for key, heading, figures in FIGURE_SECTIONS:
        body = "".join(
            _figure(run.figures.get(spec.file), spec.caption, f"{spec.file} of {run.label}")
            for spec in figures
        )
        if key == "topology":
            body = _topology_table(run) + _evolution_table(run) + body
        elif key == "loss":
            body = _training_table(run) + body
        parts.append(f'<h3 id="{a}-{key}">{_e(heading)}</h3>{body}')
    parts.append(
        f'<h3 id="{a}-explain">What the prompt reads like (explain)</h3>{_explain_html(run)}'
    )
    if run.notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
        parts.append(f'<h3 id="{a}-notes">Notes</h3><ul class="note">{items}</ul>')
    parts.append("</section>")
    return "".join(parts)


def _compare_html(runs: list[_Run], figures: dict[str, Path], notes: list[str]) -> str:
    head = ["", *(r.label for r in runs)]

    def row(label: str, fn: Any) -> list[str]:
        return [label, *(fn(r) for r in runs)]

    rows = [
        row("base model", lambda r: _fmt(r.info.get("base_model") or r.info.get("model_source"))),
        row("peft method", lambda r: _fmt(r.info.get("method"))),
        row("virtual tokens", lambda r: _fmt(r.info.get("num_virtual_tokens"))),
        row("regulariser", lambda r: _fmt((r.recipe.get("ts") or {}).get("regularizer"))),
        row("λ_ts (ts.weight)", lambda r: _fmt((r.recipe.get("ts") or {}).get("weight"))),
        row("optimiser steps", lambda r: _fmt(r.info.get("global_step"))),
    ]
    for key in table_keys("results"):
        rows.append(row(metric_label(key), lambda r, k=key: format_value(k, r.info.get(k))))
    for key in table_keys("topology"):
        rows.append(
            row(
                f"{metric_label(key)} (start → end)",
                lambda r, k=key: (
                    f"{format_value(k, (r.info.get('topology_start') or {}).get(k))} → "
                    f"{format_value(k, (r.info.get('topology_end') or {}).get(k))}"
                ),
            )
        )
    for key in table_keys("evolution"):
        rows.append(
            row(
                f"{metric_label(key)} to the previous snapshot (mean / max)",
                lambda r, k=key: (
                    f"{format_value(k, r.evolution[k]['mean'])} / "
                    f"{format_value(k, r.evolution[k]['max'])}"
                    if k in r.evolution
                    else MISSING
                ),
            )
        )
    parts = ['<section id="compare"><h2>Comparison</h2>', _table(head, rows)]
    flat = [_flatten(r.recipe) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    missing = object()
    differ = [
        [k, *(_fmt(f.get(k)) if f.get(k, missing) is not missing else "–" for f in flat)]
        for k in keys
        if k not in ("name", "output_dir")
        and len({json.dumps(f.get(k, "<absent>"), sort_keys=True, default=str) for f in flat}) > 1
    ]
    parts.append('<h3 id="compare-recipe">Recipe keys that differ</h3>')
    parts.append(_table(["key", *(r.label for r in runs)], differ) if differ else "<p>none</p>")
    parts.append('<h3 id="compare-figures">Overlays</h3>')
    parts += [_figure(figures.get(f.file), f.title, f.title) for f in COMPARE_FIGURES]
    parts.append('<h3 id="compare-side-by-side">Side by side</h3>')
    cols = f"grid-template-columns: repeat({len(runs)}, minmax(0, 1fr));"
    for spec in SIDE_BY_SIDE:
        cells = "".join(
            f"<div><strong>{_e(r.label)}</strong>"
            f"{_figure(r.figures.get(spec.file), spec.title, f'{spec.title} of {r.label}')}</div>"
            for r in runs
        )
        parts.append(f'<h4>{_e(spec.title)}</h4><div class="grid" style="{cols}">{cells}</div>')
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f'<ul class="note">{items}</ul>')
    parts.append("</section>")
    return "".join(parts)


# --- the report -------------------------------------------------------------------------------


def build_report(
    run_dirs: PathLike | Sequence[PathLike],
    out_path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    explain: bool = True,
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML report of ``run_dirs`` to ``out_path``; its path.

    Args:
        run_dirs: one run folder or several (several add the comparison section).
        out_path: the HTML file (an existing folder gets ``report.html`` inside it).
        labels: display names of the runs (default: their ``run.json`` names).
        explain: include the explain table (may load each base model's embeddings once).
        title: the page title (default: names the runs).

    Raises:
        MissingFileError: a run folder does not exist.
        RunFolderError: a folder is not a run folder.
    """
    from .plots import plot_run, plot_runs

    paths = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not paths:
        raise ConfigError("no run folder given; pass one run folder or several.")
    for p in map(Path, paths):
        if not p.is_dir():
            raise MissingFileError(f"run folder {p} does not exist.")
    runs = [_Run(Path(p), i + 1) for i, p in enumerate(paths)]
    _unique_labels(runs, labels)
    out = Path(out_path)
    if out.is_dir():
        out = out / REPORT_FILE

    vocabs: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hf-tsprompt-report-") as tmp:
        for run in runs:
            folder = Path(tmp) / run.anchor
            with _captured_warnings() as messages:
                try:
                    run.figures = {p.name: p for p in plot_run(run.path, folder)}
                except Exception as err:  # e.g. a folder name matplotlib cannot typeset
                    messages.append(f"figures failed: {type(err).__name__}: {err}")
            run.notes += messages
            if explain:
                _load_explain(run, vocabs)
        compare_figures: dict[str, Path] = {}
        compare_notes: list[str] = []
        if len(runs) > 1:
            with _captured_warnings() as compare_notes:
                names = [_mpl_label(r.label) for r in runs]
                try:
                    figs = plot_runs([r.path for r in runs], Path(tmp) / "compare", names)
                    compare_figures = {p.name: p for p in figs}
                except Exception as err:  # the per-run sections are still worth having
                    compare_notes.append(f"comparison figures failed: {type(err).__name__}: {err}")
        # Built while the temporary figures still exist (they are read into data: URIs).
        body = [_compare_html(runs, compare_figures, compare_notes)] if len(runs) > 1 else []
        body += [_run_html(run) for run in runs]

    page_title = title or "hf-tsprompt report: " + ", ".join(r.label for r in runs)
    nav = "".join(f'<a href="#{r.anchor}">{_e(r.label)}</a>' for r in runs)
    if len(runs) > 1:
        nav = '<a href="#compare">Comparison</a>' + nav

    doc = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(page_title)}</h1>"
        f'<p class="muted">hf-tsprompt {_e(__version__)}: {len(runs)} run(s). Soft prompt '
        "topology during training (persistent homology of the prompt vectors).</p>"
        f"<nav>{nav}</nav></header>" + "".join(body) + "</body></html>\n"
    )
    return atomic_write_text(out, doc)
