"""What ``pip install hf-tsprompt`` (the core, no extras) installs, and how long the imports take.

::

    python bench/lean_core.py --project /path/to/checkout --label after

For the checkout at ``--project`` (its pyproject and ``constraints.txt``):

- **install set**: pip resolves ``<project>[<extras>]`` with ``--dry-run --ignore-installed
  --report`` (nothing is installed), pinned by the checkout's ``constraints.txt`` and torch
  2.13.0 as the README's commands are; each distribution's installed size is then summed from
  its ``RECORD`` in this interpreter's environment (which must hold those versions: a
  distribution missing here, or at another version, is listed under ``unmeasured``). torch is
  reported on its own line too, since it is most of any install.
- **import time**: the wall time of ``import hf_tsprompt``, ``from hf_tsprompt import
  TopologicalPromptTrainer`` and ``import hf_tsprompt.pipeline``, each in a fresh interpreter
  with the checkout first on ``sys.path``, ``--repeats`` times (median and range), and which
  of the optional extras' modules (matplotlib, sklearn, gguf) each import loaded.

Appends one JSON line per run to ``--out`` (default ``bench/results/lean_core.jsonl``) with the
provenance of :func:`common.run_metadata` plus the measured checkout's own commit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, LoadMonitor, run_metadata

from hf_tsprompt.fsutil import append_line

#: Statements timed, each in a fresh interpreter.
IMPORTS = {
    "import hf_tsprompt": "import hf_tsprompt",
    "trainer": "from hf_tsprompt import TopologicalPromptTrainer",
    "pipeline": "import hf_tsprompt.pipeline",
}
#: Modules of the optional extras whose loading each import reports.
WATCHED = ("matplotlib", "sklearn", "gguf", "scipy", "torch")


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install_set(project: Path, extras: str) -> list[tuple[str, str]]:
    """``(name, version)`` of every distribution pip would install for the project."""
    target = f"{project}[{extras}]" if extras else str(project)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "-c", str(project / "constraints.txt")]
        subprocess.run([*cmd, "torch==2.13.0", target], check=True)
        data = json.loads(report.read_text(encoding="utf-8"))
    return sorted(
        (_canon(item["metadata"]["name"]), item["metadata"]["version"]) for item in data["install"]
    )


def installed_size(name: str, version: str) -> int | None:
    """Bytes on disk of ``name`` at ``version`` in this environment, from its RECORD."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version or dist.files is None:
        return None
    total = 0
    for file in dist.files:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def time_import(project: Path, statement: str, repeats: int) -> dict[str, Any]:
    code = (
        "import sys, time; t = time.perf_counter(); "
        f"{statement}; dt = time.perf_counter() - t; "
        f"print(dt, *[m for m in {WATCHED!r} if m in sys.modules])"
    )
    seconds: list[float] = []
    loaded: list[str] = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=True
        ).stdout.split()
        seconds.append(float(out[0]))
        loaded = out[1:]
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "seconds": seconds,
        "loaded": loaded,
    }


def measure(project: Path, extras: str, repeats: int) -> dict[str, Any]:
    dists = install_set(project, extras)
    sizes = {name: installed_size(name, version) for name, version in dists}
    measured = {k: v for k, v in sizes.items() if v is not None}
    with LoadMonitor() as load:
        imports = {label: time_import(project, s, repeats) for label, s in IMPORTS.items()}
    commit = subprocess.run(
        ["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "project_commit": commit or None,
        "extras": extras,
        "distributions": len(dists),
        "names": [f"{n}=={v}" for n, v in dists],
        "installed_mb": round(sum(measured.values()) / 2**20, 1),
        "torch_mb": round((sizes.get("torch") or 0) / 2**20, 1),
        "without_torch_mb": round(sum(v for k, v in measured.items() if k != "torch") / 2**20, 1),
        "unmeasured": sorted(f"{n}=={v}" for n, v in dists if sizes[n] is None),
        "imports": imports,
        "load": load.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--extras", default="", help="extras to add, e.g. viz,embedded")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "lean_core.jsonl")
    args = parser.parse_args(argv)
    record = {"label": args.label, **measure(args.project.resolve(), args.extras, args.repeats)}
    record |= run_metadata()
    append_line(args.out, json.dumps(record))
    print(json.dumps({k: v for k, v in record.items() if k not in ("names", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
