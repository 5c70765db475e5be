"""Tests of hf_tsprompt.finished: a finished run's ACT heads, searched once and reused.

(``evaluate_run`` is tested through ``hf-tsprompt evaluate`` in test_cli.py.)
"""

from hf_tsprompt.finished import calibrate_run
from hf_tsprompt.paper.calibration import ACTConfig, act_path, load_act, save_act
from hf_tsprompt.runs import adapter_fingerprint

from tiny import make_tiny_run


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
