"""Smoke tests for the benchmark scripts in ``bench/``: their ``--quick`` modes run and write
the documented JSON fields, so the scripts cannot rot between full (by hand) runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tiny import run_bench, write_tiny_gsm8k


def _load(out: Path, name: str) -> dict[str, Any]:
    assert (out / f"{name}.md").read_text().startswith("# ")
    return json.loads((out / f"{name}.json").read_text())


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_meta(data: dict[str, Any], script: str) -> None:
    assert data["quick"] is True
    assert script in data["command"] and "--quick" in data["command"]
    assert data["machine"]["nproc"] >= 1 and data["machine"]["cpu_model"]
    assert data["versions"]["torch"] and data["versions"]["hf-tsprompt"]
    assert data["load"]["wall_seconds"] > 0


def test_overhead_quick(tmp_path, tiny_model_dir):
    data_dir = write_tiny_gsm8k(tmp_path / "gsm8k")
    out = tmp_path / "out"
    run_bench(
        "overhead.py",
        "--quick",
        *("--model", str(tiny_model_dir), "--data", str(data_dir), "--out", str(out)),
    )
    data = _load(out, "overhead")
    assert data["benchmark"] == "overhead"
    _check_meta(data, "bench/overhead.py")
    s = data["settings"]
    for key in ("ratio", "ratio_topo", "paired_ratio", "paired_ratio_topo", "cpu_ratio"):
        assert _positive(data[key]), key
    assert data["target_ratio"] == 0.98
    assert data["target_met"] is (data["ratio"] >= 0.98)
    for config in ("plain", "topo", "topo_callback"):
        sps = data["configs"][config]["steps_per_s"]
        assert sps["n"] == s["repeats"] and sps["min"] <= sps["median"] <= sps["max"]
    assert len(data["trials"]) == 3 * s["repeats"]
    for trial in data["trials"]:
        assert len(trial["step_seconds"]) == s["steps"] == trial["steps"]
        assert _positive(trial["steps_per_s"]) and _positive(trial["cpu_seconds"])
        snaps = trial["snapshots"]
        if trial["config"] == "topo_callback":
            # The window holds exactly steps / every scheduled snapshots.
            assert [x["step"] for x in snaps] == list(range(s["every"], s["steps"] + 1, s["every"]))
            assert all(_positive(x["compute_seconds"]) for x in snaps)
            assert all(x["wall_seconds"] >= x["compute_seconds"] for x in snaps)
        else:
            assert snaps == []
        assert (trial["regularizer_seconds"] > 0) is (trial["config"] != "plain")
    # Every configuration starts each repeat once (rotating order).
    firsts = {t["config"] for t in data["trials"] if t["position"] == 0}
    assert len(firsts) == min(3, s["repeats"])
    acc = data["accounting"]
    assert 0 < acc["snapshot_share_compute"] <= acc["snapshot_share_wall"] < 1
    assert 0 < acc["predicted_ratio"] <= 1
    mem = data["memory"]
    for config in ("plain", "topo", "topo_callback"):
        assert _positive(mem["configs"][config]["peak_rss_mb"]), mem["configs"][config]
        assert _positive(mem["peak_ratio"][config])
    assert mem["peak_ratio"]["plain"] == 1.0


def test_topology_speed_quick(tmp_path):
    out = tmp_path / "out"
    run_bench("topology_speed.py", "--quick", "--out", str(out))
    data = _load(out, "topology_speed")
    assert data["benchmark"] == "topology_speed"
    _check_meta(data, "bench/topology_speed.py")
    s = data["settings"]
    cells = {(n, d) for n in s["ns"] for d in s["ds"]}
    assert {(r["n"], r["d"]) for r in data["persistence"]} == cells
    assert {(r["n"], r["d"]) for r in data["methods"]} == cells
    for r in data["persistence"]:
        for key in ("distance", "ripser", "persistence", "record", "write"):
            assert _positive(r[f"{key}_s"]) and r[f"{key}_cpu_s"] >= 0, key
        assert r["snapshot_s"] == r["persistence_cpu_s"] + r["record_cpu_s"] + r["write_s"]
    for r in data["methods"]:
        for key in ("pdist", "ripser_dm", "ripser_points", "ripser_dm_h0", "mst"):
            assert _positive(r[f"{key}_s"]), key
        # Same diagrams whichever way they are computed (ripser works in float32).
        assert r["h1_counts"][0] == r["h1_counts"][1]
        assert r["h1_max_abs_diff"] is not None and r["h1_max_abs_diff"] < 1e-5
        assert r["h0_max_abs_diff"] is not None and r["h0_max_abs_diff"] < 1e-5
    rows = {(r["n"], r["d"], r["variant"]) for r in data["tsloss"]}
    assert rows == {(n, d, v) for n in s["ns"] for d in s["tsloss_ds"] for v in ("soft", "exact")}
    for r in data["tsloss"]:
        assert _positive(r["forward_s"]) and _positive(r["total_s"]) and r["backward_s"] >= 0
    assert data["reading"]
