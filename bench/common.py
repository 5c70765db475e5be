"""Shared helpers for the benchmark scripts in ``bench/`` (not part of the library).

Every benchmark writes one result as two files side by side in an output folder (default
``bench/results/``): ``<name>.json`` with the raw numbers and ``<name>.md`` with the same numbers
in tables plus a short reading. Both are written atomically (:mod:`hf_tsprompt.fsutil`), so an
interrupted run never leaves a half-written result.

The API, all of it:

- :func:`run_metadata` -> ``{"command", "machine", "versions", "git", "started"}``: what every
  result records about how and where it was produced (fields documented on each function below).
- :func:`git_state`: the commit the code ran at and whether the tree was dirty;
  :func:`provenance` stamps it into a raw run record, :func:`failed_record` records a run that
  raised; :func:`provenance_summary` / :func:`provenance_markdown` tell a page which runs were
  recorded at another commit (carried forward) and which failed.
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
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hf_tsprompt.fsutil import append_line, atomic_write_json, atomic_write_text

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


#: The paths whose content a benchmark run executes or reads: a difference from the commit
#: here (a modified, staged, deleted or untracked file) makes the run "dirty".
CODE_PATHS: tuple[str, ...] = ("hf_tsprompt", "bench", "model_cards", "recipes", "pyproject.toml")
#: ... except the results, which a running benchmark itself appends to.
NOT_CODE_PATHS: tuple[str, ...] = ("bench/results",)


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty", "dirty_paths"}`` of the checkout at ``root``.

    ``commit`` is ``HEAD``'s full hash (None outside a git checkout or without git).
    ``dirty`` is True when any path under :data:`CODE_PATHS` (library, benchmarks, card
    template, recipes, packaging) differs from that commit, untracked files included (a new
    module there can be imported); edits elsewhere (tests, docs) and the result files under
    ``bench/results/`` (written by the runs themselves) do not count, so a clean run is
    reproducible from ``commit`` alone. ``dirty_paths``: the first 20 such paths, as
    ``git status --porcelain`` prints them (None when not dirty or unknown).
    """
    spec = [*CODE_PATHS, *(f":(exclude){x}" for x in NOT_CODE_PATHS)]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all", "--", *spec],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "dirty_paths": None}
    paths = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {
        "commit": head.stdout.strip(),
        "dirty": bool(paths),
        "dirty_paths": paths[:20] or None,
    }


def _git_commit() -> str | None:
    state = git_state()
    if state["commit"] is None:
        return None
    return state["commit"] + ("+dirty" if state["dirty"] else "")


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None when missing) plus ``git`` (the repository's
    commit, ``+dirty`` when the code differs from it as :func:`git_state` defines it; None
    outside a git checkout)."""
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
    "git": git_state(), "started": <ISO-8601 UTC time>}``.

    Taken once when a benchmark starts: the code it runs is the code it imported then, so
    every run record of that process carries this commit (:func:`provenance`), even when the
    checkout moves on while it runs."""
    return {
        "command": command_line(),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_state(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- run provenance

#: ``status`` of a raw run record: ``ok`` (finished; records written before statuses were
#: recorded count as ``ok``), ``diverged`` (the loss became NaN/inf: the run never fits and
#: counts as censored), ``failed`` (it raised: no result, listed and counted, never dropped).
RUN_STATUSES: tuple[str, ...] = ("ok", "diverged", "failed")


def page_provenance(runs: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`provenance_summary` of ``runs`` against the commit in ``meta``
    (:func:`run_metadata` of the process writing the page)."""
    git = meta.get("git") or {}
    return provenance_summary(runs, git.get("commit"), git.get("dirty"))


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of a :func:`run_metadata` dict, for one raw run record."""
    git = meta.get("git") or {}
    return {"commit": git.get("commit"), "dirty": git.get("dirty")}


def run_status(rec: dict[str, Any]) -> str:
    """A record's ``status`` (``ok`` for records written before statuses were recorded)."""
    status = rec.get("status", "ok")
    if status not in RUN_STATUSES:
        raise ValueError(f"run {rec.get('key')!r} has unknown status {status!r}")
    return status


def failed_record(
    key: str, fields: dict[str, Any], err: BaseException, meta: dict[str, Any]
) -> dict[str, Any]:
    """The raw record of a run that raised ``err``: ``key``, the identifying ``fields``
    (task, method, seed, ...), ``status: "failed"``, ``error`` (type and message) and the
    provenance. A rerun retries it (see :func:`done_keys`); the page counts and lists it."""
    return {
        "key": key,
        **fields,
        "status": "failed",
        "error": f"{type(err).__name__}: {err}"[:2000],
        **provenance(meta),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def record_run(
    runs_file: Path,
    key: str,
    fields: dict[str, Any],
    meta: dict[str, Any],
    run: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """Do one benchmark run and append its raw record (one JSONL line) to ``runs_file``: the
    record ``run()`` returns with ``fields``, ``key`` and the provenance, or, when it raises
    ``ValueError`` / ``RuntimeError``, a :func:`failed_record` (counted on the page, never
    dropped; a rerun retries it). Returns the record, or None for a failed run."""
    try:
        rec = run()
    except (ValueError, RuntimeError) as err:  # one bad run must not stop the others
        print(f"{key} failed: {err}", flush=True)
        append_line(runs_file, json.dumps(failed_record(key, fields, err, meta)))
        return None
    rec |= fields | {"key": key} | provenance(meta)
    append_line(runs_file, json.dumps(rec))
    return rec


def done_keys(runs: Iterable[dict[str, Any]]) -> set[str]:
    """Keys a rerun skips: every run whose latest record did not fail (a failed run is tried
    again; a diverged one is a result and is not)."""
    return {r["key"] for r in runs if run_status(r) != "failed"}


def provenance_summary(
    runs: Sequence[dict[str, Any]], head: str | None, head_dirty: bool | None = None
) -> dict[str, Any]:
    """Where a page's runs come from, against ``head`` (the commit the page is written at;
    ``head_dirty``: whether the code differed from it then, :func:`git_state`).

    ``{"head", "head_dirty", "n_runs", "by_commit": [{"commit", "dirty", "n", "groups"}],
    "carried_forward" (runs recorded at another commit than ``head``, or with none
    recorded), "unrecorded" (runs without a commit: recorded before provenance was logged),
    "dirty" (runs from a dirty tree), "failed": [{"key", "commit", "error"}], "n_failed",
    "n_diverged"}``. ``groups`` are the runs' ``task/setting/method`` (or ``task/method``)
    names."""
    by: dict[tuple[str | None, bool | None], dict[str, Any]] = {}
    for r in runs:
        entry = by.setdefault(
            (r.get("commit"), r.get("dirty")),
            {"commit": r.get("commit"), "dirty": r.get("dirty"), "n": 0, "groups": set()},
        )
        entry["n"] += 1
        parts = [r.get("task"), r.get("setting"), r.get("method")]
        entry["groups"].add("/".join(str(x) for x in parts if x is not None))
    by_commit = sorted(by.values(), key=lambda e: (-e["n"], e["commit"] is None, str(e["commit"])))
    for e in by_commit:
        e["groups"] = sorted(e["groups"])
    failed = [r for r in runs if run_status(r) == "failed"]
    return {
        "head": head,
        "head_dirty": head_dirty,
        "n_runs": len(runs),
        "by_commit": by_commit,
        "carried_forward": sum(1 for r in runs if not head or r.get("commit") != head),
        "unrecorded": sum(1 for r in runs if not r.get("commit")),
        "dirty": sum(1 for r in runs if r.get("dirty")),
        "failed": [
            {"key": r["key"], "commit": r.get("commit"), "error": r.get("error")} for r in failed
        ],
        "n_failed": len(failed),
        "n_diverged": sum(1 for r in runs if run_status(r) == "diverged"),
    }


def _short(commit: str | None) -> str:
    return commit[:7] if commit else "not recorded"


def provenance_banner(summary: dict[str, Any] | None) -> str | None:
    """One line for the top of a page whose runs were not all recorded at the commit the page
    was written at (None when they were)."""
    if not summary or not summary["carried_forward"]:
        return None
    return (
        f"> **Rebuilt from recorded runs:** {summary['carried_forward']} of "
        f"{summary['n_runs']} runs were recorded at another commit than this page's "
        f"(`{_short(summary['head'])}`) or before commits were logged; see *Provenance of the "
        "runs* at the end."
    )


def provenance_markdown(summary: dict[str, Any]) -> str:
    """A "Provenance of the runs" Markdown section from :func:`provenance_summary`."""
    head = summary["head"]
    n, carried = summary["n_runs"], summary["carried_forward"]
    lines = ["## Provenance of the runs", ""]
    unrecorded = summary["unrecorded"]
    text = f"This page was written at commit `{_short(head)}`"
    text += " (with uncommitted code changes). " if summary.get("head_dirty") else ". "
    if carried:
        text += f"**{carried} of {n} runs were carried forward** from an earlier state"
        if unrecorded:
            text += (
                f" ({unrecorded} recorded before runs logged their commit: their code state "
                "is not known beyond the page's history)"
            )
        text += "; "
    else:
        text += f"All {n} runs were recorded at this commit; "
    text += (
        f"{summary['dirty']} of the {n - unrecorded} runs with a recorded commit ran from a "
        "tree with uncommitted code changes (`dirty`). "
        f"Failed runs (an exception): {summary['n_failed']}; diverged runs (loss NaN/inf, "
        f"counted as not fitted): {summary['n_diverged']}."
    )
    lines.append(text)
    if summary["by_commit"]:
        rows = []
        for e in summary["by_commit"]:
            groups = e["groups"]
            shown = ", ".join(groups[:6])
            if len(groups) > 6:
                shown += f", ... ({len(groups)} groups)"
            mark = "this page's" if head and e["commit"] == head else "carried forward"
            dirty = {True: "yes", False: "no", None: "not recorded"}[e["dirty"]]
            rows.append([f"`{_short(e['commit'])}`", mark, dirty, e["n"], shown])
        lines += ["", markdown_table(["commit", "", "dirty", "runs", "groups"], rows)]
    if summary["failed"]:
        lines += [
            "",
            "Failed runs (not in any statistic above; a rerun retries them):",
            "",
            markdown_table(
                ["run", "commit", "error"],
                [
                    [f"`{f['key']}`", f"`{_short(f['commit'])}`", (f["error"] or "")[:200]]
                    for f in summary["failed"]
                ],
            ),
        ]
    return "\n".join(lines)


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
