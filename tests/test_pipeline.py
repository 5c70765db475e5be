"""Tests of hf_tsprompt.pipeline's own pieces: ACT's heads kept in a run folder.

(Training end to end through the pipeline is tested in test_cli.py and test_reliability.py.)
"""

import os

import pytest

from hf_tsprompt.errors import MissingFileError
from hf_tsprompt.paper.calibration import ACTConfig
from hf_tsprompt.pipeline import act_path, adapter_fingerprint, calibrate_run, load_act, save_act

from tiny import make_tiny_run


def test_act_heads_round_trip_through_the_run_folder(tmp_path):
    config = ACTConfig(
        heads={3: [2, 0, 2], "1": [1]},
        scale=0.5,
        threshold=3.0,
        threshold_mode="relative",
        protect_prompt=True,
        num_virtual_tokens=4,
        calibration={"rows": 8, "gains": {"3.0": 0.01}},
    )
    path = save_act(config, tmp_path)
    assert path == act_path(tmp_path) == tmp_path / "calibration" / "act.json"
    assert load_act(tmp_path) == config


def test_load_act_without_a_search_says_how_to_make_one(tmp_path):
    with pytest.raises(MissingFileError, match="act.json"):
        load_act(tmp_path)


def test_calibrate_run_saves_and_reuses_the_heads(tmp_path):
    run_dir, _, _ = make_tiny_run(tmp_path)
    config = calibrate_run(run_dir, layers=[0, 1], search="exact", min_gain=-1.0)
    assert act_path(run_dir).is_file()
    assert config.calibration["rows_source"] == "train" and config.num_heads == 8
    assert config.calibration["adapter_sha256"] == adapter_fingerprint(run_dir)
    assert load_act(run_dir) == config
    assert calibrate_run(run_dir, layers=[0], min_gain=5.0) == config  # loaded, not searched
    # A saved search made with another adapter is stale: searched again.
    stale = ACTConfig.from_dict({**config.to_dict(), "calibration": {"adapter_sha256": "x"}})
    save_act(stale, run_dir)
    again = calibrate_run(run_dir, layers=[1], search="exact", min_gain=-1.0)
    assert again.heads == {1: [0, 1, 2, 3]} and load_act(run_dir) == again


def test_run_lock_refuses_a_second_job_and_leaves_no_file(tmp_path):
    from hf_tsprompt.errors import RunFolderError
    from hf_tsprompt.runs import LOCK_FILE, run_lock

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
