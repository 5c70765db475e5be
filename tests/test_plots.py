"""Every figure of plots.py on a real tiny run; missing data skips a figure, never crashes."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from hf_tsprompt.callbacks import PersistenceCallback
from hf_tsprompt.errors import ConfigError, MissingFileError
from hf_tsprompt.prompts import get_prompt_model
from hf_tsprompt.records import (
    RECORDS_FILE,
    make_record,
    prompt_file_name,
    read_records,
    topology_dir,
    write_snapshot,
)
from hf_tsprompt.topology import persistence
from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer
from hf_tsprompt.viz import plots

from tiny import tiny_llama, tiny_lm_dataset

SINGLE_RUN = {
    "plot_diagrams": "diagrams.png",
    "plot_barcodes": "barcodes.png",
    "plot_heatmaps": "heatmaps.png",
}
MULTI_RUN = {
    "plot_topology_curves": "topology_curves.png",
    "plot_entropy": "entropy.png",
    "plot_density": "density.png",
    "plot_evolution": "evolution.png",
    "plot_pca": "pca.png",
    "plot_tsne": "tsne.png",
    "plot_loss": "loss.png",
    "plot_accuracy": "accuracy.png",
}
ALL_FIGURES = sorted({**SINGLE_RUN, **MULTI_RUN}.values())


def _train_run(tokenizer, out: Path, ts_weight: float, steps: int = 10) -> Path:
    torch.manual_seed(0)
    model = get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=8)
    calls = []

    def evaluate(_model):
        calls.append(1)
        acc = min(1.0, len(calls) / 4)  # rises, reaches 100% at the 4th snapshot (step 9)
        return {"accuracy": 0.8 * acc, "correct": len(calls), "total": 4, "train_accuracy": acc}

    args = TopologicalPromptConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=steps,
        logging_steps=1,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        ts_weight=ts_weight,
    )
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer, 8),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        callbacks=[PersistenceCallback(every_n_steps=3, evaluate=evaluate)],
    )
    trainer.train()
    trainer.save_state()  # trainer_state.json with the log history, as the CLI's runs have
    return out


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """Two real runs: baseline (6 steps, snapshots at 0, 3, 6) and TSLoss (10 steps, snapshots
    at 0, 3, 6, 9, 10); runs of different lengths overlay on one step axis."""
    base = tmp_path_factory.mktemp("runs")
    return (
        _train_run(tokenizer, base / "baseline", ts_weight=0.0, steps=6),
        _train_run(tokenizer, base / "tsloss", ts_weight=1.0),
    )


@pytest.fixture
def run(runs, tmp_path) -> Path:
    """A private copy of the TSLoss run, free to be damaged by the test."""
    return Path(shutil.copytree(runs[1], tmp_path / "run"))


@pytest.fixture
def drawn(monkeypatch):
    """Every figure passed to ``plots._save``, to inspect its panels."""
    figures = []
    save = plots._save

    def spy(fig, out_dir, name):
        figures.append(fig)
        return save(fig, out_dir, name)

    monkeypatch.setattr(plots, "_save", spy)
    return figures


def assert_png(path: Path) -> None:
    """A readable PNG of a real figure: not tiny, not one flat colour."""
    assert path.suffix == ".png" and path.is_file()
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 250 and img.shape[1] >= 350
    rgb = img[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02
    assert len(np.unique(rgb, axis=0)) > 30


def assert_no_empty_panel(fig) -> None:
    for ax in fig.axes:
        assert ax.has_data(), f"empty panel {ax.get_title()!r}"
        assert ax.get_label() == "<colorbar>" or ax.get_xlabel() or ax.get_title()


@pytest.mark.parametrize("name", sorted(SINGLE_RUN))
def test_single_run_figures(runs, tmp_path, name, drawn):
    paths = getattr(plots, name)(runs[1], tmp_path)
    assert paths == [tmp_path / SINGLE_RUN[name]]
    assert_png(paths[0])
    assert_no_empty_panel(drawn[0])


@pytest.mark.parametrize("name", sorted(MULTI_RUN))
def test_overlay_figures_of_one_run(runs, tmp_path, name, drawn):
    paths = getattr(plots, name)(runs[1], tmp_path)
    assert paths == [tmp_path / MULTI_RUN[name]]
    assert_png(paths[0])
    assert_no_empty_panel(drawn[0])


def test_plot_runs_overlays_two_runs(runs, tmp_path, drawn):
    paths = plots.plot_runs(list(runs), tmp_path, labels=["baseline", "TSLoss"])
    assert sorted(p.name for p in paths) == sorted(MULTI_RUN.values())
    for path, fig in zip(paths, drawn, strict=True):
        assert_png(path)
        assert_no_empty_panel(fig)
        # both runs are named (legend, or panel titles for PCA / t-SNE)
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        assert any("baseline" in t for t in texts) and any("TSLoss" in t for t in texts), path


def test_plot_run_writes_every_figure_into_the_run(run):
    paths = plots.plot_run(run)
    assert sorted(p.name for p in paths) == ALL_FIGURES
    assert all(p.parent == run / "figures" for p in paths)
    for p in paths:
        assert_png(p)
    assert not list((run / "figures").glob(".*.tmp"))  # atomic writes leave no temp files


def test_snapshot_choice(runs, tmp_path, drawn):
    plots.plot_diagrams(runs[1], tmp_path, steps=[0, 10])
    assert [ax.get_title() for ax in drawn[0].axes] == [
        "step 0 (initial), test acc 0.20",  # eval has the test counts
        "step 10 (final), test acc 0.80",
    ]
    with pytest.raises(ConfigError, match=r"no snapshot at step\(s\) \[7\]"):
        plots.plot_barcodes(runs[1], tmp_path, steps=[0, 7])


def test_no_trainer_state_skips_the_loss_figure(run, tmp_path, caplog):
    (run / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        assert plots.plot_loss(run, tmp_path) == []
    assert "no trainer_state.json" in caplog.text and "figure loss skipped" in caplog.text


def test_trainer_state_of_the_latest_checkpoint_is_used(run, tmp_path):
    ckpt = run / "checkpoint-10"
    ckpt.mkdir()
    (run / "trainer_state.json").rename(ckpt / "trainer_state.json")
    (run / "checkpoint-4").mkdir()  # an older checkpoint without state is ignored
    assert plots.plot_loss(run, tmp_path) == [tmp_path / "loss.png"]


def test_unreadable_trainer_state_is_a_reason_not_a_crash(run, tmp_path, caplog):
    (run / "trainer_state.json").write_text("{ torn")
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        assert plots.plot_loss(run, tmp_path) == []
    assert "unreadable" in caplog.text


def test_no_prompt_files_skips_the_geometry_figures(run, tmp_path, caplog):
    shutil.rmtree(run / "topology" / "prompts")
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        for fn in (plots.plot_heatmaps, plots.plot_pca, plots.plot_tsne):
            assert fn(run, tmp_path) == []
    assert "no saved prompt arrays" in caplog.text
    assert plots.plot_diagrams(run, tmp_path)  # the topology itself is in the records


def test_no_accuracy_skips_the_accuracy_figure(run, tmp_path, caplog):
    file = run / "topology" / RECORDS_FILE
    lines = []
    for line in file.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("accuracy", None)
        rec.pop("eval", None)
        lines.append(json.dumps(rec))
    file.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        assert plots.plot_accuracy(run, tmp_path) == []
    assert "no run has two or more accuracies" in caplog.text
    assert plots.plot_diagrams(run, tmp_path)  # panel titles simply omit the accuracy


def test_no_records_leaves_only_the_loss(run, tmp_path, caplog):
    shutil.rmtree(run / "topology")
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        paths = plots.plot_run(run, tmp_path)
    assert [p.name for p in paths] == ["loss.png"]
    assert "records.jsonl" in caplog.text


def test_a_run_without_records_is_left_out_of_an_overlay(runs, run, tmp_path, caplog, drawn):
    shutil.rmtree(run / "topology")
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        paths = plots.plot_topology_curves([runs[0], run], tmp_path, labels=["a", "b"])
    assert paths == [tmp_path / "topology_curves.png"]
    assert "run 'b' left out" in caplog.text


def test_bad_arguments(runs, tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        plots.plot_diagrams(tmp_path / "nope", tmp_path)
    with pytest.raises(MissingFileError, match="does not exist"):
        plots.plot_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no run folder"):
        plots.plot_entropy([], tmp_path)
    with pytest.raises(ConfigError, match="1 label"):
        plots.plot_loss(list(runs), tmp_path, labels=["only one"])


def _tiny_run(folder: Path, n_points: int, n_snapshots: int = 1) -> Path:
    tdir = topology_dir(folder)
    rng = np.random.default_rng(1)
    for step in range(n_snapshots):
        P = rng.normal(size=(n_points, 5)).astype(np.float32)
        rec = make_record(
            step=step,
            epoch=None,
            event="step",
            result=persistence(P),
            prompt_file=prompt_file_name(step),
            time=0.0,
        )
        write_snapshot(tdir, rec, P)
    return folder


@pytest.mark.parametrize("fn", [plots.plot_pca, plots.plot_tsne])
def test_embeddings_of_three_points(tmp_path, fn, drawn):
    run = _tiny_run(tmp_path / "three", n_points=3)
    paths = fn(run, tmp_path / "out")
    assert len(paths) == 1
    assert_png(paths[0])
    assert_no_empty_panel(drawn[0])


def test_embeddings_of_fewer_than_three_points_are_skipped(tmp_path, caplog):
    run = _tiny_run(tmp_path / "two", n_points=2)
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        assert plots.plot_tsne(run, tmp_path) == []
    assert "fewer than 3 prompt vectors" in caplog.text


def test_single_snapshot_run_draws_no_curve(tmp_path, caplog):
    run = _tiny_run(tmp_path / "one", n_points=6)
    assert len(read_records(run)) == 1
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        names = sorted(p.name for p in plots.plot_run(run, tmp_path / "out"))
    # one point is no curve over training: only the per-snapshot figures are drawn
    assert names == ["barcodes.png", "diagrams.png", "heatmaps.png", "pca.png", "tsne.png"]
    assert "1 snapshot(s), a curve needs 2" in caplog.text


def _persim_finite(a: np.ndarray, b: np.ndarray, fn) -> float:
    """persim on the finite bars, the empty diagram as persim's own [[0, 0]] stand-in."""
    a, b = a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]
    return float(fn(a if len(a) else np.zeros((1, 2)), b if len(b) else np.zeros((1, 2))))


def test_evolution_figure_draws_the_distances_between_consecutive_snapshots(tmp_path, drawn):
    from persim import bottleneck, wasserstein

    # Records without a stored "evolution" (written before it existed): computed from diagrams.
    run = _tiny_run(tmp_path / "old", n_points=7, n_snapshots=4)
    assert all("evolution" not in r for r in read_records(run))
    assert plots.plot_evolution(run, tmp_path / "out") == [tmp_path / "out" / "evolution.png"]
    records = read_records(run)
    (w_ax, b_ax) = drawn[0].axes
    for ax, fn in ((w_ax, wasserstein), (b_ax, bottleneck)):
        for line, k in zip(ax.get_lines(), (0, 1), strict=True):
            assert list(line.get_xdata()) == [1, 2, 3]
            expected = [
                _persim_finite(p["diagrams_np"][k], r["diagrams_np"][k], fn)
                for p, r in itertools.pairwise(records)
            ]
            assert np.allclose(line.get_ydata(), expected, rtol=1e-12, atol=0)
            assert max(expected) > 0


def test_evolution_needs_three_snapshots(tmp_path, caplog):
    run = _tiny_run(tmp_path / "two", n_points=6, n_snapshots=2)
    with caplog.at_level(logging.WARNING, logger="hf_tsprompt.viz.plots"):
        assert plots.plot_evolution(run, tmp_path) == []
    assert "a curve needs 3" in caplog.text


def test_no_global_matplotlib_state_leaks(runs, tmp_path):
    backend = matplotlib.get_backend()  # resolving the backend may itself set rcParams
    before = dict(matplotlib.rcParams)
    plots.plot_pca(list(runs), tmp_path)
    plots.plot_diagrams(runs[0], tmp_path)
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def _rewrite_records(run: Path, edit) -> None:
    path = run / "topology" / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(edit(r)) + "\n" for r in records))


def test_a_training_set_accuracy_is_named_as_such(run, tmp_path, drawn):
    """The pipeline's default (topology.evaluate: train) stores the training accuracy as the
    snapshot's accuracy: panel titles and the accuracy figure say so, and draw it once."""

    def as_training_accuracy(record):
        acc = record["eval"]["train_accuracy"]
        return {**record, "accuracy": acc, "eval": {"train_accuracy": acc, "train_correct": 1}}

    _rewrite_records(run, as_training_accuracy)
    plots.plot_barcodes(run, tmp_path, steps=[0, 10])
    assert [ax.get_title().split("\n")[0] for ax in drawn[0].axes] == [
        "step 0 (initial), train acc 0.25",
        "step 10 (final), train acc 1.00",
    ]
    plots.plot_accuracy(run, tmp_path)
    (ax,) = drawn[1].axes
    assert len(ax.get_lines()) == 2  # the training curve and the 100% marker, no copy of it
    legend = [t.get_text() for t in drawn[1].legends[0].get_texts()]
    assert "train accuracy" in legend and "accuracy" not in legend


def test_loss_panels_name_what_the_run_trained_with(run, tmp_path, drawn):
    """A run without a regulariser logs no L_ts: its total is the cross-entropy, and no
    panel claims L_total = L_ce + λ_ts·L_ts; a non-TSLoss regulariser's term is not L_ts."""
    state_file = run / "trainer_state.json"
    state = json.loads(state_file.read_text())
    plain = dict(state, log_history=[
        {k: v for k, v in h.items() if not k.startswith(("loss_ts", "ts_"))}
        for h in state["log_history"]
    ])  # fmt: skip
    state_file.write_text(json.dumps(plain))
    plots.plot_loss(run, tmp_path)
    titles = [ax.get_title() for ax in drawn[0].axes]
    assert titles[0] == "training loss (cross-entropy; no regulariser logged)"
    assert not any("λ_ts" in t or "L_ts" in t for t in titles)
    state_file.write_text(json.dumps(state))
    (run / "recipe.yaml").write_text("ts: {regularizer: l2}\n")
    plots.plot_loss(run, tmp_path)
    titles = [ax.get_title() for ax in drawn[1].axes]
    assert "regulariser loss L_reg (unweighted)" in titles
    (run / "recipe.yaml").write_text("ts: {regularizer: tsloss}\n")
    plots.plot_loss(run, tmp_path)
    assert "topological loss L_ts (unweighted)" in [ax.get_title() for ax in drawn[2].axes]
