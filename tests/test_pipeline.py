"""Tests of hf_tsprompt.pipeline's own pieces: it orchestrates.

(Training end to end through the pipeline is tested in test_cli.py and test_reliability.py;
the run folder in test_runs.py; a finished run's evaluation and ACT heads in
test_finished.py and test_calibration.py.)
"""

from hf_tsprompt import pipeline
from hf_tsprompt.metrics import metric_label
from hf_tsprompt.pipeline import RunResult, format_summary, versions


def test_versions_name_the_frameworks_a_run_used():
    found = versions()
    assert {"python", "torch", "transformers", "peft"} <= set(found)
    assert all(isinstance(v, str) and v for v in found.values())


def test_format_summary_names_every_part_of_the_run_folder(tmp_path):
    key = pipeline.SUMMARY_METRICS[0]
    result = RunResult(tmp_path, 0.25, 0.5, {key: 2.0}, {key: 1.0}, global_step=7)
    text = format_summary(result)
    assert "25" in text and "50" in text and "steps: 7" in text
    assert metric_label(key) in text
    for part in ("adapter", "barcodes", "figures", "card"):
        assert f"{part}:" in text
