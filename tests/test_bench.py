"""Smoke tests for the benchmark scripts in ``bench/``: their ``--quick`` modes run and write
the documented JSON fields, so the scripts cannot rot between full (by hand) runs."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiny import run_bench, write_tiny_gsm8k

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # bench/common.py
from paper_bench import read_runs

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(out: Path, name: str) -> dict[str, Any]:
    assert (out / f"{name}.md").read_text().startswith("# ")
    return json.loads((out / f"{name}.json").read_text())


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_meta(data: dict[str, Any], script: str) -> None:
    assert data["quick"] is True
    assert script in data["command"] and "--quick" in data["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", data["git"]["commit"])
    assert isinstance(data["git"]["dirty"], bool)
    assert data["versions"]["git"].startswith(data["git"]["commit"])
    assert data["machine"]["nproc"] >= 1 and data["machine"]["cpu_model"]
    assert data["versions"]["torch"] and data["versions"]["hf-tsprompt"]
    assert data["load"]["wall_seconds"] > 0


@pytest.mark.slow
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
    # "Paired" = the geometric mean over repeats of config / plain in the same repeat.
    for config, key in (("topo_callback", "paired_ratio"), ("topo", "paired_ratio_topo")):
        sps = {(t["config"], t["repeat"]): t["steps_per_s"] for t in data["trials"]}
        logs = [math.log(sps[(config, r)] / sps[("plain", r)]) for r in range(s["repeats"])]
        assert math.isclose(data[key], math.exp(sum(logs) / len(logs)), rel_tol=1e-12)
    lo, hi = data["paired_ci"]
    assert lo <= data["paired_ratio"] <= hi
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


@pytest.mark.slow
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


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_state_dirty_means_code_differs(tmp_path):
    """Dirty = the code a run executes or reads differs from the commit (untracked modules
    included); results the runs write and files outside the code (tests) do not count."""
    root = tmp_path / "repo"
    for rel in ("hf_tsprompt/a.py", "bench/b.py", "bench/results/r.json", "tests/t.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clean = {"commit": head, "dirty": False, "dirty_paths": None, "diff_sha256": None}
    assert common.git_state(root) == clean
    (root / "bench/results/r.json").write_text("{}\n")  # a running benchmark appends results
    (root / "bench/results/new.jsonl").write_text("{}\n")
    (root / "tests/t.py").write_text("x = 2\n")
    assert common.git_state(root)["dirty"] is False
    (root / "hf_tsprompt/new.py").write_text("y = 1\n")  # importable: it changes the code
    state = common.git_state(root)
    assert state["dirty_paths"] == ["hf_tsprompt/new.py"] and state["dirty"] is True
    untracked = state["diff_sha256"]
    (root / "hf_tsprompt/new.py").write_text("y = 2\n")  # another content, another hash
    assert common.git_state(root)["diff_sha256"] not in (None, untracked)
    (root / "hf_tsprompt/new.py").unlink()
    (root / "bench/b.py").write_text("x = 3\n")
    state = common.git_state(root)
    assert state["dirty_paths"] == ["bench/b.py"]
    # The hash is the SHA-256 of `git diff --binary HEAD` over the code paths.
    diff = subprocess.run(
        ["git", "-C", str(root), "diff", "--binary", "HEAD", "--", "bench/b.py"],
        capture_output=True,
        check=True,
    ).stdout
    assert state["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    # A run record from a dirty tree names the files and the hash; a clean one neither.
    meta = {"git": state}
    assert common.provenance(meta) == {
        "commit": head,
        "dirty": True,
        "dirty_paths": ["bench/b.py"],
        "diff_sha256": state["diff_sha256"],
    }
    assert common.provenance({"git": clean}) == {"commit": head, "dirty": False}
    not_git = tmp_path / "plain"
    not_git.mkdir()
    assert common.git_state(not_git) == {
        "commit": None,
        "dirty": None,
        "dirty_paths": None,
        "diff_sha256": None,
    }


def test_provenance_summary_counts_carried_forward_and_failed():
    head, old = "a" * 40, "b" * 40
    runs = [
        {"key": "t|m|0", "task": "t", "method": "m", "seed": 0, "commit": head, "dirty": False},
        {"key": "t|m|1", "task": "t", "method": "m", "seed": 1, "commit": old, "dirty": True},
        {"key": "t|m|2", "task": "t", "method": "m", "seed": 2},  # before commits were logged
        {"key": "t|m|3", "task": "t", "method": "m", "seed": 3, "commit": head, "dirty": False}
        | {"status": "failed", "error": "ValueError: bad"},
        {"key": "t|m|4", "task": "t", "method": "m", "seed": 4, "commit": head, "dirty": False}
        | {"status": "diverged"},
    ]
    s = common.provenance_summary(runs, head)
    assert (s["n_runs"], s["carried_forward"], s["unrecorded"], s["dirty"]) == (5, 2, 1, 1)
    assert (s["n_failed"], s["n_diverged"]) == (1, 1)
    assert s["failed"] == [{"key": "t|m|3", "commit": head, "error": "ValueError: bad"}]
    assert [(e["commit"], e["n"]) for e in s["by_commit"]] == [(head, 3), (old, 1), (None, 1)]
    page = common.provenance_markdown(s)
    assert "**2 of 5 runs were carried forward**" in page and "| `t|m|3` |" in page
    assert (
        common.provenance_banner(s)
        and common.provenance_banner(common.provenance_summary(runs[:1], head)) is None
    )
    # A rerun retries the failed run only; an unknown status is an error, not a silent "ok".
    assert common.done_keys(runs) == {"t|m|0", "t|m|1", "t|m|2", "t|m|4"}
    with pytest.raises(ValueError, match="unknown status 'crashed'"):
        common.run_status({"key": "k", "status": "crashed"})


def test_record_run_leaves_a_record_for_every_started_run(tmp_path, capsys):
    """A started record before the run, an end record after it: a finished run, a failure of
    any exception type (recorded, the next run goes on), an interrupt (recorded, re-raised)
    and a kill (the started record is the last one: read back as a counted failure)."""
    runs_file = tmp_path / "runs.jsonl"
    meta = common.run_metadata()
    fields = {"task": "t", "method": "m", "seed": 0}
    rec = common.record_run(runs_file, "t|m|0", fields, meta, lambda: {"steps": 7, "seed": 99})
    assert rec["steps"] == 7 and rec["seed"] == 0 and rec["key"] == "t|m|0"  # fields win
    assert "commit" in rec and "dirty" in rec

    def boom():
        raise RuntimeError("out of memory")

    assert common.record_run(runs_file, "t|m|1", fields | {"seed": 1}, meta, boom) is None
    assert "t|m|1 failed: RuntimeError: out of memory" in capsys.readouterr().out
    # Any exception type is a failed run, not a missing one (a KeyError once left no trace).
    assert common.record_run(runs_file, "t|m|2", fields, meta, lambda: {}["x"]) is None

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        common.record_run(runs_file, "t|m|3", fields, meta, interrupted)
    lines = [json.loads(x) for x in runs_file.read_text().splitlines()]
    assert [(r["key"], r.get("status")) for r in lines] == [
        ("t|m|0", "started"),
        ("t|m|0", None),
        ("t|m|1", "started"),
        ("t|m|1", "failed"),
        ("t|m|2", "started"),
        ("t|m|2", "failed"),
        ("t|m|3", "started"),
        ("t|m|3", "failed"),
    ]
    assert lines[0]["run_id"] == lines[1]["run_id"] != lines[2]["run_id"]
    assert lines[3]["error"] == "RuntimeError: out of memory" and lines[3]["seed"] == 1
    assert lines[5]["error"] == "KeyError: 'x'" and lines[7]["error"].startswith("KeyboardInt")
    # A kill: the process dies inside run(), so the started record is the key's last.
    killed = {"key": "t|m|4", **fields, "status": "started", "run_id": "r", "commit": "c"}
    with runs_file.open("a") as f:
        f.write(json.dumps(killed) + "\n")
    runs = {r["key"]: r for r in read_runs(runs_file)}
    assert runs["t|m|0"].get("status") is None and runs["t|m|4"]["unfinished"] is True
    assert [common.run_status(runs[k]) for k in sorted(runs)] == ["ok"] + ["failed"] * 4
    assert runs["t|m|4"]["error"] == common.UNFINISHED_ERROR
    summary = common.provenance_summary(list(runs.values()), None)
    assert (summary["n_failed"], summary["n_unfinished"]) == (4, 1)
    assert "1 with no end record" in common.provenance_markdown(summary)
    assert common.done_keys(runs.values()) == {"t|m|0"}  # every failure is retried


def test_record_run_records_a_sigterm(tmp_path):
    """``timeout`` and ``kill`` send SIGTERM: the run records it as failed, then exits."""
    runs_file = tmp_path / "runs.jsonl"
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import common\n"
        "def run():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        f"common.record_run(__import__('pathlib').Path({str(runs_file)!r}), 'k', {{}}, {{}}, run)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    lines = [json.loads(x) for x in runs_file.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["started", "failed"]
    assert "SIGTERM" in lines[1]["error"]


# --- bench/timed.py -----------------------------------------------------------------------------


def test_timed_pytest_summary_reads_the_closing_line():
    import timed

    lines = ["x", "=== 672 passed, 3 skipped in 530.12s (0:08:50) ===", "trailing"]
    assert timed.pytest_summary(lines) == "672 passed, 3 skipped in 530.12s (0:08:50)"
    assert (
        timed.pytest_summary(["== 2 failed, 5 passed in 1.00s =="]) == "2 failed, 5 passed in 1.00s"
    )
    assert timed.pytest_summary(["no tests here", "== warnings summary =="]) is None


def test_timed_records_every_outcome(tmp_path, capsys):
    """A passing and a failing command each leave one record with their return code, the
    pytest summary their output had, and the provenance fields; the output streams through."""
    import timed

    out = tmp_path / "timings.jsonl"
    ok = "print('== 3 passed in 0.01s ==')"
    assert timed.main(["--name", "demo", "--out", str(out), "--", sys.executable, "-c", ok]) == 0
    bad = "import sys; print('half'); sys.exit(3)"
    assert timed.main(["--name", "bad", "--out", str(out), "--", sys.executable, "-c", bad]) == 3
    assert "== 3 passed in 0.01s ==" in capsys.readouterr().out
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert (first["name"], first["returncode"], first["summary"]) == (
        "demo",
        0,
        "3 passed in 0.01s",
    )
    assert (second["name"], second["returncode"], second["summary"]) == ("bad", 3, None)
    assert second["tail"] == ["half"] and second["command"][-1] == bad
    for record in (first, second):
        assert record["seconds"] >= 0 and record["machine"]["nproc"] >= 1
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
        assert "load_avg_1m" in record["load"] and record["versions"]["torch"]
    with pytest.raises(SystemExit):
        timed.main(["--name", "nothing", "--out", str(out)])


def test_lean_core_sizes_and_imports_are_measured_not_guessed(tmp_path):
    """bench/lean_core.py: a distribution's size is the sum of its RECORD's files (checked by
    walking them here), a version other than the installed one is not measured, and an import
    is timed in a fresh interpreter that reports which watched modules it loaded."""
    import importlib.metadata

    import lean_core  # bench/lean_core.py

    dist = importlib.metadata.distribution("pyyaml")
    walked = sum(
        Path(str(dist.locate_file(f))).stat().st_size
        for f in dist.files
        if Path(str(dist.locate_file(f))).is_file()
    )
    assert lean_core.installed_size("pyyaml", dist.version) == walked > 0
    assert lean_core.installed_size("pyyaml", "0.0.1") is None
    assert lean_core.installed_size("no-such-distribution", "1.0") is None
    (tmp_path / "probe.py").write_text("import scipy\n")
    light = lean_core.time_import(tmp_path, "import json", repeats=2)
    heavy = lean_core.time_import(tmp_path, "import probe", repeats=1)
    assert light["loaded"] == [] and len(light["seconds"]) == 2 and light["min_s"] > 0
    assert heavy["loaded"] == ["scipy"]
