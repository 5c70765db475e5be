"""Stress check, run by hand (not a test): do finished 2-process gloo jobs always exit?

Runs a 2-process ``torchrun`` job N times in a row while ``--load`` busy-loop processes keep
the cores busy, and reports per run: the exit status, the wall time, and the *exit time* (from
the job's last file write to the moment every process of the job has exited). A run that has
not exited ``--timeout`` seconds after it started counts as a hang; its process group
(torchrun and both ranks) is killed. Any process still alive after the run that mentions the
run's output folder (an orphaned rank) is reported, and killed, as a leftover.

Jobs: ``dist_train`` is ``tests/dist_train.py`` (the distributed test's script); ``cli`` is
``torchrun -m hf_tsprompt train RECIPE --quiet`` on the tiny model and data (``tests/tiny.py``).
``--script PATH`` runs another ``dist_train.py``-like script, e.g. the pre-fix one from git.

Usage::

    python tests/stress_dist_exit.py --runs 30 --job dist_train --load 2
    python tests/stress_dist_exit.py --runs 10 --job cli --load 2

Figures, 2026-11-30, torch 2.13 CPU, gloo, on a 2-core machine shared with other engineers' jobs
(load average 4-16 besides this script). "exit" = last file written -> every process gone:

- this code, ``--runs 30 --job dist_train --load 2``: 30 runs, 0 hangs, 0 failures, 0
  leftovers; exit 8.1 / 13.7 / 20.5 s (min / median / max); wall 38 / 65 / 109 s.
- this code, ``--runs 8 --job cli`` (beside the run above and its 2 busy loops): 8 runs, 0
  hangs, 0 failures, 0 leftovers; exit 13.4 / 15.2 / 18.5 s; wall 84 / 106 / 122 s.
- the pre-fix ``dist_train.py`` (``destroy_process_group()``, then the trainer freed at exit),
  ``--script`` from git, beside the first run: 12 runs, 0 hangs (exit 13.1 / 17.8 / 19.7 s),
  and 2 more with ``--switch-interval 1000``, 0 hangs: the race is rare in this job, which is
  why ``tests/dist_teardown.py`` sets it up deterministically (there the old order hung in 4 of
  4 tries, with the stacks of issue 17; the new order exits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import kill_tree  # noqa: E402
from tiny import write_dist_cli_recipe  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning a core each (the load generator)."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(n)
    ]


def _last_write(folder: Path) -> float:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return max(times) if times else float("nan")


def _leftovers(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (a run's own output folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def one_run(cmd: list[str], out: Path, timeout: float, marker: str) -> dict:
    """Run ``cmd`` once in its own process group; time it; kill its tree if it hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    log = (out.parent / f"{out.name}.log").open("w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    hang = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        hang = True
    finally:  # on a hang (or SIGTERM): torchrun and both ranks, each in a session of its own
        end = time.time()
        kill_tree(proc)
    leftover = _leftovers(marker)
    for orphan in leftover:
        with contextlib.suppress(psutil.NoSuchProcess):
            orphan.kill()
    log.close()
    last = _last_write(out) if out.exists() else float("nan")
    return {
        "rc": proc.returncode,
        "hang": hang,
        "leftover": bool(leftover),
        "wall_s": round(end - start, 2),
        "exit_s": None if hang else round(end - last, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--job", choices=["dist_train", "cli"], default="dist_train")
    parser.add_argument("--script", default=str(HERE / "dist_train.py"), help="--job dist_train")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds until a hang")
    parser.add_argument("--jsonl", default=None, help="append one JSON line per run here")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in every rank (via sitecustomize): a long one lets a thread "
        "waiting for the GIL get it only when the main thread blocks, widening the race",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the load

    work = Path(tempfile.mkdtemp(prefix="stress-dist-exit-"))
    if args.switch_interval is not None:
        site = work / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            f"import sys\nsys.setswitchinterval({args.switch_interval!r})\n"
        )
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    recipe = write_dist_cli_recipe(work) if args.job == "cli" else None
    loops = _busy_loops(args.load)
    rows = []
    try:
        for i in range(args.runs):
            base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
            base += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
            if args.job == "cli":
                out = work / "run"
                cmd = [*base, "-m", "hf_tsprompt", "train", str(recipe), "--quiet", "--overwrite"]
            else:
                out = work / f"out{i}"
                cmd = [*base, args.script, str(out), "2"]
            marker = str(recipe if args.job == "cli" else out)  # in every rank's command line
            row = {"run": i, "job": args.job, **one_run(cmd, out, args.timeout, marker)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        for loop in loops:
            os.killpg(loop.pid, signal.SIGKILL)
            loop.wait()
    exits = [r["exit_s"] for r in rows if r["exit_s"] is not None]
    summary = {
        "runs": len(rows),
        "hangs": sum(r["hang"] for r in rows),
        "failed": sum(r["rc"] != 0 for r in rows),
        "leftovers": sum(r["leftover"] for r in rows),
        "exit_s_min": min(exits, default=None),
        "exit_s_median": statistics.median(exits) if exits else None,
        "exit_s_max": max(exits, default=None),
        "wall_s_median": statistics.median(r["wall_s"] for r in rows) if rows else None,
        "load": args.load,
        "switch_interval": args.switch_interval,
        "logs": str(work),
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["hangs"] == summary["failed"] == summary["leftovers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
