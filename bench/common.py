"""Shared helpers for the benchmark scripts in ``bench/`` (not part of the library).

Every benchmark writes one result as two files side by side in an output folder (default
``bench/results/``): ``<name>.json`` with the raw numbers and ``<name>.md`` with the same numbers
in tables plus a short reading. Both are written atomically (:mod:`hf_tsprompt.fsutil`), so an
interrupted run never leaves a half-written result.

The API, all of it:

- :func:`run_metadata` -> ``{"command", "machine", "versions", "started"}``: what every result
  records about how and where it was produced (fields documented on each function below).
- :class:`LoadMonitor`: samples the load average and per-CPU busy time while a benchmark runs,
  so a result says how busy the machine was (``with LoadMonitor() as load: ...``,
  then ``load.summary()``).
- :func:`stats`: median / min / max / mean / stdev / IQR / spread of a list of numbers.
- :func:`markdown_table`, :func:`environment_markdown`: Markdown building blocks.
- :func:`write_result`: write ``<name>.json`` and ``<name>.md`` atomically.
- :func:`single_thread`: pin torch to one intra-op thread (what every benchmark here measures).

Run every benchmark as ``OMP_NUM_THREADS=1 taskset -c 0 python bench/<script>.py``: on a
shared machine several threads per process make timings far noisier (and slower).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hf_tsprompt.fsutil import atomic_write_json, atomic_write_text

#: Packages whose versions every result records.
PACKAGES: tuple[str, ...] = (
    "hf-tsprompt",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "ripser",
    "numpy",
    "scipy",
)

#: The repository root (``bench/..``).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Default output folder of every benchmark.
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def output_dir(out: str | Path | None, quick: bool) -> Path:
    """Where a benchmark writes: ``--out`` if given, else :data:`RESULTS_DIR` for a real run
    and a fresh temporary folder for ``--quick`` (a smoke test must never replace measured
    results). Quick runs keep their scratch files under ``<out>/quick-work``, so nothing is
    left behind outside the folder the caller owns."""
    if out is not None:
        return Path(out)
    if quick:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="hf-tsprompt-bench-quick-"))
    return RESULTS_DIR


# --------------------------------------------------------------------------- metadata


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _affinity() -> list[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    return sorted(getter(0)) if getter else None


def _total_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine as the process sees it.

    Fields: ``nproc`` (CPUs in the machine), ``affinity`` (CPUs this process may run on),
    ``cpu_model``, ``memory_gb``, ``platform``, ``python``, ``omp_num_threads`` (the environment
    variable, or None), ``torch_threads`` (``torch.get_num_threads()`` now, None without torch),
    ``load_avg`` (1/5/15-minute load averages at the call).
    """
    torch_threads = None
    if "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    return {
        "nproc": os.cpu_count(),
        "affinity": _affinity(),
        "cpu_model": _cpu_model(),
        "memory_gb": _total_memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch_threads,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None when missing) plus ``git`` (the repository's
    commit, ``+dirty`` when tracked files differ from it; None outside a git checkout)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["git"] = _git_commit()
    return out


def command_line() -> str:
    """The command that started this process, as it could be typed again.

    ``OMP_NUM_THREADS=...`` is prefixed when set, and ``taskset -c ...`` when the process may
    run on fewer CPUs than the machine has; the script path is given relative to the
    repository root when it lies inside it.
    """
    argv = list(sys.argv)
    if argv:
        script = Path(argv[0]).resolve()
        if script.is_relative_to(REPO_ROOT):
            argv[0] = str(script.relative_to(REPO_ROOT))
    parts = []
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp:
        parts.append(f"OMP_NUM_THREADS={omp}")
    cpus = _affinity()
    if cpus is not None and len(cpus) < (os.cpu_count() or len(cpus)):
        parts.append(f"taskset -c {','.join(map(str, cpus))}")
    parts.append("python " + shlex.join(argv))
    return " ".join(parts)


def run_metadata() -> dict[str, Any]:
    """``{"command": command_line(), "machine": machine_info(), "versions": versions(),
    "started": <ISO-8601 UTC time>}``."""
    return {
        "command": command_line(),
        "machine": machine_info(),
        "versions": versions(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def single_thread() -> None:
    """Use one torch intra-op thread (and one inter-op thread where still allowed)."""
    import torch

    torch.set_num_threads(1)
    # Raises once set, or after parallel work has started: then it stays as it is.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


# --------------------------------------------------------------------------- load monitor


def _cpu_times() -> dict[int, tuple[int, int]]:
    """``{cpu: (busy_jiffies, total_jiffies)}`` from /proc/stat (empty where unavailable)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        head, *vals = line.split()
        if not head.startswith("cpu") or head == "cpu":
            continue
        nums = [int(v) for v in vals[:8]]
        idle = nums[3] + nums[4]  # idle + iowait
        out[int(head[3:])] = (sum(nums) - idle, sum(nums))
    return out


class LoadMonitor:
    """Sample the 1-minute load average every ``interval`` seconds in a daemon thread.

    Use as a context manager; :meth:`summary` then gives ``load_avg_1m`` (min / mean / max over
    the samples, and the count), ``cpu_busy`` (each CPU's busy fraction over the whole interval,
    from /proc/stat, all processes together), ``process_cpu_seconds`` (this process's user +
    system CPU time over the interval, children excluded) and ``wall_seconds``. Comparing a
    CPU's busy fraction with this process's CPU share tells whether other jobs ran on the CPU
    the benchmark was pinned to.
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self._cpu0: dict[int, tuple[int, int]] = {}
        self._cpu1: dict[int, tuple[int, int]] = {}
        self._proc0 = self._proc1 = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadMonitor:
        self._t0 = time.perf_counter()
        self._proc0 = time.process_time()
        self._cpu0 = _cpu_times()
        if hasattr(os, "getloadavg"):
            self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._t1 = time.perf_counter()
        self._proc1 = time.process_time()
        self._cpu1 = _cpu_times()

    def summary(self) -> dict[str, Any]:
        """The numbers described in the class docstring (call after the ``with`` block)."""
        busy = {}
        for cpu, (b1, t1) in self._cpu1.items():
            b0, t0 = self._cpu0.get(cpu, (0, 0))
            if t1 > t0:
                busy[str(cpu)] = round((b1 - b0) / (t1 - t0), 3)
        load = None
        if self._samples:
            load = {
                "min": min(self._samples),
                "mean": round(statistics.fmean(self._samples), 2),
                "max": max(self._samples),
                "samples": len(self._samples),
            }
        return {
            "load_avg_1m": load,
            "cpu_busy": busy,
            "process_cpu_seconds": round(self._proc1 - self._proc0, 2),
            "wall_seconds": round(self._t1 - self._t0, 2),
        }


# --------------------------------------------------------------------------- numbers and output


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """``n``, ``median``, ``min``, ``max``, ``mean``, ``stdev`` (0 for one value), ``iqr``
    (interquartile range, inclusive method) and ``spread_pct`` (``(max - min) / median``, in %)
    of a non-empty list of numbers."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("stats() needs at least one value")
    med = statistics.median(vals)
    if len(vals) >= 2:
        q = statistics.quantiles(vals, n=4, method="inclusive")
        iqr = q[2] - q[0]
        sd = statistics.stdev(vals)
    else:
        iqr = sd = 0.0
    return {
        "n": len(vals),
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "mean": statistics.fmean(vals),
        "stdev": sd,
        "iqr": iqr,
        "spread_pct": 100.0 * (max(vals) - min(vals)) / med if med else 0.0,
    }


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are ``str()``-ed (format numbers before passing them)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_markdown(meta: dict[str, Any], load: dict[str, Any] | None = None) -> str:
    """A "How it was run" Markdown section from :func:`run_metadata` (and a
    :meth:`LoadMonitor.summary`): the command, the machine, the load and the versions."""
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        "## How it was run",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- Started: {meta['started']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
        f"{m['platform']}, Python {m['python']}",
        f"- Process: CPUs {m['affinity']}, OMP_NUM_THREADS={m['omp_num_threads']}, "
        f"torch threads {m['torch_threads']}",
        f"- Load average (1/5/15 min) at start: {', '.join(f'{x:.2f}' for x in m['load_avg'])}"
        if m.get("load_avg")
        else "- Load average: unavailable",
    ]
    if load:
        la = load.get("load_avg_1m")
        if la:
            lines.append(
                f"- 1-minute load average during the run: mean {la['mean']}, "
                f"min {la['min']:.2f}, max {la['max']:.2f} ({la['samples']} samples)"
            )
        if load.get("cpu_busy"):
            busy = ", ".join(f"CPU {c}: {100 * b:.0f}%" for c, b in load["cpu_busy"].items())
            lines.append(f"- CPU busy over the run (all processes): {busy}")
        if load.get("wall_seconds"):
            share = 100 * load["process_cpu_seconds"] / load["wall_seconds"]
            lines.append(
                f"- This process: {load['process_cpu_seconds']:.0f} CPU s in "
                f"{load['wall_seconds']:.0f} wall s ({share:.0f}% of one CPU)"
            )
    lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    return "\n".join(lines)


def write_result(
    out_dir: str | os.PathLike[str], name: str, data: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (``data``, strict JSON: no NaN) and ``<name>.md``
    atomically; return both paths. The JSON is written first, so the Markdown page never
    describes numbers that are not on disk."""
    out = Path(out_dir)
    json_path = atomic_write_json(out / f"{name}.json", data)
    md_path = atomic_write_text(out / f"{name}.md", markdown.rstrip() + "\n")
    return json_path, md_path
