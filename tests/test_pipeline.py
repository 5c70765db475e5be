"""Tests of hf_tsprompt.pipeline's own pieces: it orchestrates, and says why it imports late.

(Training end to end through the pipeline is tested in test_cli.py and test_reliability.py;
the run folder in test_runs.py; a finished run's evaluation and ACT heads in
test_finished.py and test_calibration.py.)
"""

import ast
import inspect
from pathlib import Path

from hf_tsprompt import pipeline
from hf_tsprompt.metrics import metric_label, table_keys
from hf_tsprompt.pipeline import RunResult, format_summary, versions


def test_versions_name_the_frameworks_a_run_used():
    found = versions()
    assert {"python", "torch", "transformers", "peft"} <= set(found)
    assert all(isinstance(v, str) and v for v in found.values())


def test_format_summary_names_every_part_of_the_run_folder(tmp_path):
    key = table_keys("topology")[0]
    result = RunResult(tmp_path, 0.25, 0.5, {key: 2.0}, {key: 1.0}, global_step=7)
    text = format_summary(result)
    assert "25" in text and "50" in text and "steps: 7" in text
    assert metric_label(key) in text
    for part in ("adapter", "barcodes", "figures", "card"):
        assert f"{part}:" in text


def test_every_import_inside_a_function_says_why_it_is_lazy():
    """The CLI imports the pipeline lazily, so hiding a dependency inside a function here
    buys nothing: each late import must keep an optional extra out (``# lazy: <reason>``)."""
    source = Path(inspect.getfile(pipeline)).read_text(encoding="utf-8")
    lines = source.splitlines()
    unexplained = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here = lines[node.lineno - 1] + lines[node.lineno - 2]
                if "# lazy: " not in here:
                    unexplained.append(f"pipeline.py:{node.lineno}: {lines[node.lineno - 1]}")
    assert unexplained == []
