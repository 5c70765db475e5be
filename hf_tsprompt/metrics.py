"""The one vocabulary of metrics and the one table of figures.

Every number a run records has one :class:`Metric` here: its ``key`` (as stored in
``topology/records.jsonl``, ``run.json``, ``analysis.json`` and the trainer's logs), its
``label`` (the one wording every table, card, report and figure prints), the paper's
``symbol``, its ``unit`` (what a figure's axis measures), and its format. Every figure
:mod:`hf_tsprompt.viz.plots` writes has one :class:`FigureSpec`: its file name under
``figures/`` and its title (the plot's title, the card's and the report's caption).

Readers select from here instead of re-spelling names: callbacks log ``topo/<key>`` for
:data:`LOGGED_TOPOLOGY_KEYS`, analysis prints Table II with the paper's symbols, the card and
the report print the metrics of each summary table (:data:`TABLES`: those whose
:attr:`Metric.tables` name it, asked with :func:`table_keys` when the table is built, so a
metric registered later is printed too) with :func:`metric_label` and :func:`format_value`,
and plots names its files and titles after :data:`FIGURES`. A missing value prints as
:data:`MISSING` everywhere.

**The metrics** (paper section III, supplement A; keys of
:meth:`hf_tsprompt.topology.PersistenceResult.summary` and
:func:`hf_tsprompt.topology.evolution`):

- ``n_points``: n, the number of prompt vectors.
- ``h0_count`` / ``h1_count``: ``|H0|`` (connected components, the infinite bar included) and
  ``|H1|`` (loops).
- ``hk_mean_lifespan``, ``hk_max_lifespan``, ``hk_total_lifespan``: mean, max and sum of the
  lifespans ``l_i = d_i - b_i`` of the finite Hk bars (Table II's ``Avg. l_i``).
- ``h0_death_variance``: the variance of the finite H0 death times, what L_H0 approximates
  (supplement B, Eq. 11).
- ``entropy``: the persistence entropy ``PE = -sum_i (l_i / L) log(l_i / L)`` of all finite H0
  and H1 bars (Eq. 10 / 12, nats); ``h0_entropy`` / ``h1_entropy`` per dimension.
- ``h1_density`` (``|H1| / n``) and ``point_density`` (1 / mean nearest-neighbour distance):
  Fig. 2a.
- ``hk_wasserstein`` / ``hk_bottleneck``: the structural evolution, W1 and bottleneck distance
  between the Hk diagrams of consecutive snapshots (infinite H0 bar left out).
- ``accuracy`` (a snapshot's), ``train_accuracy``, ``accuracy_before`` / ``accuracy_after``
  (the test set, before and after training): fractions, printed as percentages.
- ``loss`` (L_total = L_ce + λ_ts·L_ts), ``loss_ce`` (L_ce), ``loss_ts`` (L_ts, unweighted),
  ``ts_h0`` (L_H0, Eq. 2), ``ts_h1`` (L_H1, Eq. 3), ``ts_delta`` (δ) and ``ts_zeta`` (ζ, Eq. 4-5):
  the trainer's logs.
- ``spearman_rho``, ``spearman_p``, ``mannwhitney_u``, ``mannwhitney_p``: Table II's statistics.

**Formats** (:func:`format_number`): ``int`` (a count: ``8``), ``float`` (``digits``
significant digits: ``0.1235``), ``fixed`` (``digits`` decimals), ``percent`` (a fraction as
a percentage with ``digits`` decimals: ``12.5%``), ``pvalue`` (``1.87e-25`` below 1e-3, else
``digits`` decimals). ``None`` and NaN print as :data:`MISSING`.

**Extending.** :func:`register_metric` adds a metric (a new regulariser's logged term, say);
keys and labels stay unique. The vocabulary is the one registry of this module. A metric
that names a table in ``tables`` is printed in it on the card and in the report
(:mod:`hf_tsprompt.cards`) wherever the run folder holds its value; a regulariser's logged
term, for instance::

    register_metric(Metric("norm_mean", "mean row norm", "mean ||p_i||", tables=("training",)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError

__all__ = [
    "EVOLUTION_TABLE_KEYS",
    "FIGURES",
    "FIG_ACCURACY",
    "FIG_BARCODES",
    "FIG_DENSITY",
    "FIG_DIAGRAMS",
    "FIG_ENTROPY",
    "FIG_EVOLUTION",
    "FIG_HEATMAPS",
    "FIG_LOSS",
    "FIG_PCA",
    "FIG_TOPOLOGY_CURVES",
    "FIG_TSNE",
    "FORMAT_KINDS",
    "LOGGED_TOPOLOGY_KEYS",
    "LOG_PREFIX",
    "LOSS_KEYS",
    "MISSING",
    "SUMMARY_TABLE_KEYS",
    "TABLES",
    "TABLE_II_KEYS",
    "TABLE_II_STATISTICS",
    "TRAINER_LOG_KEYS",
    "FigureSpec",
    "Metric",
    "figure_spec",
    "format_number",
    "format_value",
    "get_metric",
    "metric_label",
    "register_metric",
    "table_keys",
    "vocabulary",
]

#: How a missing (or undefined: NaN, a constant metric's rho) value prints, everywhere.
MISSING = "N/A"
#: The formats of :func:`format_number`.
FORMAT_KINDS: tuple[str, ...] = ("int", "float", "fixed", "percent", "pvalue")
#: Prefix of the topology metrics in the trainer's logs (``topo/h1_count``).
LOG_PREFIX = "topo/"
#: The summary tables of the card and the report, and where each reads its metrics' values:
#: ``results`` (``run.json``'s value: one column), ``topology`` (``run.json``'s
#: ``topology_start`` / ``topology_end``: the first and the last snapshot), ``evolution``
#: (the records' step-to-step diagram distances: mean and max), ``training`` (the trainer's
#: logs in ``trainer_state.json``: the first and the last logged value).
TABLES: tuple[str, ...] = ("results", "topology", "evolution", "training")


def format_number(value: Any, kind: str = "float", digits: int = 4) -> str:
    """``value`` printed in format ``kind`` (see the module docstring); ``None``/NaN ->
    :data:`MISSING`, +-inf -> ``inf``/``-inf``, a non-number -> ``str(value)``."""
    if kind not in FORMAT_KINDS:
        raise ConfigError(f"unknown format {kind!r}; use one of {', '.join(FORMAT_KINDS)}.")
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "int":
        return str(round(x))
    if kind == "fixed":
        return f"{x:.{digits}f}"
    if kind == "percent":
        return f"{100 * x:.{digits}f}%"
    if kind == "pvalue":
        return f"{x:.2e}" if x < 1e-3 else f"{x:.{digits}f}"
    return f"{x:.{digits}g}"


@dataclass(frozen=True)
class Metric:
    """One measured quantity.

    Attributes:
        key: its name in records, ``run.json``, ``analysis.json`` and logs.
        label: the one wording printed for it (tables, card, report, figure titles).
        symbol: the paper's notation (Table II prints these).
        unit: what its value measures, for a figure axis ("" when dimensionless).
        kind: its format, one of :data:`FORMAT_KINDS`.
        digits: significant digits (``float``) or decimals (``fixed``, ``percent``, ``pvalue``).
        tables: the summary tables (:data:`TABLES`) of the card and the report that print it.
    """

    key: str
    label: str
    symbol: str
    unit: str = ""
    kind: str = "float"
    digits: int = 4
    tables: tuple[str, ...] = ()

    def format(self, value: Any) -> str:
        """``value`` in this metric's format (:func:`format_number`)."""
        return format_number(value, self.kind, self.digits)


# The registry: key -> Metric, in registration order (the order tables list them in).
_VOCABULARY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the vocabulary and return it.

    Raises:
        ConfigError: its key or label is already taken, its key is not a lower-case
            identifier, or its format is unknown.
    """
    if not (metric.key.isidentifier() and metric.key == metric.key.lower()):
        raise ConfigError(f"a metric key is a lower-case identifier, got {metric.key!r}.")
    if metric.kind not in FORMAT_KINDS:
        raise ConfigError(
            f"metric {metric.key!r}: unknown format {metric.kind!r}; use one of "
            f"{', '.join(FORMAT_KINDS)}."
        )
    unknown = [t for t in metric.tables if t not in TABLES]
    if isinstance(metric.tables, str) or unknown:
        raise ConfigError(
            f"metric {metric.key!r}: tables must be a tuple of {', '.join(TABLES)}, got "
            f"{metric.tables!r}."
        )
    if metric.key in _VOCABULARY:
        raise ConfigError(f"metric {metric.key!r} is already registered; pick another key.")
    taken = {m.label: m.key for m in _VOCABULARY.values()}
    if metric.label in taken:
        raise ConfigError(
            f"label {metric.label!r} of metric {metric.key!r} already names metric "
            f"{taken[metric.label]!r}; one label names one number."
        )
    _VOCABULARY[metric.key] = metric
    return metric


def get_metric(key: str) -> Metric:
    """The :class:`Metric` of ``key``.

    Raises:
        ConfigError: ``key`` is not in the vocabulary (the message lists the known keys).
    """
    try:
        return _VOCABULARY[key]
    except KeyError:
        raise ConfigError(
            f"unknown metric {key!r}; known: {', '.join(_VOCABULARY)}. Add one with "
            "hf_tsprompt.metrics.register_metric(Metric(...))."
        ) from None


def metric_label(key: str) -> str:
    """The label of metric ``key``."""
    return get_metric(key).label


def format_value(key: str, value: Any) -> str:
    """``value`` of metric ``key`` in that metric's format (``None`` -> :data:`MISSING`)."""
    return get_metric(key).format(value)


def vocabulary() -> tuple[Metric, ...]:
    """Every registered metric, in registration order."""
    return tuple(_VOCABULARY.values())


def table_keys(table: str) -> tuple[str, ...]:
    """The keys of the metrics that summary table ``table`` prints, in registration order,
    as the registry holds them now (a metric registered by a plugin included).

    Raises:
        ConfigError: ``table`` is not one of :data:`TABLES`.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}.")
    return tuple(m.key for m in _VOCABULARY.values() if table in m.tables)


#: The built-in metrics of the start / end topology table (``tables=("topology",)``).
SUMMARY_TABLE_KEYS: tuple[str, ...] = (
    "h0_count",
    "h1_count",
    "h0_mean_lifespan",
    "h1_mean_lifespan",
    "h0_max_lifespan",
    "h1_max_lifespan",
    "entropy",
)
#: The built-in metrics of the structural-evolution table (``tables=("evolution",)``).
EVOLUTION_TABLE_KEYS: tuple[str, ...] = (
    "h0_wasserstein",
    "h0_bottleneck",
    "h1_wasserstein",
    "h1_bottleneck",
)
#: The built-in tables of each built-in metric.
_BUILTIN_TABLES: dict[str, tuple[str, ...]] = {
    **{key: ("topology",) for key in SUMMARY_TABLE_KEYS},
    **{key: ("evolution",) for key in EVOLUTION_TABLE_KEYS},
    "accuracy_before": ("results",),
    "accuracy_after": ("results",),
}

_DISTANCE = "distance (prompt-vector units)"

for _metric in (
    Metric("n_points", "prompt vectors (n)", "n", "vectors", "int"),
    # Topology of one snapshot (PersistenceResult.summary).
    Metric("h0_count", "H0 count (components)", "|H0|", "number of H0 features", "int"),
    Metric("h1_count", "H1 count (loops)", "|H1|", "number of H1 features", "int"),
    Metric("h0_mean_lifespan", "mean H0 lifespan", "Avg. l_i (H0)", _DISTANCE),
    Metric("h1_mean_lifespan", "mean H1 lifespan", "Avg. l_i (H1)", _DISTANCE),
    Metric("h0_max_lifespan", "max H0 lifespan", "Max. l_i (H0)", _DISTANCE),
    Metric("h1_max_lifespan", "max H1 lifespan", "Max. l_i (H1)", _DISTANCE),
    Metric("h0_total_lifespan", "total H0 lifespan", "Sum l_i (H0)", _DISTANCE),
    Metric("h1_total_lifespan", "total H1 lifespan", "Sum l_i (H1)", _DISTANCE),
    Metric("h0_death_variance", "H0 death variance", "Var d_i (H0)", "squared distance"),
    Metric("entropy", "persistence entropy", "PE", "entropy (nats)"),
    Metric("h0_entropy", "H0 persistence entropy", "PE (H0)", "entropy (nats)"),
    Metric("h1_entropy", "H1 persistence entropy", "PE (H1)", "entropy (nats)"),
    Metric("h1_density", "H1 density", "|H1| / n", "H1 features per prompt vector"),
    Metric(
        "point_density",
        "point density",
        "1 / mean NN distance",
        "1 / mean nearest-neighbour distance",
    ),
    # Structural evolution between consecutive snapshots (topology.evolution).
    Metric("h0_wasserstein", "H0 Wasserstein (W1)", "W1(D0, D0')", _DISTANCE),
    Metric("h0_bottleneck", "H0 bottleneck", "W_inf(D0, D0')", _DISTANCE),
    Metric("h1_wasserstein", "H1 Wasserstein (W1)", "W1(D1, D1')", _DISTANCE),
    Metric("h1_bottleneck", "H1 bottleneck", "W_inf(D1, D1')", _DISTANCE),
    # Accuracy: of a snapshot (records), on the training set, on the test set (run.json).
    Metric("accuracy", "accuracy", "acc", "fraction correct", "percent", 1),
    Metric("train_accuracy", "train accuracy", "acc (train)", "fraction correct", "percent", 1),
    Metric("accuracy_before", "test accuracy before training", "acc (before)", "", "percent", 1),
    Metric("accuracy_after", "test accuracy after training", "acc (after)", "", "percent", 1),
    # The trainer's logs.
    Metric("loss", "total loss L_total = L_ce + λ_ts·L_ts", "L_total", "loss"),
    Metric("loss_ce", "cross-entropy L_ce", "L_ce", "loss (nats per token)"),
    Metric("loss_ts", "topological loss L_ts (unweighted)", "L_ts", "L_ts"),
    Metric("ts_h0", "H0 term L_H0", "L_H0", "squared distance"),
    Metric("ts_h1", "H1 term L_H1", "L_H1", ""),
    Metric("ts_delta", "soft minimum distance δ", "δ", _DISTANCE),
    Metric("ts_zeta", "soft maximum distance ζ", "ζ", _DISTANCE),
    # Table II's statistics (analysis.json).
    Metric("spearman_rho", "Spearman ρ", "ρ", "", "fixed", 3),
    Metric("spearman_p", "Spearman p-value", "p-value", "", "pvalue", 3),
    Metric("mannwhitney_u", "Mann-Whitney U", "U", "", "fixed", 1),
    Metric("mannwhitney_p", "Mann-Whitney p-value", "p-value", "", "pvalue", 3),
):
    register_metric(replace(_metric, tables=_BUILTIN_TABLES.get(_metric.key, ())))
del _metric

#: The metrics of Table II (the first five, in the paper's order) and three more.
TABLE_II_KEYS: tuple[str, ...] = (
    "h0_count",
    "h1_count",
    "h0_mean_lifespan",
    "h1_mean_lifespan",
    "entropy",
    "h0_max_lifespan",
    "h1_max_lifespan",
    "h1_density",
)
#: Table II's columns: Spearman rho and p, Mann-Whitney U and p.
TABLE_II_STATISTICS: tuple[str, ...] = (
    "spearman_rho",
    "spearman_p",
    "mannwhitney_u",
    "mannwhitney_p",
)
#: The summary metrics a snapshot logs as ``topo/<key>``.
LOGGED_TOPOLOGY_KEYS: tuple[str, ...] = (
    *SUMMARY_TABLE_KEYS,
    "h0_entropy",
    "h1_entropy",
    "h1_density",
    "point_density",
)
#: The losses of the loss figure, one panel each (total, CE, TS).
LOSS_KEYS: tuple[str, ...] = ("loss", "loss_ce", "loss_ts")
#: What ``TopologicalPromptTrainer`` logs beside ``loss``.
TRAINER_LOG_KEYS: tuple[str, ...] = ("loss_ce", "loss_ts", "ts_h0", "ts_h1", "ts_delta", "ts_zeta")


# -- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One figure of :mod:`hf_tsprompt.viz.plots`.

    Attributes:
        file: its file name under ``figures/``.
        title: the plot's title (before ": <run>") and the card's and report's caption.
        paper: the paper's figure or table it reproduces ("" when none).
    """

    file: str
    title: str
    paper: str = ""

    @property
    def stem(self) -> str:
        """The file name without ``.png`` (how plots names the figure in its warnings)."""
        return self.file.removesuffix(".png")

    @property
    def caption(self) -> str:
        """The title with the paper's figure, e.g. ``"Persistence entropy over training
        (Fig. 2b)"``."""
        return f"{self.title} ({self.paper})" if self.paper else self.title


FIG_DIAGRAMS = FigureSpec("diagrams.png", "Persistence diagrams of H0 and H1", "Fig. 1b")
FIG_BARCODES = FigureSpec("barcodes.png", "Persistence barcodes of H0 and H1", "Fig. 1d")
FIG_TOPOLOGY_CURVES = FigureSpec(
    "topology_curves.png", "H0/H1 counts and mean lifespans over training", "Figs. 1a, 1c"
)
FIG_ENTROPY = FigureSpec("entropy.png", "Persistence entropy over training", "Fig. 2b")
FIG_DENSITY = FigureSpec("density.png", "H1 density against point-cloud density", "Fig. 2a")
FIG_EVOLUTION = FigureSpec(
    "evolution.png", "Structural evolution of the persistence diagrams between snapshots"
)
FIG_HEATMAPS = FigureSpec("heatmaps.png", "Pairwise distances between prompt vectors", "Fig. 7")
FIG_PCA = FigureSpec("pca.png", "Prompt vectors over training, PCA", "Fig. 8")
FIG_TSNE = FigureSpec("tsne.png", "Prompt vectors over training, t-SNE", "Fig. 9")
FIG_LOSS = FigureSpec("loss.png", "Training loss and its parts over training", "Figs. 4, 5")
FIG_ACCURACY = FigureSpec("accuracy.png", "Accuracy at the topology snapshots", "Tables II, IV")

#: Every figure :mod:`hf_tsprompt.viz.plots` writes, in the order
#: :func:`~hf_tsprompt.viz.plots.plot_run` draws them.
FIGURES: tuple[FigureSpec, ...] = (
    FIG_DIAGRAMS,
    FIG_BARCODES,
    FIG_TOPOLOGY_CURVES,
    FIG_ENTROPY,
    FIG_DENSITY,
    FIG_EVOLUTION,
    FIG_HEATMAPS,
    FIG_PCA,
    FIG_TSNE,
    FIG_LOSS,
    FIG_ACCURACY,
)


def figure_spec(name: str) -> FigureSpec:
    """The :class:`FigureSpec` of a file name (``"pca.png"``) or stem (``"pca"``).

    Raises:
        ConfigError: no such figure (the message lists them).
    """
    for spec in FIGURES:
        if name in (spec.file, spec.stem):
            return spec
    raise ConfigError(
        f"unknown figure {name!r}; the figures are {', '.join(s.file for s in FIGURES)}."
    )
