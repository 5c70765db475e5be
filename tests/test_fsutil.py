"""Crash-safe writes (hf_tsprompt.fsutil)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from hf_tsprompt.fsutil import (
    append_line,
    atomic_write_json,
    atomic_write_text,
    read_json_dict,
)


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
