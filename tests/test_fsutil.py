"""Crash-safe writes and the inter-process file lock (hf_tsprompt.fsutil)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from hf_tsprompt.fsutil import (
    FILE_LOCKS,
    append_line,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    lock_holder,
    read_json_dict,
)

from procs import start_process


def test_atomic_write_replaces_whole_files_with_a_normal_mode(tmp_path):
    path = tmp_path / "a" / "run.json"
    atomic_write_text(path, "one")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temp file left


def test_failed_serialisation_leaves_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}


def test_append_line_and_read_json_dict(tmp_path):
    path = tmp_path / "log.jsonl"
    append_line(path, '{"step": 1}')
    append_line(path, '{"step": 2}')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']
    with pytest.raises(ValueError, match="exactly one line"):
        append_line(path, "a\nb")
    assert read_json_dict(tmp_path / "missing.json") == {}
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json_dict(tmp_path / "list.json") == {}
    (tmp_path / "bad.json").write_text("{")
    assert read_json_dict(tmp_path / "bad.json") == {}


needs_locks = pytest.mark.skipif(not FILE_LOCKS, reason="this platform has no fcntl.flock")


@needs_locks
def test_file_lock_excludes_a_second_holder_until_released(tmp_path):
    path = tmp_path / ".lock"
    assert lock_holder(path) is None  # no file yet
    with file_lock(path) as first:
        assert first is True
        # A second open of the file is a second holder, even in this process.
        with file_lock(path, blocking=False) as second:
            assert second is False
        assert lock_holder(path) == "?"  # held, but no pid recorded
    assert lock_holder(path) is None
    with file_lock(path, blocking=False) as again:
        assert again is True
    assert path.read_bytes() == b""  # the lock alone writes nothing into the file


@needs_locks
def test_file_lock_names_its_holder_and_dies_with_it(tmp_path):
    """Another process holds the lock with its pid: we are refused and told its pid; once it
    is killed (SIGKILL, no cleanup) the OS has released the lock."""
    path = tmp_path / ".lock"
    path.write_text("12345 stale text from an earlier holder")
    script = textwrap.dedent(
        f"""
        import sys, time
        from hf_tsprompt.fsutil import file_lock
        with file_lock({str(path)!r}, record_pid=True) as held:
            print("held" if held else "refused", flush=True)
            time.sleep(120)
        """
    )
    child = start_process([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert lock_holder(path) == str(child.pid)
        assert path.read_text() == str(child.pid)  # the stale text was replaced, not appended
        with file_lock(path, blocking=False, record_pid=True) as acquired:
            assert acquired is False
        assert path.read_text() == str(child.pid)  # a refused caller writes nothing
    finally:
        child.kill()
        child.wait(timeout=30)
    assert lock_holder(path) is None
    with file_lock(path, blocking=False, record_pid=True) as acquired:
        assert acquired is True
        assert lock_holder(path) is not None  # a probe from this process sees the new holder
        assert path.read_text() == str(os.getpid())


@needs_locks
def test_file_lock_remove_leaves_no_file_and_still_excludes(tmp_path):
    path = tmp_path / ".lock"
    with file_lock(path, remove=True, record_pid=True) as held:
        assert held is True and path.read_text() == str(os.getpid())
        with file_lock(path, blocking=False) as second:
            assert second is False  # removing on release changes nothing while held
    assert not path.exists()
    with file_lock(path, blocking=False, remove=True) as again:
        assert again is True
    assert not path.exists()


@needs_locks
def test_a_waiter_on_a_removed_lock_file_never_shares_the_lock(tmp_path):
    """A waiter blocked on the file that its holder removes on release must not end up holding
    the removed file while a newcomer holds a fresh one: it locks the file at the path."""
    import threading
    import time

    path = tmp_path / ".lock"
    waiter_in = threading.Event()
    results: list[bool] = []

    def waiter() -> None:
        waiter_in.set()
        # While the waiter holds it, no one else may acquire the lock at the path.
        with file_lock(path, remove=True) as held, file_lock(path, blocking=False) as other:
            results.append(held and not other)

    with file_lock(path, remove=True):
        thread = threading.Thread(target=waiter)
        thread.start()
        waiter_in.wait(10)
        time.sleep(0.2)  # the waiter has opened the file and blocks in flock
    thread.join(30)
    assert results == [True]
    assert not path.exists()
