"""Starting processes from tests so that none outlives its test.

Every child starts in its own session (``start_new_session=True``: its own process group), and
a timeout or a failure kills the whole tree (:func:`kill_tree`): the child, its process group,
and every descendant, found before anything is killed. The group alone is not enough:
``torchrun`` starts each rank in a session of its own, so killing only ``torchrun`` (or its
group) left a hung rank alive, reparented to init, after its test had failed.

- :func:`run_process` is ``subprocess.run`` for tests: output captured, a timeout sized to the
  job (required), the group killed on timeout, on any error and after the child exits (a child
  that left descendants behind gets them killed too).
- :func:`start_process` is ``subprocess.Popen`` in a new session; the autouse fixture
  ``_kill_started_processes`` (``conftest.py``) kills the group of every process a test started
  this way when the test ends, pass or fail, and ``conftest.py`` kills any still registered
  (a module fixture's) when pytest exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

import psutil

__all__ = ["kill_started", "kill_tree", "run_process", "start_process", "started_count"]

_started: list[subprocess.Popen] = []


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, every descendant it has and the process group it leads; reap ``proc``.

    Descendants are listed first (``psutil``, an accelerate dependency), while ``proc`` is still
    their ancestor: once it dies they are reparented to init and can no longer be told apart.
    """
    descendants = []
    if proc.poll() is None:  # not reaped yet, so its pid is still its own
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()


def start_process(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` as the leader of a new process group, registered for
    :func:`kill_started`."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def started_count() -> int:
    """How many processes :func:`start_process` has registered (a mark for :func:`kill_started`)."""
    return len(_started)


def kill_started(since: int = 0) -> None:
    """Kill the group of every registered process from number ``since`` on; forget them."""
    while len(_started) > since:
        kill_tree(_started.pop())


def run_process(
    cmd: Sequence[str],
    *,
    timeout: float,
    capture_output: bool = True,
    text: bool = True,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion in its own process group; never leave a process behind.

    On timeout the group is killed and ``AssertionError`` names the command, the timeout and
    the tail of its output, so a hang fails the test fast and readably. ``check=True`` raises
    ``subprocess.CalledProcessError`` on a non-zero exit, as ``subprocess.run`` does.
    """
    if capture_output:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(list(cmd), start_new_session=True, text=text, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{' '.join(map(str, cmd))} did not finish within {timeout:g} s; it and all its "
            f"descendants were killed.\n--- stdout (tail) ---\n{_tail(out)}\n"
            f"--- stderr (tail) ---\n{_tail(err)}"
        ) from None
    finally:
        kill_tree(proc)  # descendants of a finished child, or the child itself on an error
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _tail(stream: str | bytes | None, limit: int = 3000) -> str:
    if stream is None:
        return ""
    if isinstance(stream, bytes):
        stream = stream.decode(errors="replace")
    return stream[-limit:]
