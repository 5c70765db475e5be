"""Time one shell command (the test suite, the quickstart) and record it, so a time quoted in
the README comes from a committed record rather than from memory.

::

    python bench/timed.py --name suite -- bash -c 'python -m pytest'
    python bench/timed.py --name quickstart -- bash -c '<the README quickstart command>'

Appends one JSON line to ``--out`` (default ``bench/results/timings.jsonl``):

- ``name``; ``command`` (the timed command, as run); ``seconds`` (wall clock); ``returncode``;
- ``summary``: pytest's closing line (``N passed, M failed ... in S``) when the output has one,
  else None; ``tail``: the last 20 lines of the command's output (stdout and stderr together);
- ``load``: :class:`common.LoadMonitor`'s summary over the command (how busy the machine was:
  a time measured beside other work says so);
- the provenance every benchmark record carries (:func:`common.run_metadata`): ``machine``,
  ``versions``, ``git`` (commit, and for a dirty tree the changed files and the diff's hash),
  ``started``. ``versions`` are those of the interpreter running this script; a command that
  installs into its own venv (``.ci/run``) prints its own, which ``tail`` keeps.

The command's output streams through as it runs. The record is written whatever the outcome
(a failing command is a record with its return code, not a missing line), and the script
exits with the command's return code. Stopping it (Ctrl-C, SIGTERM) stops the command's
whole process group and records ``returncode`` -2/-15.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, LoadMonitor, run_metadata

#: pytest's closing line, e.g. "== 672 passed, 3 skipped in 530.12s (0:08:50) ==".
PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|error).* in [\d.]+s.*?) =+$")


def pytest_summary(lines: list[str]) -> str | None:
    """The last pytest closing line among ``lines`` (without its ``=`` rules), or None."""
    for line in reversed(lines):
        match = PYTEST_SUMMARY.match(line.strip())
        if match:
            return match.group(1)
    return None


def run_timed(command: list[str]) -> dict[str, Any]:
    """Run ``command`` in its own process group, echoing its output; the record's fields."""
    tail: deque[str] = deque(maxlen=20)
    start = time.perf_counter()
    with LoadMonitor() as load:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def stop(signum: int, frame: Any) -> None:
            os.killpg(proc.pid, signum)

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line.rstrip("\n"))
            returncode = proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGINT)
            returncode = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    lines = list(tail)
    return {
        "command": command,
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": returncode,
        "summary": pytest_summary(lines),
        "tail": lines,
        "load": load.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what is timed: suite, quickstart, ...")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "timings.jsonl")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    meta = run_metadata()
    record = {**meta, "name": args.name, **run_timed(command)}  # the timed command wins
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return record["returncode"]


if __name__ == "__main__":
    sys.exit(main())
