"""Crash-safe file writes and the one inter-process file lock.

Every file the library writes into a run folder goes through :func:`atomic_write_bytes` (write
a temporary sibling, flush, fsync, ``os.replace``) or :func:`append_line` (one complete line
per ``write``, fsynced; readers skip a torn last line, see ``records.read_records``).

:func:`file_lock` / :func:`lock_holder` are the library's one advisory lock between processes
(POSIX ``flock`` on a lock file): the embedded-model cache serialises conversions with it, and
it records the holder's pid for locks whose refusal should name who holds them (a run folder's
``.lock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; see file_lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FILE_LOCKS",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_lock",
    "lock_holder",
    "read_json_dict",
]

FILE_LOCKS = fcntl is not None
"""Whether this platform has the advisory locks :func:`file_lock` takes (``fcntl.flock``).
Without them (Windows) :func:`file_lock` runs its block unlocked and :func:`lock_holder` says
nobody holds a lock: callers must stay correct, if less tidy, without one."""


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; restore it at once
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp makes the file 0600; give it the mode a plain open() would have (or keep
            # the replaced file's), so run folders stay readable on shared machines.
            os.fchmod(fh.fileno(), _file_mode(path))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise first (a serialisation error leaves the old file untouched), then write."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when it is missing, unreadable or not an object
    (for optional run-folder files such as run.json or adapter_config.json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (newline added) with a single write, then fsync."""
    if "\n" in line:
        raise ValueError("append_line writes exactly one line; the text contains a newline.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write((line + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike,
    *,
    blocking: bool = True,
    record_pid: bool = False,
    remove: bool = False,
) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block; yields
    whether it was acquired (always True when ``blocking``; False when another holder has it).

    The lock belongs to the open file, so the OS drops it when the holder exits in any way,
    SIGKILL included: a crashed process never leaves a held lock (``remove`` aside, the file
    stays). Two ``file_lock`` blocks on one path exclude each other also inside one process
    (each opens the file anew). ``record_pid`` writes this process's id into the file once the
    lock is held, so that :func:`lock_holder` can name the holder in an error message. Where
    :data:`FILE_LOCKS` is False the block runs unlocked and True is yielded.

    ``remove`` deletes the lock file when the block ends (a finished run folder keeps no
    ``.lock``). It is deleted while still locked, and every acquirer checks after locking that
    the file it locked is still the one at ``path`` (else it opens the path anew): a waiter
    that had opened the removed file can therefore never hold a lock that a newcomer, who
    creates a fresh file, does not see.
    """
    if fcntl is None:
        yield True
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder removed: lock the one at the path now
    try:
        if record_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield True
    finally:
        try:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _same_file(fd: int, path: str | os.PathLike) -> bool:
    """Whether the open file ``fd`` is the file now at ``path``."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the :func:`file_lock` on ``path``: the pid it recorded (``"?"`` when it
    recorded none), or None when the lock is free or the file does not exist. Only a probe,
    so the answer can be stale at once; to act on a free lock, take it with ``file_lock``."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            return text or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
