"""Figures of a training run: topology, prompt geometry, losses and accuracy.

Every function reads a finished (or running) run folder, the format of
:mod:`hf_tsprompt.records` plus transformers' ``trainer_state.json``, and writes PNG files
into ``out_dir``, returning their paths:

============================  ===========================================================
function                      paper figure
============================  ===========================================================
:func:`plot_diagrams`         Fig. 1b: persistence diagrams (H0, H1) at a few snapshots
:func:`plot_barcodes`         Fig. 1d: persistence barcodes at the same snapshots
:func:`plot_topology_curves`  Figs. 1a/1c, 6, 10, 11: feature counts and mean lifespans
:func:`plot_entropy`          Fig. 2b: persistence entropy over training
:func:`plot_density`          Fig. 2a: H1 density against point-cloud density
:func:`plot_evolution`        structural evolution: diagram distance between snapshots
:func:`plot_heatmaps`         Fig. 7: pairwise distance matrices of the prompt
:func:`plot_pca`              Fig. 8: prompt vectors over training, PCA
:func:`plot_tsne`             Fig. 9: prompt vectors over training, t-SNE
:func:`plot_loss`             Figs. 4, 5: total, cross-entropy and TS loss
:func:`plot_accuracy`         accuracy at the snapshots (Tables II, IV)
============================  ===========================================================

:func:`plot_run` draws everything one run supports into ``<run>/figures/``; :func:`plot_runs`
draws the overlays that compare runs (e.g. baseline vs TSLoss, Fig. 6).

**Missing data.** A figure whose data is absent (no ``trainer_state.json``, no saved prompt
arrays, no accuracy...) is skipped: a warning on this module's logger gives the reason and the
function returns ``[]``. A run folder that does not exist at all raises
:class:`~hf_tsprompt.errors.MissingFileError`. No figure has an empty panel.

**No global state.** Figures are ``matplotlib.figure.Figure`` objects on an Agg canvas (pyplot
is never used, so nothing accumulates in its figure registry and no backend is switched), the
style is applied inside ``matplotlib.rc_context``, and files are written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis import convergence_from_records
from ..errors import ConfigError, MissingFileError
from ..fsutil import atomic_write_bytes
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
    LOSS_KEYS,
    FigureSpec,
    get_metric,
    metric_label,
)
from ..records import evolution_series, load_prompt, read_records, snapshot_accuracy_set
from ..regularizers import DEFAULT_REGULARIZER
from ..runs import FIGURES_DIR, TRAINER_STATE_FILE, read_recipe_text, trainer_state_file

__all__ = [
    "plot_accuracy",
    "plot_barcodes",
    "plot_density",
    "plot_diagrams",
    "plot_entropy",
    "plot_evolution",
    "plot_heatmaps",
    "plot_loss",
    "plot_pca",
    "plot_run",
    "plot_runs",
    "plot_topology_curves",
    "plot_tsne",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
RunDirs = PathLike | Sequence[PathLike]

DPI = 100
#: Applied with ``rc_context`` around each figure; sized to be legible at 100 dpi.
STYLE: dict[str, Any] = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.framealpha": 0.85,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
}

H0_COLOR = "tab:blue"
H1_COLOR = "tab:orange"
STEP_LABEL = "training step (optimiser steps)"
EPS_LABEL = "filtration scale ε (Euclidean distance)"


# -- shared helpers ---------------------------------------------------------------------------


def _skip(figure: str, reason: str) -> list[Path]:
    logger.warning("figure %s skipped: %s", figure, reason)
    return []


def _as_run_list(run_dirs: RunDirs) -> list[Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        runs = [Path(run_dirs)]
    else:
        runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ConfigError("no run folder given; pass one run folder or a list of them.")
    for run in runs:
        if not run.is_dir():
            raise MissingFileError(f"run folder {run} does not exist.")
    return runs


def _run_labels(runs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(runs):
            raise ConfigError(f"got {len(labels)} label(s) for {len(runs)} run folder(s).")
        return labels
    names = [r.resolve().name or str(r) for r in runs]
    # Two runs named alike (a/seed0, b/seed0) are told apart by their parent folder.
    return [
        f"{r.resolve().parent.name}/{name}" if names.count(name) > 1 else name
        for r, name in zip(runs, names, strict=True)
    ]


def _records(run: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """The run's topology records, or None and the reason they are unusable."""
    if not run.is_dir():
        raise MissingFileError(f"run folder {run} does not exist.")
    try:
        records = read_records(run)
    except MissingFileError:
        return None, f"{run} has no topology/records.jsonl (train with PersistenceCallback)"
    if not records:
        return None, f"{run}/topology/records.jsonl holds no complete record"
    return records, ""


def _select(
    records: list[dict[str, Any]], steps: Iterable[int] | None, default: int
) -> list[dict[str, Any]]:
    """The records at ``steps``, or ``default`` evenly spaced ones (first and last included)."""
    if steps is not None:
        by_step = {r["step"]: r for r in records}
        wanted = [int(s) for s in steps]
        missing = [s for s in wanted if s not in by_step]
        if missing:
            raise ConfigError(
                f"no snapshot at step(s) {missing}; recorded steps are {sorted(by_step)}."
            )
        if not wanted:
            raise ConfigError("steps is empty; pass at least one recorded step or None.")
        return [by_step[s] for s in wanted]
    idx = np.unique(np.linspace(0, len(records) - 1, min(default, len(records))).round())
    return [records[int(i)] for i in idx]


def _stage_title(record: dict[str, Any], first: int, last: int) -> str:
    step = record["step"]
    tag = " (initial)" if step == first else " (final)" if step == last else ""
    acc = record.get("accuracy")
    # Say which examples the accuracy is on: the pipeline's default is the training set.
    label = {"train": "train acc", "test": "test acc"}.get(snapshot_accuracy_set(record), "acc")
    return f"step {step}{tag}" + (f", {label} {acc:.2f}" if acc is not None else "")


def _figure(n_panels: int, panel: tuple[float, float], max_cols: int = 4) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes in rows of at most ``max_cols`` (no spare axes)."""
    cols = min(n_panels, max_cols)
    rows = -(-n_panels // cols)
    # at least 5.4 inches wide, so a one-panel figure still fits its title and legend
    fig = Figure(figsize=(max(panel[0] * cols, 5.4), panel[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        fig.delaxes(ax)  # no empty panel when the grid is not full
    return fig, axes[:n_panels]


def _save(fig: Figure, out_dir: PathLike, name: str) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(Path(out_dir) / name, buf.getvalue())


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (r["step"], float(r["summary"][key]))
        for r in records
        if isinstance(r.get("summary"), dict) and r["summary"].get(key) is not None
    ]
    if not pairs:
        return np.zeros(0, dtype=int), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps), np.asarray(values)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _load_runs(
    runs: list[Path], labels: list[str], figure: str, min_snapshots: int = 1
) -> list[tuple[str, Any, list[dict[str, Any]]]]:
    """(label, colour, records) of the runs with at least ``min_snapshots`` records; the
    others are left out with a logged reason."""
    colors = _colors(len(runs))
    out = []
    for run, label, color in zip(runs, labels, colors, strict=True):
        records, reason = _records(run)
        if records is not None and len(records) < min_snapshots:
            records, reason = None, f"{len(records)} snapshot(s), a curve needs {min_snapshots}"
        if records is None:
            logger.warning("figure %s: run %r left out: %s", figure, label, reason)
            continue
        out.append((label, color, records))
    return out


def _step_axis(ax: Any) -> None:
    ax.set_xlabel(STEP_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers


def _fig_legend(fig: Figure, handles: list[Line2D], loc: str = "outside lower center") -> None:
    """One legend for the whole figure, outside the axes so it never hides data."""
    if handles:
        # about 2 inches per entry, so a one-panel figure's legend wraps instead of clipping
        fits = max(1, int(fig.get_figwidth() / 2.0))
        ncols = 1 if "right" in loc else min(len(handles), 4, fits)
        fig.legend(handles=handles, loc=loc, ncols=ncols)


def _run_handles(loaded: Sequence[tuple[Any, ...]]) -> list[Line2D]:
    """Legend entries naming each run by its colour (``loaded``: (label, colour, ...))."""
    return [Line2D([], [], color=c, marker="o", label=label) for label, c, *_ in loaded]


def _style_handle(label: str, ls: str = "-", marker: str | None = None) -> Line2D:
    return Line2D([], [], color="0.25", ls=ls, marker=marker, label=label)


# -- persistence diagrams and barcodes (Fig. 1b, 1d) ------------------------------------------


def _symbol(key: str) -> str:
    return get_metric(key).symbol


def _counts_text(h0: np.ndarray, h1: np.ndarray) -> str:
    """``|H0| = 8, |H1| = 2``: a snapshot's feature counts in the paper's symbols."""
    return f"{_symbol('h0_count')} = {len(h0)}, {_symbol('h1_count')} = {len(h1)}"


def _finite_max(diagrams: Iterable[np.ndarray]) -> float:
    values = [d[np.isfinite(d)] for d in diagrams if d.size]
    values = [v for v in values if v.size]
    top = float(max(v.max() for v in values)) if values else 0.0
    return top if top > 0 else 1.0


def plot_diagrams(
    run_dir: PathLike, out_dir: PathLike, steps: Iterable[int] | None = None
) -> list[Path]:
    """Persistence diagrams (birth vs death, H0 and H1) at a few snapshots (Fig. 1b).

    Default snapshots: first, middle and last. All panels share their axes so the snapshots
    compare directly. H0 births are all 0 in a Rips filtration, so H0 points lie on the left
    edge; the one infinite H0 bar is drawn on a dashed line at the top, marked "∞".
    """
    run = Path(run_dir)
    records, reason = _records(run)
    if records is None:
        return _skip(FIG_DIAGRAMS.stem, reason)
    chosen = _select(records, steps, 3)
    top = _finite_max(d for r in chosen for d in r["diagrams_np"])
    inf_y = top * 1.08
    lo, hi = -0.04 * top, top * 1.15
    first, last = records[0]["step"], records[-1]["step"]
    with rc_context(STYLE):
        fig, axes = _figure(len(chosen), (4.2, 4.2))
        for ax, rec in zip(axes, chosen, strict=True):
            h0, h1 = rec["diagrams_np"][0], rec["diagrams_np"][1]
            fin = np.isfinite(h0[:, 1])
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=1)
            ax.axhline(inf_y, color="0.5", ls="--", lw=1, zorder=1)
            ax.scatter(h0[fin, 0], h0[fin, 1], s=22, c=H0_COLOR, zorder=3)
            if (~fin).any():
                ax.scatter(
                    h0[~fin, 0],
                    np.full((~fin).sum(), inf_y),
                    s=60,
                    marker="^",
                    c=H0_COLOR,
                    edgecolors="k",
                    zorder=4,
                )
            if len(h1):
                ax.scatter(h1[:, 0], h1[:, 1], s=26, marker="s", c=H1_COLOR)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            ax.set_title(_stage_title(rec, first, last))
            ax.set_xlabel("birth ε")
            ax.set_ylabel("death ε")
            ax.text(
                0.97,
                0.04,
                _counts_text(h0, h1),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                bbox={"fc": "white", "ec": "0.7", "alpha": 0.9},
            )
        # "∞" beside the dashed line, on the first panel's y axis.
        ticks = [t for t in axes[0].get_yticks() if lo <= t < inf_y * 0.93]
        for ax in axes:
            ax.set_yticks([*ticks, inf_y], [*(f"{t:g}" for t in ticks), "∞"])
        handles = [
            Line2D([], [], ls="", marker="o", color=H0_COLOR, label="H0 (components)"),
            Line2D([], [], ls="", marker="^", color=H0_COLOR, mec="k", label="H0 infinite bar"),
            Line2D([], [], color="0.5", label="diagonal (death = birth)"),
        ]
        if any(len(r["diagrams_np"][1]) for r in chosen):
            handles.insert(2, Line2D([], [], ls="", marker="s", color=H1_COLOR, label="H1 (loops)"))
        _fig_legend(fig, handles)
        fig.suptitle(f"{FIG_DIAGRAMS.title}: {run.resolve().name}")
        return [_save(fig, out_dir, FIG_DIAGRAMS.file)]


def plot_barcodes(
    run_dir: PathLike, out_dir: PathLike, steps: Iterable[int] | None = None
) -> list[Path]:
    """Persistence barcodes (H0 above, H1 below) at a few snapshots (Fig. 1d).

    Each bar spans [birth, death] on a shared ε axis; the infinite H0 bar runs to the right
    edge and ends in an arrow. H1 bars carry a tick at their birth so that very short loops
    (often a fraction of a pixel long) remain visible.
    """
    run = Path(run_dir)
    records, reason = _records(run)
    if records is None:
        return _skip(FIG_BARCODES.stem, reason)
    chosen = _select(records, steps, 3)
    top = _finite_max(d for r in chosen for d in r["diagrams_np"])
    right = top * 1.1
    first, last = records[0]["step"], records[-1]["step"]
    n_bars = max(len(r["diagrams_np"][0]) + len(r["diagrams_np"][1]) for r in chosen)
    height = float(np.clip(2.0 + 0.035 * n_bars, 4.0, 9.0))
    lw = float(np.clip(150.0 / max(n_bars, 1), 0.6, 5.0))
    with rc_context(STYLE):
        fig, axes = _figure(len(chosen), (4.2, height))
        for ax, rec in zip(axes, chosen, strict=True):
            h0, h1 = rec["diagrams_np"][0], rec["diagrams_np"][1]
            y = 0
            fin = np.isfinite(h0[:, 1])
            # H0: finite bars by death, longest at the top, then the infinite bar.
            for b, d in h0[fin]:
                ax.hlines(y, b, d, color=H0_COLOR, lw=lw)
                y += 1
            for b, _ in h0[~fin]:
                ax.hlines(y, b, right, color=H0_COLOR, lw=lw)
                ax.plot(right, y, marker=">", color=H0_COLOR, ms=6, clip_on=False)
                y += 1
            y_split = y
            y += 1  # a gap row between the dimensions
            for b, d in h1:
                ax.hlines(y, b, d, color=H1_COLOR, lw=lw)
                ax.plot(b, y, marker="|", color=H1_COLOR, ms=5)
                y += 1
            if len(h1):
                ax.axhline(y_split, color="0.6", lw=0.8, ls=":")
            ax.set_xlim(-0.02 * top, right * 1.02)
            ax.set_ylim(y, -1)  # H0 on top
            ax.set_yticks([])
            ax.grid(axis="y", visible=False)
            ax.set_xlabel(EPS_LABEL)
            ax.set_title(_stage_title(rec, first, last) + "\n" + _counts_text(h0, h1))
        handles = [
            Line2D([], [], color=H0_COLOR, lw=3, label="H0 (components)"),
            Line2D([], [], color=H0_COLOR, marker=">", ls="-", label="H0 infinite bar"),
        ]
        if any(len(r["diagrams_np"][1]) for r in chosen):
            handles.append(Line2D([], [], color=H1_COLOR, lw=3, label="H1 (loops)"))
        _fig_legend(fig, handles)
        axes[0].set_ylabel("features (H0 above, H1 below)")
        fig.suptitle(f"{FIG_BARCODES.title}: {run.resolve().name}")
        return [_save(fig, out_dir, FIG_BARCODES.file)]


# -- metric curves over training (Figs. 1a/1c, 2, 6, 10, 11) ----------------------------------


def _curve_panels(
    run_dirs: RunDirs,
    out_dir: PathLike,
    labels: Sequence[str] | None,
    *,
    figure: FigureSpec,
    panels: list[tuple[str | None, list[tuple[str, str]], bool]],
) -> list[Path]:
    """One panel per ``(title, [(summary key, linestyle)], integer_y)``; runs are overlaid in
    colours, several series of a panel told apart by linestyle and named by their metric's
    label. A panel's title defaults to its metric's label, its y label is the metric's unit."""
    runs = _as_run_list(run_dirs)
    loaded = _load_runs(runs, _run_labels(runs, labels), figure.stem, min_snapshots=2)
    if not loaded:
        return _skip(figure.stem, "no run has two or more topology snapshots")
    multi = len(loaded) > 1
    styles: dict[str, Line2D] = {}
    with rc_context(STYLE):
        fig, axes = _figure(len(panels), (5.0, 3.8), max_cols=2)
        for ax, (ptitle, series, integer) in zip(axes, panels, strict=True):
            for _, color, records in loaded:
                for key, ls in series:
                    steps, values = _series(records, key)
                    ax.plot(steps, values, ls=ls, marker="o", color=color)
            if len(series) > 1:
                for key, ls in series:
                    styles[key] = _style_handle(metric_label(key), ls, "o")
            ax.set_title(ptitle or metric_label(series[0][0]))
            _step_axis(ax)
            ax.set_ylabel(get_metric(series[0][0]).unit)
            if integer:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                lo, hi = ax.dataLim.intervaly
                if hi - lo < 2:  # a constant count (|H0|) would get ticks like 7.6 ... 8.4
                    ax.set_ylim(lo - 1 if lo >= 1 else -0.25, hi + 1)  # counts are >= 0
        _fig_legend(fig, (_run_handles(loaded) if multi else []) + list(styles.values()))
        name = loaded[0][0] if not multi else f"{len(loaded)} runs"
        fig.suptitle(f"{figure.title}: {name}")
        return [_save(fig, out_dir, figure.file)]


def plot_topology_curves(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """H0/H1 feature counts and mean lifespans over training (Figs. 1a/1c, 6, 10, 11).

    Several runs are overlaid (e.g. baseline vs TSLoss, Fig. 6). Lifespans are over finite
    bars only (see :mod:`hf_tsprompt.topology`).
    """
    return _curve_panels(
        run_dirs,
        out_dir,
        labels,
        figure=FIG_TOPOLOGY_CURVES,
        panels=[
            (None, [("h0_count", "-")], True),
            (None, [("h1_count", "-")], True),
            (None, [("h0_mean_lifespan", "-")], False),
            (None, [("h1_mean_lifespan", "-")], False),
        ],
    )


def plot_entropy(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """Persistence entropy over training (Fig. 2b): over H0 and H1 together (the paper's PE),
    and per homology dimension (natural log, nats)."""
    return _curve_panels(
        run_dirs,
        out_dir,
        labels,
        figure=FIG_ENTROPY,
        panels=[
            (
                f"{metric_label('entropy')} over H0 ∪ H1 ({_symbol('entropy')})",
                [("entropy", "-")],
                False,
            ),
            (
                f"{metric_label('entropy')} per homology dimension",
                [("h0_entropy", "-"), ("h1_entropy", "--")],
                False,
            ),
        ],
    )


def plot_evolution(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """Structural evolution: how far the diagrams move from one snapshot to the next.

    Two panels, the Wasserstein and the bottleneck distance between consecutive snapshots'
    persistence diagrams (H0 solid, H1 dashed; :func:`hf_tsprompt.topology.evolution`, the
    infinite H0 bar dropped), each point drawn at the later snapshot's step. Runs are
    overlaid. A distance is per snapshot interval, so an uneven schedule (the last step)
    shows as a shorter interval, not a slower change.
    """
    runs = _as_run_list(run_dirs)
    figure = FIG_EVOLUTION
    loaded = _load_runs(runs, _run_labels(runs, labels), figure.stem, min_snapshots=3)
    if not loaded:
        return _skip(figure.stem, "no run has three or more snapshots (two distances)")
    series = (("h0", "H0", "-"), ("h1", "H1", "--"))
    with rc_context(STYLE):
        fig, axes = _figure(2, (5.0, 3.8), max_cols=2)
        for ax, (metric, title) in zip(
            axes,
            (
                ("wasserstein", "Wasserstein (W1) distance"),
                ("bottleneck", "bottleneck distance"),
            ),
            strict=True,
        ):
            for _, color, records in loaded:
                evo = evolution_series(records)
                steps = [e["step"] for e in evo]
                for dim, _, ls in series:
                    ax.plot(steps, [e[f"{dim}_{metric}"] for e in evo], ls=ls, marker="o", c=color)
            ax.set_title(f"{title} to the previous snapshot")
            _step_axis(ax)
            ax.set_ylabel(get_metric(f"h0_{metric}").unit)
        return _finish_series_figure(fig, loaded, series, figure, out_dir)


def _finish_series_figure(
    fig: Any, loaded: list, series: Sequence, figure: FigureSpec, out_dir: PathLike
) -> list[Path]:
    """Legend (runs when several, then one line style per ``(key, name, linestyle)`` series),
    title naming the run(s), save: the common end of the figures that overlay several series
    per run."""
    multi = len(loaded) > 1
    handles = [_style_handle(name, ls, "o") for _, name, ls in series]
    _fig_legend(fig, (_run_handles(loaded) if multi else []) + handles)
    name = loaded[0][0] if not multi else f"{len(loaded)} runs"
    fig.suptitle(f"{figure.title}: {name}")
    return [_save(fig, out_dir, figure.file)]


def plot_density(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """H1 density against point-cloud density over training (Fig. 2a).

    The paper's claim is that H1 density falls markedly while the point cloud's density
    barely moves (so loops vanish by redundancy elimination, not by crowding). Panels: the two
    raw series (H1 features per prompt vector; inverse mean nearest-neighbour distance), and
    both as % change from the first snapshot on one axis, where the claim reads directly. A
    series that starts at 0 has no relative change and is left out of that panel (logged).
    """
    runs = _as_run_list(run_dirs)
    figure = FIG_DENSITY
    loaded = _load_runs(runs, _run_labels(runs, labels), figure.stem, min_snapshots=2)
    if not loaded:
        return _skip(figure.stem, "no run has two or more topology snapshots")
    series = tuple(
        (key, metric_label(key), ls) for key, ls in (("h1_density", "-"), ("point_density", "--"))
    )
    # (colour, linestyle, steps, % change from the first snapshot)
    relative: list[tuple[Any, str, np.ndarray, np.ndarray]] = []
    for label, color, records in loaded:
        for key, _, ls in series:
            steps, values = _series(records, key)
            if len(values) and values[0] > 0:
                relative.append((color, ls, steps, 100.0 * (values / values[0] - 1.0)))
            elif len(values):
                logger.warning(
                    "figure %s: %s of run %r starts at 0; no relative change drawn",
                    figure.stem,
                    key,
                    label,
                )
    with rc_context(STYLE):
        fig, axes = _figure(3 if relative else 2, (4.6, 3.8), max_cols=3)
        for ax, (key, name, ls) in zip(axes, series, strict=False):
            for _, color, records in loaded:
                steps, values = _series(records, key)
                ax.plot(steps, values, ls=ls, marker="o", color=color)
            ax.set_title(name)
            _step_axis(ax)
            ax.set_ylabel(get_metric(key).unit)
        if relative:
            ax = axes[2]
            for color, ls, steps, change in relative:
                ax.plot(steps, change, ls=ls, marker="o", color=color)
            ax.axhline(0, color="0.4", lw=0.8)
            ax.set_title("both, relative to the first snapshot")
            _step_axis(ax)
            ax.set_ylabel("change from first snapshot (%)")
        return _finish_series_figure(fig, loaded, series, figure, out_dir)


# -- prompt geometry (Figs. 7, 8, 9) ----------------------------------------------------------


def _prompts(
    run: Path, records: list[dict[str, Any]], figure: str
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(record, prompt matrix) of the records whose prompt array is on disk."""
    out = []
    missing = 0
    for rec in records:
        try:
            out.append((rec, np.asarray(load_prompt(run, rec), dtype=np.float64)))
        except MissingFileError:
            missing += 1
    if missing and out:
        logger.warning("figure %s: %d snapshot(s) of %s have no prompt file", figure, missing, run)
    return out


def plot_heatmaps(
    run_dir: PathLike, out_dir: PathLike, steps: Iterable[int] | None = None
) -> list[Path]:
    """Pairwise Euclidean distance matrices of the prompt vectors at several stages (Fig. 7).

    Default stages: four evenly spaced snapshots, first and last included. One colour scale
    (0 to the largest distance over the chosen stages) and one colour bar for all panels.
    """
    from scipy.spatial.distance import pdist, squareform

    run = Path(run_dir)
    records, reason = _records(run)
    if records is None:
        return _skip(FIG_HEATMAPS.stem, reason)
    with_prompts = _prompts(run, records, FIG_HEATMAPS.stem)
    if not with_prompts:
        return _skip(FIG_HEATMAPS.stem, f"{run} has no saved prompt arrays (save_prompts=False?)")
    recs = [r for r, _ in with_prompts]
    chosen = {r["step"] for r in _select(recs, steps, 4)}
    mats = [
        (rec, squareform(pdist(P)) if len(P) > 1 else np.zeros((1, 1)))
        for rec, P in with_prompts
        if rec["step"] in chosen
    ]
    vmax = max(float(m.max()) for _, m in mats) or 1.0
    first, last = records[0]["step"], records[-1]["step"]
    with rc_context(STYLE):
        fig, axes = _figure(len(mats), (3.6, 3.4))
        image = None
        for ax, (rec, m) in zip(axes, mats, strict=True):
            image = ax.imshow(m, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_title(_stage_title(rec, first, last))
            ax.set_xlabel("prompt vector j")
            ax.set_ylabel("prompt vector i")
            ax.grid(False)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        fig.colorbar(image, ax=axes, label="Euclidean distance ‖p_i − p_j‖", shrink=0.9)
        fig.suptitle(f"{FIG_HEATMAPS.title}: {run.resolve().name}")
        return [_save(fig, out_dir, FIG_HEATMAPS.file)]


def _embedding_figure(
    run_dirs_or_dir: RunDirs,
    out_dir: PathLike,
    labels: Sequence[str] | None,
    steps: Iterable[int] | None,
    max_stages: int,
    *,
    spec: FigureSpec,
    method: str,
) -> list[Path]:
    """Shared body of :func:`plot_pca` and :func:`plot_tsne`: one panel per run."""
    figure = spec.stem
    runs = _as_run_list(run_dirs_or_dir)
    names = _run_labels(runs, labels)
    panels = []
    for run, name in zip(runs, names, strict=True):
        records, reason = _records(run)
        if records is None:
            logger.warning("figure %s: run %r left out: %s", figure, name, reason)
            continue
        with_prompts = _prompts(run, records, figure)
        if not with_prompts:
            logger.warning("figure %s: run %r left out: no saved prompt arrays", figure, name)
            continue
        recs = [r for r, _ in with_prompts]
        chosen = {r["step"] for r in _select(recs, steps, max_stages)}
        stages = [(r["step"], P) for r, P in with_prompts if r["step"] in chosen]
        X = np.concatenate([P for _, P in stages])
        if len(X) < 3:
            logger.warning("figure %s: run %r left out: fewer than 3 prompt vectors", figure, name)
            continue
        coords, axis_labels = _embed(X, method)
        panels.append((name, stages, coords, axis_labels))
    if not panels:
        return _skip(figure, "no run has at least 3 saved prompt vectors")
    all_steps = [s for _, stages, _, _ in panels for s, _ in stages]
    norm = Normalize(min(all_steps), max(all_steps) if max(all_steps) > min(all_steps) else 1)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    with rc_context(STYLE):
        fig, axes = _figure(len(panels), (4.6, 4.2), max_cols=3)
        for ax, (name, stages, coords, axis_labels) in zip(axes, panels, strict=True):
            sizes = [len(P) for _, P in stages]
            parts = np.split(coords, np.cumsum(sizes)[:-1])
            n = sizes[0]
            if all(s == n for s in sizes) and len(stages) > 1:
                # Each prompt vector's path through the stages, faint, under the points.
                traj = np.stack(parts)  # (stages, n, 2)
                for i in range(n):
                    ax.plot(traj[:, i, 0], traj[:, i, 1], color="0.6", lw=0.6, alpha=0.5)
            for (step, _), xy in zip(stages, parts, strict=True):
                ax.scatter(
                    xy[:, 0], xy[:, 1], s=22, color=cmap(norm(step)), edgecolors="none", zorder=3
                )
            stage_word = "stage" if len(stages) == 1 else "stages"
            ax.set_title(f"{name} ({len(stages)} {stage_word} × {n} vectors)")
            ax.set_xlabel(axis_labels[0])
            ax.set_ylabel(axis_labels[1])
        fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label=STEP_LABEL, shrink=0.9)
        fig.suptitle(spec.title)
        return [_save(fig, out_dir, spec.file)]


def _embed(X: np.ndarray, method: str) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates of the rows of ``X`` (PCA or t-SNE, seeded) and the axis labels."""
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, X.shape[0], X.shape[1])
        pca = PCA(n_components=k, svd_solver="full")
        coords = pca.fit_transform(X)
        ratios = list(pca.explained_variance_ratio_)
        if k < 2:  # a one-dimensional cloud: the second axis carries nothing
            coords = np.column_stack([coords, np.zeros(len(X))])
            ratios.append(0.0)
        ratios = [0.0 if not np.isfinite(r) else r for r in ratios]
        return coords, (f"PC1 ({ratios[0]:.0%} of variance)", f"PC2 ({ratios[1]:.0%} of variance)")
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # scikit-learn requires perplexity < n_samples; the usual (n - 1) / 3 rule, within [1, 30].
    perplexity = float(np.clip((len(X) - 1) / 3.0, 1.0, 30.0))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca" if X.shape[1] >= 2 else "random",
        learning_rate="auto",
        # Barnes-Hut's approximation is poor on a handful of points (3 points fly apart to
        # coordinates ~1e3); the exact gradient is as fast there.
        method="exact" if len(X) <= 200 else "barnes_hut",
        random_state=0,
    )
    # One thread: on these few hundred points OpenMP threads mostly spin, and on a busy machine
    # that made a 160-point t-SNE take 20 s instead of 0.5 s.
    with threadpool_limits(limits=1):
        coords = tsne.fit_transform(X)
    return coords, (f"t-SNE 1 (perplexity {perplexity:.1f})", "t-SNE 2")


def plot_pca(
    run_dirs_or_dir: RunDirs,
    out_dir: PathLike,
    labels: Sequence[str] | None = None,
    steps: Iterable[int] | None = None,
    max_stages: int = 8,
) -> list[Path]:
    """Prompt vectors over training projected by PCA, one panel per run (Fig. 8).

    The PCA of a run is fitted on all its chosen snapshots together, so the stages share axes
    and movement is comparable; points are coloured by training step and each vector's path
    is drawn faintly. Default stages: up to ``max_stages`` evenly spaced snapshots.
    """
    return _embedding_figure(
        run_dirs_or_dir, out_dir, labels, steps, max_stages, spec=FIG_PCA, method="pca"
    )


def plot_tsne(
    run_dirs_or_dir: RunDirs,
    out_dir: PathLike,
    labels: Sequence[str] | None = None,
    steps: Iterable[int] | None = None,
    max_stages: int = 8,
) -> list[Path]:
    """Prompt vectors over training embedded by t-SNE, one panel per run (Fig. 9).

    One t-SNE (seeded, ``random_state=0``) per run on all chosen snapshots together;
    perplexity ``(N - 1) / 3`` clipped to [1, 30] for N pooled vectors, so it stays below N
    for N >= 3 as scikit-learn requires. Runs with fewer than 3 vectors are left out.
    """
    return _embedding_figure(
        run_dirs_or_dir, out_dir, labels, steps, max_stages, spec=FIG_TSNE, method="tsne"
    )


# -- losses and accuracy (Figs. 4, 5; Tables II, IV) ------------------------------------------


def _log_history(run: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """``log_history`` of ``<run>/trainer_state.json``, else of the latest checkpoint's."""
    file = trainer_state_file(run)
    if file is None:
        return None, f"{run} has no {TRAINER_STATE_FILE}"
    try:
        history = json.loads(file.read_text(encoding="utf-8")).get("log_history")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        return None, f"{file} is unreadable ({exc})"
    if not isinstance(history, list):
        return None, f"{file} has no log_history list"
    return [h for h in history if isinstance(h, dict)], ""


def _history_series(history: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted(
        {
            int(h["step"]): float(h[key])
            for h in history
            if isinstance(h.get("step"), int)
            and isinstance(h.get(key), (int, float))
            and np.isfinite(h[key])
        }.items()
    )
    if not pairs:
        return np.zeros(0, dtype=int), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps), np.asarray(values)


def plot_loss(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """Total, cross-entropy and TS loss over training from ``trainer_state.json`` (Figs. 4, 5).

    One panel per loss that some run logged (a plain ``Trainer`` logs only the total); runs
    are overlaid. The TS loss is drawn on a log scale when positive, since it is typically
    orders of magnitude below the cross-entropy.
    """
    runs = _as_run_list(run_dirs)
    names = _run_labels(runs, labels)
    colors = _colors(len(runs))
    loaded = []
    for run, name, color in zip(runs, names, colors, strict=True):
        history, reason = _log_history(run)
        if history is None:
            logger.warning("figure %s: run %r left out: %s", FIG_LOSS.stem, name, reason)
            continue
        loaded.append((name, color, history))
    panels = [
        key for key in LOSS_KEYS if any(len(_history_series(h, key)[0]) >= 2 for _, _, h in loaded)
    ]
    if not panels:
        return _skip(FIG_LOSS.stem, "no run has two or more logged losses in trainer_state.json")
    multi = len(loaded) > 1
    with rc_context(STYLE):
        fig, axes = _figure(len(panels), (4.8, 3.8), max_cols=3)
        for ax, key in zip(axes, panels, strict=True):
            positive = True
            for _, color, history in loaded:
                steps, values = _history_series(history, key)
                if len(steps):
                    positive &= bool((values > 0).all())
                    ax.plot(steps, values, color=color)
            if key == "loss_ts" and positive:
                ax.set_yscale("log")
            ax.set_title(_loss_panel_title(key, panels, runs))
            _step_axis(ax)
            ax.set_ylabel(get_metric(key).unit)
        if multi:
            _fig_legend(fig, [Line2D([], [], color=c, label=n) for n, c, _ in loaded])
        name = loaded[0][0] if not multi else f"{len(loaded)} runs"
        fig.suptitle(f"{FIG_LOSS.title}: {name}")
        return [_save(fig, out_dir, FIG_LOSS.file)]


def _loss_panel_title(key: str, panels: list[str], runs: list[Path]) -> str:
    """A loss panel's title, from what the runs trained with: without a regulariser the
    total is the cross-entropy, and only TSLoss's term is L_ts."""
    if key == "loss" and "loss_ts" not in panels:
        return "training loss (cross-entropy; no regulariser logged)"
    if key == "loss_ts":
        regs = {
            (read_recipe_text(run, strict=False)[0].get("ts") or {}).get("regularizer")
            for run in runs
        }
        if regs != {DEFAULT_REGULARIZER}:  # the paper's TSLoss: its term is L_ts
            return "regulariser loss L_reg (unweighted)"
    return metric_label(key)


def plot_accuracy(
    run_dirs: RunDirs, out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """Accuracy at the topology snapshots over training (the pairs behind Tables II and IV).

    Solid: ``record["accuracy"]``; dashed: ``record["eval"]["train_accuracy"]`` when logged.
    A dotted vertical line marks the first step at 100% training accuracy (Table IV).
    """
    runs = _as_run_list(run_dirs)
    drawn = []
    tested = False
    figure = FIG_ACCURACY
    for label, color, records in _load_runs(runs, _run_labels(runs, labels), figure.stem):
        # A snapshot's accuracy on the training set is drawn once, as the training curve.
        acc = [
            (r["step"], r["accuracy"])
            for r in records
            if r.get("accuracy") is not None and snapshot_accuracy_set(r) != "train"
        ]
        tested = tested or any(snapshot_accuracy_set(r) == "test" for r in records)
        train = [
            (r["step"], r["eval"]["train_accuracy"])
            for r in records
            if isinstance(r.get("eval"), dict) and r["eval"].get("train_accuracy") is not None
        ]
        if len(acc) >= 2 or len(train) >= 2:
            drawn.append((label, color, acc, train, convergence_from_records(records)))
        elif acc or train:
            logger.warning("figure %s: run %r left out: one accuracy, no curve", figure.stem, label)
    if not drawn:
        return _skip(
            figure.stem, "no run has two or more accuracies (pass evaluate= to the callback)"
        )
    multi = len(drawn) > 1
    with rc_context(STYLE):
        fig, axes = _figure(1, (7.0, 4.2))
        ax = axes[0]
        handles = []
        for label, color, acc, train, conv in drawn:
            if acc:
                s, v = zip(*acc, strict=True)
                ax.plot(s, v, marker="o", color=color)
            if train:
                s, v = zip(*train, strict=True)
                ax.plot(s, v, ls="--", marker=".", color=color)
            if conv is not None:
                ax.axvline(conv, color=color, ls=":", lw=1.4)
            reached = f"100% at step {conv}" if conv is not None else "100% not reached"
            handles.append(Line2D([], [], color=color, marker="o", label=f"{label}: {reached}"))
        if any(acc for _, _, acc, _, _ in drawn):
            label = "test accuracy" if tested else metric_label("accuracy")
            handles.append(_style_handle(label, "-", "o"))
        if any(train for _, _, _, train, _ in drawn):
            handles.append(_style_handle(metric_label("train_accuracy"), "--", "."))
        if any(conv is not None for *_, conv in drawn):
            handles.append(_style_handle("first snapshot at 100%", ":"))
        ax.set_ylim(-0.03, 1.05)
        _step_axis(ax)
        ax.set_ylabel(f"{metric_label('accuracy')} ({get_metric('accuracy').unit})")
        ax.set_title(figure.title + ("" if multi else f": {drawn[0][0]}"))
        _fig_legend(fig, handles, loc="outside right upper")
        return [_save(fig, out_dir, figure.file)]


# -- everything at once -------------------------------------------------------------------------


def plot_run(run_dir: PathLike, out_dir: PathLike | None = None) -> list[Path]:
    """Every figure the run's data supports, into ``<run>/figures/`` by default."""
    run = Path(run_dir)
    if not run.is_dir():
        raise MissingFileError(f"run folder {run} does not exist.")
    out = Path(out_dir) if out_dir is not None else run / FIGURES_DIR
    paths: list[Path] = []
    paths += plot_diagrams(run, out)
    paths += plot_barcodes(run, out)
    paths += plot_topology_curves(run, out)
    paths += plot_entropy(run, out)
    paths += plot_density(run, out)
    paths += plot_evolution(run, out)
    paths += plot_heatmaps(run, out)
    paths += plot_pca(run, out)
    paths += plot_tsne(run, out)
    paths += plot_loss(run, out)
    paths += plot_accuracy(run, out)
    return paths


def plot_runs(
    run_dirs: Sequence[PathLike], out_dir: PathLike, labels: Sequence[str] | None = None
) -> list[Path]:
    """The figures that compare runs (e.g. baseline, L2, TSLoss): curves overlaid (Figs. 2,
    4, 6), and PCA / t-SNE with one panel per run (Figs. 8, 9)."""
    runs = _as_run_list(run_dirs)
    paths: list[Path] = []
    paths += plot_topology_curves(runs, out_dir, labels)
    paths += plot_entropy(runs, out_dir, labels)
    paths += plot_density(runs, out_dir, labels)
    paths += plot_evolution(runs, out_dir, labels)
    paths += plot_loss(runs, out_dir, labels)
    paths += plot_accuracy(runs, out_dir, labels)
    paths += plot_pca(runs, out_dir, labels)
    paths += plot_tsne(runs, out_dir, labels)
    return paths
