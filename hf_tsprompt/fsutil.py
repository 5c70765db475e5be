"""Crash-safe file writes: a reader never sees a half-written file.

Every file the library writes into a run folder goes through :func:`atomic_write_bytes` (write
a temporary sibling, flush, fsync, ``os.replace``) or :func:`append_line` (one complete line
per ``write``, fsynced; readers skip a torn last line, see ``records.read_records``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
