"""hf_tsprompt.metrics: the one vocabulary of metrics and the one table of figures.

The vocabulary is checked on its own (unique keys and labels, formats with hand-computed
strings), against the modules that store the keys (topology, callbacks, analysis), and end to
end: the real plotting on a small recorded run writes exactly the figures of the table, and a
card and a report of the same run print the same label with the same number.
"""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from hf_tsprompt import metrics
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.metrics import (
    EVOLUTION_TABLE_KEYS,
    FIGURES,
    LOGGED_TOPOLOGY_KEYS,
    LOSS_KEYS,
    MISSING,
    SUMMARY_TABLE_KEYS,
    TABLE_II_KEYS,
    TABLE_II_STATISTICS,
    TRAINER_LOG_KEYS,
    FigureSpec,
    Metric,
    figure_spec,
    format_number,
    format_value,
    get_metric,
    metric_label,
    register_metric,
    vocabulary,
)
from hf_tsprompt.records import make_record, prompt_file_name, topology_dir, write_snapshot
from hf_tsprompt.topology import EVOLUTION_KEYS, SUMMARY_KEYS, persistence
from hf_tsprompt.viz import plots

# --- the vocabulary ------------------------------------------------------------------------


def test_keys_and_labels_are_unique_and_every_group_is_registered():
    vocab = vocabulary()
    keys = [m.key for m in vocab]
    labels = [m.label for m in vocab]
    assert len(set(keys)) == len(keys) and len(set(labels)) == len(labels)
    assert all(m.kind in metrics.FORMAT_KINDS and m.symbol for m in vocab)
    groups = (
        SUMMARY_TABLE_KEYS,
        EVOLUTION_TABLE_KEYS,
        TABLE_II_KEYS,
        TABLE_II_STATISTICS,
        LOGGED_TOPOLOGY_KEYS,
        LOSS_KEYS,
        TRAINER_LOG_KEYS,
    )
    for group in groups:
        assert len(set(group)) == len(group)
        assert set(group) <= set(keys), set(group) - set(keys)


def test_the_stored_keys_are_the_vocabulary_keys():
    from hf_tsprompt.analysis import METRIC_LABELS, METRICS
    from hf_tsprompt.callbacks import LOGGED_KEYS

    # Every number PersistenceResult.summary() and evolution() store has a metric.
    assert set(SUMMARY_KEYS) <= {m.key for m in vocabulary()}
    assert EVOLUTION_TABLE_KEYS == EVOLUTION_KEYS
    assert LOGGED_KEYS == LOGGED_TOPOLOGY_KEYS and set(LOGGED_KEYS) <= set(SUMMARY_KEYS)
    assert METRICS == TABLE_II_KEYS
    # Table II keeps the paper's notation: the metrics' symbols.
    assert METRIC_LABELS["h0_count"] == "|H0|"
    assert METRIC_LABELS["h0_mean_lifespan"] == "Avg. l_i (H0)"
    assert METRIC_LABELS["entropy"] == "PE"
    assert [get_metric(k).symbol for k in TABLE_II_STATISTICS] == ["ρ", "p-value", "U", "p-value"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("h0_count", 8.0, "8"),  # counts are stored as floats
        ("h1_count", 0.0, "0"),
        ("h0_mean_lifespan", 0.123456, "0.1235"),  # 4 significant digits
        ("h0_max_lifespan", 1234567.0, "1.235e+06"),
        ("entropy", 2.0, "2"),
        ("h0_wasserstein", 0.000123456, "0.0001235"),
        ("accuracy_after", 0.125, "12.5%"),
        ("accuracy_before", 1 / 3, "33.3%"),
        ("train_accuracy", 1.0, "100.0%"),
        ("spearman_rho", -0.32449, "-0.324"),
        ("mannwhitney_u", 2664.5, "2664.5"),
        ("spearman_p", 1.87e-25, "1.87e-25"),  # below 1e-3: scientific
        ("mannwhitney_p", 0.0123, "0.012"),
        ("mannwhitney_p", 1.0, "1.000"),
    ],
)
def test_format_value(key, value, expected):
    assert format_value(key, value) == expected
    assert format_value(key, np.float32(value)) == format_value(key, float(np.float32(value)))


def test_a_missing_value_prints_the_same_for_every_metric():
    assert MISSING == "N/A"
    for m in vocabulary():
        assert format_value(m.key, None) == MISSING
        assert format_value(m.key, math.nan) == MISSING
    assert format_number(math.inf) == "inf" and format_number(-math.inf, "percent") == "-inf"
    assert format_number("prompt_tuning") == "prompt_tuning"  # a non-number passes through


def test_unknown_names_and_bad_entries_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError, match="unknown metric 'h2_count'.*register_metric"):
        metric_label("h2_count")
    with pytest.raises(ConfigError, match="unknown format 'pct'"):
        format_number(0.5, "pct")
    with pytest.raises(ConfigError, match="unknown figure 'loss.svg'.*loss.png"):
        figure_spec("loss.svg")
    # Registering: into a copy of the registry, so the test leaves the vocabulary as it was.
    monkeypatch.setattr(metrics, "_VOCABULARY", dict(metrics._VOCABULARY))
    added = register_metric(Metric("ts_repel", "repulsion term", "L_rep", kind="fixed", digits=2))
    assert get_metric("ts_repel") is added and format_value("ts_repel", 0.126) == "0.13"
    with pytest.raises(ConfigError, match="already registered"):
        register_metric(Metric("ts_repel", "another label", "x"))
    with pytest.raises(ConfigError, match="already names metric 'h0_count'"):
        register_metric(Metric("h0_components", "H0 count (components)", "x"))
    with pytest.raises(ConfigError, match="lower-case identifier"):
        register_metric(Metric("H0 Count", "x", "x"))
    with pytest.raises(ConfigError, match="unknown format"):
        register_metric(Metric("odd", "odd", "x", kind="percentage"))


def test_the_figure_table():
    files = [f.file for f in FIGURES]
    assert len(set(files)) == len(files) and all(f.endswith(".png") for f in files)
    assert len({f.title for f in FIGURES}) == len(FIGURES)
    spec = figure_spec("entropy")
    assert spec is figure_spec("entropy.png") and spec.stem == "entropy"
    assert spec.caption == "Persistence entropy over training (Fig. 2b)"
    assert FigureSpec("x.png", "X").caption == "X"  # no paper figure: the title alone


# --- a small recorded run ---------------------------------------------------------------------


def _recorded_run(folder: Path, seed: int = 0) -> Path:
    """A run folder without training: four snapshots (with accuracies), a trainer_state.json
    with the three losses, run.json and an adapter_config.json (all the card reads)."""
    rng = np.random.default_rng(seed)
    tdir = topology_dir(folder)
    P = rng.normal(size=(8, 4)).astype(np.float32)
    summaries = []
    for i, step in enumerate((0, 2, 4, 6)):
        P = P + 0.3 * rng.normal(size=P.shape).astype(np.float32)
        result = persistence(P)
        summaries.append(result.summary())
        record = make_record(
            step=step,
            epoch=None,
            event="step",
            result=result,
            prompt_file=prompt_file_name(step),
            time=0.0,
            accuracy=0.25 * i,
            eval_info={"train_accuracy": min(1.0, 0.4 * i)},
        )
        write_snapshot(tdir, record, P)
    history = [
        {"step": s, "loss": 3.0 / s, "loss_ce": 2.9 / s, "loss_ts": 0.1 / s} for s in range(1, 7)
    ]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    adapter = folder / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "PROMPT_TUNING",
                "num_virtual_tokens": 8,
                "base_model_name_or_path": "tiny/model",
            }
        )
    )
    info = {
        "name": "recorded",
        "method": "prompt_tuning",
        "num_virtual_tokens": 8,
        "base_model": "tiny/model",
        "accuracy_before": None,  # not measured: prints as MISSING in both
        "accuracy_after": 0.125,
        "test_size": 8,
        # Hand-picked values, so the expected strings below are computed by hand.
        "topology_start": {
            "h0_count": 8.0,
            "h1_count": 2.0,
            "h0_mean_lifespan": 0.123456,
            "h1_mean_lifespan": 0.0,
            "h0_max_lifespan": 1.5,
            "h1_max_lifespan": 0.05,
            "entropy": 2.0794415,
        },
        "topology_end": summaries[-1],
    }
    (folder / "run.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return _recorded_run(tmp_path_factory.mktemp("metrics") / "run")


def test_plots_write_exactly_the_figures_of_the_table(recorded, tmp_path, monkeypatch):
    saved: list[tuple[str, object]] = []
    save = plots._save

    def spy(fig, out_dir, name):
        saved.append((name, fig))
        return save(fig, out_dir, name)

    monkeypatch.setattr(plots, "_save", spy)
    other = _recorded_run(tmp_path / "other", seed=1)
    written = plots.plot_run(recorded, tmp_path / "one")
    written += plots.plot_runs([recorded, other], tmp_path / "two", labels=["a", "b"])
    assert {p.name for p in written} == {f.file for f in FIGURES}
    for name, fig in saved:
        # Each figure is titled by its table entry (the accuracy figure on its one axes).
        title = fig.get_suptitle() or fig.axes[0].get_title()
        assert title.startswith(figure_spec(name).title), (name, title)


# --- the card and the report print the same labels and numbers -------------------------------


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []

    def handle_data(self, data: str) -> None:
        self.cells.append(data)


def test_card_and_report_print_the_same_label_with_the_same_number(recorded, tmp_path):
    from hf_tsprompt.hub import build_model_card
    from hf_tsprompt.records import evolution_stats, read_records
    from hf_tsprompt.viz.report import build_report

    run = Path(shutil.copytree(recorded, tmp_path / "run"))
    plots.plot_run(run)  # the card embeds the figures the run folder has
    card = str(build_model_card(run))
    parser = _Text()
    parser.feed(build_report(run, tmp_path / "report.html", explain=False).read_text())
    cells = parser.cells

    def report_row(label: str, n: int) -> list[str]:
        i = cells.index(label)
        return cells[i + 1 : i + 1 + n]

    info = json.loads((run / "run.json").read_text())
    end = info["topology_end"]
    # By hand: counts as integers, lifespans and entropy to 4 significant digits.
    by_hand = {
        "h0_count": "8",
        "h1_count": "2",
        "h0_mean_lifespan": "0.1235",
        "h1_mean_lifespan": "0",
        "h0_max_lifespan": "1.5",
        "h1_max_lifespan": "0.05",
        "entropy": "2.079",
    }
    for key in SUMMARY_TABLE_KEYS:
        label = metric_label(key)
        values = [by_hand[key], format_value(key, end[key])]
        assert f"| {label} | {values[0]} | {values[1]} |" in card
        assert report_row(label, 2) == values
        assert f"{label} (start → end)" not in cells  # one run: no comparison table
    stats = evolution_stats(read_records(run))
    assert set(stats) == set(EVOLUTION_TABLE_KEYS)
    for key in EVOLUTION_TABLE_KEYS:
        label = metric_label(key)
        values = [format_value(key, stats[key]["mean"]), format_value(key, stats[key]["max"])]
        assert f"| {label} | {values[0]} | {values[1]} |" in card
        assert report_row(label, 2) == values
    for key, value in (("accuracy_before", MISSING), ("accuracy_after", "12.5%")):
        label = metric_label(key)
        assert f"| {label} | {value} |" in card
        assert report_row(label, 1) == [value]
    # The figures both show carry the table's captions.
    for spec in FIGURES:
        if (run / "figures" / spec.file).is_file() and f"figures/{spec.file})" in card:
            assert f"**{spec.caption}**" in card
            assert spec.caption in cells
