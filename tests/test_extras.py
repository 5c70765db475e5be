"""The optional extras (hf_tsprompt/extras.py): one table, matching pyproject, and a clear error.

The missing-extra behaviour is checked in a fresh interpreter in which matplotlib and gguf
cannot be imported (``sys.modules[name] = None``, which is what Python does for a package that
is not installed: ``import`` raises ``ModuleNotFoundError`` and ``find_spec`` returns None).
scikit-learn and threadpoolctl cannot be hidden that way: the core's ``ripser`` imports
scikit-learn (which imports threadpoolctl) when it loads, so they are always installed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from hf_tsprompt.errors import MissingDependencyError
from hf_tsprompt.extras import EXTRAS, missing_modules, require_extra

from procs import run_process

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HIDDEN = ("matplotlib", "gguf")


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_table_matches_pyprojects_extras():
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert set(optional) - {"test"} == set(EXTRAS)
    providers = packages_distributions()
    for name, extra in EXTRAS.items():
        listed = {_canon(Requirement(r).name) for r in optional[name]}
        assert listed == {_canon(r) for r in extra.requirements}, name
        for module in extra.modules:  # each import name comes from one of the extra's packages
            assert {_canon(d) for d in providers.get(module, [])} & listed, (name, module)
        assert (ROOT / "hf_tsprompt" / name / "__init__.py").is_file()  # its own subpackage


def test_installed_extras_pass_and_unknown_names_fail():
    assert missing_modules("viz") == [] and missing_modules("embedded") == []
    require_extra("viz", "this test")  # installed here: no error
    with pytest.raises(KeyError, match="unknown extra 'vis'; known: embedded, viz"):
        require_extra("vis", "this test")


SCRIPT = """
import importlib, json, pkgutil, sys
for name in {hidden!r}:
    sys.modules[name] = None  # as if not installed
import hf_tsprompt
from hf_tsprompt.errors import MissingDependencyError
out = {{"core": [], "errors": {{}}}}
for info in pkgutil.walk_packages(hf_tsprompt.__path__, "hf_tsprompt."):
    if info.name.startswith(("hf_tsprompt.viz", "hf_tsprompt.__main__")):
        continue
    importlib.import_module(info.name)  # every core module imports without the extras
    out["core"].append(info.name)
for what, call in (
    ("viz", lambda: importlib.import_module("hf_tsprompt.viz.plots")),
    ("embedded", lambda: importlib.import_module("hf_tsprompt.embedded")._check_gguf_deps()),
):
    try:
        call()
    except MissingDependencyError as err:
        out["errors"][what] = str(err)
from hf_tsprompt.cli import main
out["plot_rc"] = main(["plot", "no-such-run"])
out["report_rc"] = main(["report", "no-such-run"])
print(json.dumps(out))
"""


def test_without_the_extras_the_core_imports_and_the_rest_names_its_extra(tmp_path):
    proc = run_process(
        [sys.executable, "-c", textwrap.dedent(SCRIPT.format(hidden=HIDDEN))],
        cwd=tmp_path,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for module in ("trainer", "callbacks", "losses", "topology", "hub", "pipeline", "paper.dpc"):
        assert f"hf_tsprompt.{module}" in out["core"]
    assert "pip install 'hf-tsprompt[viz]'" in out["errors"]["viz"]
    assert "matplotlib is not installed" in out["errors"]["viz"]
    assert "pip install 'hf-tsprompt[embedded]'" in out["errors"]["embedded"]
    assert out["plot_rc"] == 2 and out["report_rc"] == 2  # a usage error, not a traceback
    assert " ".join(proc.stderr.split()).count("pip install 'hf-tsprompt[viz]'") == 2
    assert "Traceback" not in proc.stderr


def test_the_error_is_an_import_error_users_can_catch(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed, in this process
    assert missing_modules("embedded") == ["gguf"]
    with pytest.raises(ImportError, match=r"pip install 'hf-tsprompt\[embedded\]'") as info:
        require_extra("embedded", "this test")
    assert isinstance(info.value, MissingDependencyError)
    assert "this test needs the [embedded] extra" in str(info.value)
