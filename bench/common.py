"""Shared helpers for the benchmark scripts in ``bench/`` (not part of the library).

Every benchmark writes one result as two files side by side in an output folder (default
``bench/results/``): ``<name>.json`` with the raw numbers and ``<name>.md`` with the same numbers
in tables plus a short reading. Both are written atomically (:mod:`hf_tsprompt.fsutil`), so an
interrupted run never leaves a half-written result.

The API, all of it:

- :func:`run_metadata` -> ``{"command", "machine", "versions", "git", "started"}``: what every
  result records about how and where it was produced (fields documented on each function below).
- :func:`git_state`: the commit the code ran at, whether the tree was dirty and, if so, the
  changed files and a hash of the diff; :func:`provenance` stamps it into a raw run record.
- :func:`record_run`: the one place a run is recorded: a ``started`` record before it, the
  result or a :func:`failed_record` (any exception, an interrupt, SIGTERM) after it; a
  started run with no end record (killed) is read back as failed
  (:func:`resolve_unfinished`). :func:`provenance_summary` / :func:`provenance_markdown` tell
  a page which runs were recorded at another commit (carried forward), from which dirty
  trees, and which failed or never finished.
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
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
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


#: How many changed paths a record names (a tree with more is named by its diff hash).
MAX_DIRTY_PATHS = 200


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty", "dirty_paths", "diff_sha256"}`` of the checkout at ``root``.

    ``commit`` is ``HEAD``'s full hash (None outside a git checkout or without git).
    ``dirty`` is True when any path under :data:`CODE_PATHS` (library, benchmarks, card
    template, recipes, packaging) differs from that commit, untracked files included (a new
    module there can be imported); edits elsewhere (tests, docs) and the result files under
    ``bench/results/`` (written by the runs themselves) do not count, so a clean run is
    reproducible from ``commit`` alone. ``dirty_paths``: the changed paths (up to
    :data:`MAX_DIRTY_PATHS`), as ``git status --porcelain`` names them; ``diff_sha256``: the
    SHA-256 of ``git diff --binary HEAD`` over those code paths followed by each untracked
    file's path and bytes, so two dirty runs with the same hash ran the same code. Both are
    None when the tree is clean or git is unavailable.
    """
    spec = [*CODE_PATHS, *(f":(exclude){x}" for x in NOT_CODE_PATHS)]
    none = {"commit": None, "dirty": None, "dirty_paths": None, "diff_sha256": None}

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=30, check=True
        )

    try:
        head = git("rev-parse", "HEAD").stdout.decode().strip()
        status = git("status", "--porcelain", "--untracked-files=all", "--", *spec)
        lines = [ln for ln in status.stdout.decode().splitlines() if ln.strip()]
        if not lines:
            return {"commit": head, "dirty": False, "dirty_paths": None, "diff_sha256": None}
        digest = hashlib.sha256(git("diff", "--binary", "HEAD", "--", *spec).stdout)
        for line in lines:
            if line.startswith("??"):
                digest.update(b"\0untracked\0" + line[3:].encode() + b"\0")
                with contextlib.suppress(OSError):
                    digest.update((root / line[3:]).read_bytes())
    except (OSError, subprocess.SubprocessError):
        return none
    return {
        "commit": head,
        "dirty": True,
        "dirty_paths": [line[3:] for line in lines][:MAX_DIRTY_PATHS],
        "diff_sha256": digest.hexdigest(),
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
#: counts as censored), ``failed`` (it raised, of any exception type, or was interrupted: no
#: result, listed and counted, never dropped), ``started`` (written by :func:`record_run`
#: before the run; the run's end record replaces it, and :func:`resolve_unfinished` turns one
#: with no end record, a run killed or timed out, into a counted ``failed`` one).
RUN_STATUSES: tuple[str, ...] = ("ok", "diverged", "failed", "started")
#: The error of a run that was started and has no end record.
UNFINISHED_ERROR = (
    "unfinished: started, no end record (killed, timed out, or still running when this page "
    "was built)"
)


def page_provenance(runs: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`provenance_summary` of ``runs`` against the commit in ``meta``
    (:func:`run_metadata` of the process writing the page)."""
    git = meta.get("git") or {}
    return provenance_summary(runs, git.get("commit"), git.get("dirty"))


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of a :func:`run_metadata` dict, for one raw run record, plus
    ``dirty_paths`` and ``diff_sha256`` (:func:`git_state`) when the tree was dirty."""
    git = meta.get("git") or {}
    out = {"commit": git.get("commit"), "dirty": git.get("dirty")}
    if git.get("dirty"):
        out |= {"dirty_paths": git.get("dirty_paths"), "diff_sha256": git.get("diff_sha256")}
    return out


def run_status(rec: dict[str, Any]) -> str:
    """A record's ``status`` (``ok`` for records written before statuses were recorded)."""
    status = rec.get("status", "ok")
    if status not in RUN_STATUSES:
        raise ValueError(f"run {rec.get('key')!r} has unknown status {status!r}")
    return status


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def failed_record(
    key: str, fields: dict[str, Any], err: BaseException, meta: dict[str, Any]
) -> dict[str, Any]:
    """The raw record of a run that raised ``err`` (any exception type, an interrupt
    included): ``key``, the identifying ``fields`` (task, method, seed, ...),
    ``status: "failed"``, ``error`` (type and message) and the provenance. A rerun retries it
    (see :func:`done_keys`); the page counts and lists it."""
    return {
        "key": key,
        **fields,
        "status": "failed",
        "error": f"{type(err).__name__}: {err}"[:2000],
        **provenance(meta),
        "started": _now(),
    }


def resolve_unfinished(rec: dict[str, Any]) -> dict[str, Any]:
    """A ``started`` record that is a key's latest (no end record followed it: the run was
    killed, timed out, or is still running) as the counted ``failed`` record it stands for,
    with :data:`UNFINISHED_ERROR` (and the record's ``note``, if any) and ``unfinished:
    True``; any other record unchanged."""
    if rec.get("status") != "started":
        return rec
    note = rec.get("note")
    error = UNFINISHED_ERROR + (f"; {note}" if note else "")
    return rec | {"status": "failed", "error": error, "unfinished": True}


@contextlib.contextmanager
def _sigterm_as_exit() -> Any:
    """While the block runs (in the main thread), SIGTERM (``timeout``, ``kill``) raises
    ``SystemExit`` instead of ending the process silently, so the run records its failure."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_run(
    runs_file: Path,
    key: str,
    fields: dict[str, Any],
    meta: dict[str, Any],
    run: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """Do one benchmark run and record it in ``runs_file`` (JSONL), so that every started run
    leaves a record whatever happens to it:

    1. before the run, a ``status: "started"`` record (``key``, ``fields``, ``run_id``, the
       provenance, ``started``): if the process is killed (SIGKILL, a timeout, a lost
       machine) it is the key's last record, and :func:`resolve_unfinished` counts it as a
       failed run;
    2. after it, the record ``run()`` returns with ``fields``, ``key``, ``run_id`` and the
       provenance; or, when it raises anything, a :func:`failed_record` with the error. An
       ``Exception`` of any type is recorded and the next run goes on (returns None); an
       interrupt (``KeyboardInterrupt``, ``SystemExit``: Ctrl-C, ``timeout``'s SIGTERM where
       the script turns it into ``SystemExit``) is recorded and then re-raised.

    Returns the finished record, or None for a failed run."""
    run_id = uuid.uuid4().hex
    start = {"key": key, **fields, "status": "started", "run_id": run_id, **provenance(meta)}
    append_line(runs_file, json.dumps(start | {"started": _now()}))
    try:
        with _sigterm_as_exit():
            rec = run()
    except BaseException as err:  # every failure is a counted record, never a missing one
        print(f"{key} failed: {type(err).__name__}: {err}", flush=True)
        failed = failed_record(key, fields, err, meta) | {"run_id": run_id}
        append_line(runs_file, json.dumps(failed))
        if not isinstance(err, Exception):
            raise
        return None
    rec |= fields | {"key": key, "run_id": run_id} | provenance(meta)
    append_line(runs_file, json.dumps(rec))
    return rec


def done_keys(runs: Iterable[dict[str, Any]]) -> set[str]:
    """Keys a rerun skips: every run whose latest record did not fail (a failed run is tried
    again; a diverged one is a result and is not)."""
    return {r["key"] for r in runs if run_status(r) not in ("failed", "started")}


def provenance_summary(
    runs: Sequence[dict[str, Any]], head: str | None, head_dirty: bool | None = None
) -> dict[str, Any]:
    """Where a page's runs come from, against ``head`` (the commit the page is written at;
    ``head_dirty``: whether the code differed from it then, :func:`git_state`).

    ``{"head", "head_dirty", "n_runs", "by_commit": [{"commit", "dirty", "n", "groups"}],
    "carried_forward" (runs recorded at another commit than ``head``, or with none
    recorded), "unrecorded" (runs without a commit: recorded before provenance was logged),
    "dirty" (runs from a dirty tree), "dirty_unnamed" (of those, runs whose record does not
    name the changed files: recorded before records carried them), "failed": [{"key",
    "commit", "error"}], "n_failed", "n_unfinished" (failed runs that were started and have
    no end record: killed or timed out), "n_diverged"}``. ``groups`` are the runs'
    ``task/setting/method`` (or ``task/method``) names; a dirty entry also has
    ``dirty_paths`` and ``diff_sha256`` (the sorted distinct values its runs recorded)."""
    runs = [resolve_unfinished(r) for r in runs]
    by: dict[tuple[str | None, bool | None], dict[str, Any]] = {}
    for r in runs:
        entry = by.setdefault(
            (r.get("commit"), r.get("dirty")),
            {
                "commit": r.get("commit"),
                "dirty": r.get("dirty"),
                "n": 0,
                "groups": set(),
                "dirty_paths": set(),
                "diff_sha256": set(),
            },
        )
        entry["n"] += 1
        parts = [r.get("task"), r.get("setting"), r.get("method")]
        entry["groups"].add("/".join(str(x) for x in parts if x is not None))
        entry["dirty_paths"].update(r.get("dirty_paths") or [])
        if r.get("diff_sha256"):
            entry["diff_sha256"].add(r["diff_sha256"])
    by_commit = sorted(by.values(), key=lambda e: (-e["n"], e["commit"] is None, str(e["commit"])))
    for e in by_commit:
        e["groups"] = sorted(e["groups"])
        e["dirty_paths"] = sorted(e["dirty_paths"])
        e["diff_sha256"] = sorted(e["diff_sha256"])
        if not e["dirty"]:
            del e["dirty_paths"], e["diff_sha256"]
    failed = [r for r in runs if run_status(r) == "failed"]
    return {
        "head": head,
        "head_dirty": head_dirty,
        "n_runs": len(runs),
        "by_commit": by_commit,
        "carried_forward": sum(1 for r in runs if not head or r.get("commit") != head),
        "unrecorded": sum(1 for r in runs if not r.get("commit")),
        "dirty": sum(1 for r in runs if r.get("dirty")),
        "dirty_unnamed": sum(1 for r in runs if r.get("dirty") and not r.get("diff_sha256")),
        "failed": [
            {"key": r["key"], "commit": r.get("commit"), "error": r.get("error")} for r in failed
        ],
        "n_failed": len(failed),
        "n_unfinished": sum(1 for r in failed if r.get("unfinished")),
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
        "tree with uncommitted code changes (`dirty`)"
    )
    unnamed = summary.get("dirty_unnamed", 0)
    if unnamed:
        text += (
            f"; {unnamed} of them were recorded before run records named the changed files "
            "and a hash of the diff, so which code they ran cannot be recovered (a record "
            "is not rewritten after the fact)"
        )
    text += (
        f". Failed runs (an exception of any type, or started with no end record: killed "
        f"or timed out): {summary['n_failed']}"
        + (
            f" ({summary['n_unfinished']} with no end record)"
            if summary.get("n_unfinished")
            else ""
        )
        + f"; diverged runs (loss NaN/inf, counted as not fitted): {summary['n_diverged']}."
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
            if e["dirty"]:
                paths, hashes = e.get("dirty_paths") or [], e.get("diff_sha256") or []
                dirty += (
                    f": {', '.join(f'`{x}`' for x in paths[:8])}"
                    + (f" (+{len(paths) - 8})" if len(paths) > 8 else "")
                    + f"; diff sha256 {', '.join(f'`{h[:12]}`' for h in hashes)}"
                    if hashes
                    else " (changed files not recorded)"
                )
            rows.append([f"`{_short(e['commit'])}`", mark, dirty, e["n"], shown])
        lines += ["", markdown_table(["commit", "", "dirty", "runs", "groups"], rows)]
    if summary["failed"]:
        lines += [
            "",
            "Failed runs (a rerun retries them; each statistic above says how it counts them):",
            "",
            markdown_table(
                ["run", "commit", "error"],
                [
                    [f"`{f['key']}`", f"`{_short(f['commit'])}`", (f["error"] or "")[:800]]
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
