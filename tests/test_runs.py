"""Tests of hf_tsprompt.runs: the run folder's lock and the adapter's fingerprint.

(Reading and writing ``run.json`` and refusing a used folder are tested through the pipeline
in test_cli.py and test_reliability.py.)
"""

import os

import pytest

from hf_tsprompt.errors import RunFolderError
from hf_tsprompt.runs import LOCK_FILE, adapter_dir, adapter_fingerprint, run_lock


def test_run_lock_refuses_a_second_job_and_leaves_no_file(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        assert (run_dir / LOCK_FILE).read_text() == str(os.getpid())
        busy = f"in use by another job \\(pid {os.getpid()}\\)"
        with pytest.raises(RunFolderError, match=busy), run_lock(run_dir):
            pass
        assert (run_dir / LOCK_FILE).is_file()  # a refused job removes nothing
    assert not (run_dir / LOCK_FILE).exists()
    with pytest.raises(KeyError), run_lock(run_dir):
        raise KeyError("a failed run")
    assert not (run_dir / LOCK_FILE).exists()


def test_adapter_fingerprint_changes_with_any_adapter_file(tmp_path):
    assert adapter_fingerprint(tmp_path) is None  # no adapter folder
    adapter = adapter_dir(tmp_path)
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "sub" / "weights").write_bytes(b"\x00\x01")
    first = adapter_fingerprint(tmp_path)
    assert first is not None and len(first) == 64
    assert adapter_fingerprint(tmp_path) == first  # deterministic
    (adapter / "sub" / "weights").write_bytes(b"\x00\x02")
    assert adapter_fingerprint(tmp_path) != first
    (adapter / "sub" / "weights").write_bytes(b"\x00\x01")
    (adapter / "sub" / "weights").rename(adapter / "sub" / "weights2")  # a name counts too
    assert adapter_fingerprint(tmp_path) != first
