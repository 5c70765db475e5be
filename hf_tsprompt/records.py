"""The on-disk record of a prompt's topology during training (``<run>/topology/``).

Layout::

    topology/records.jsonl            one JSON object per snapshot, in step order
    topology/prompts/step_00000020.npy  the raw prompt matrix P (n x d, float32) of that snapshot

A record has: ``step`` (optimiser step), ``epoch`` (float or null), ``event`` (``train_begin``,
``step``, ``epoch`` or ``train_end``), ``time`` (unix seconds), ``n_points``, ``dim``,
``diagrams`` (``{"h0": [[birth, death], ...], "h1": [...]}``, the infinite H0 death as
``null``), ``summary`` (:meth:`hf_tsprompt.topology.PersistenceResult.summary`),
``prompt_file`` (relative to ``topology/``), when an evaluation ran, ``accuracy`` and
``eval`` (``{"correct", "total"}``), and from the second snapshot on ``evolution``: the
distances from the previous snapshot's diagrams (``{"previous_step", "h0_wasserstein",
"h0_bottleneck", "h1_wasserstein", "h1_bottleneck"}``, :func:`hf_tsprompt.topology.evolution`).

Writes are crash-safe: the prompt file is written atomically before its record, and each
record is one fsynced line, so a crash leaves at most a torn last line, which readers skip.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingFileError
from .fsutil import append_line, atomic_write_bytes, atomic_write_text
from .runs import PROMPTS_DIR, RECORDS_FILE, TOPOLOGY_DIR
from .topology import EVOLUTION_KEYS, PersistenceResult, diagrams_from_lists, evolution

__all__ = [
    "PROMPTS_DIR",
    "RECORDS_FILE",
    "TOPOLOGY_DIR",
    "evolution_series",
    "evolution_stats",
    "load_prompt",
    "make_record",
    "prompt_file_name",
    "read_records",
    "snapshot_accuracy_set",
    "topology_dir",
    "truncate_records",
    "write_snapshot",
]

logger = logging.getLogger(__name__)


def topology_dir(path: str | os.PathLike) -> Path:
    """Resolve a run folder, its ``topology/`` folder or its ``records.jsonl`` to ``topology/``."""
    p = Path(path)
    if p.name == RECORDS_FILE:
        return p.parent
    if p.name == TOPOLOGY_DIR:
        return p
    return p / TOPOLOGY_DIR


def prompt_file_name(step: int) -> str:
    return f"{PROMPTS_DIR}/step_{int(step):08d}.npy"


def make_record(
    *,
    step: int,
    epoch: float | None,
    event: str,
    result: PersistenceResult,
    prompt_file: str | None,
    time: float,
    accuracy: float | None = None,
    eval_info: dict[str, Any] | None = None,
    evolution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one JSON-ready record from a persistence result."""
    lists = result.diagrams_as_lists()
    record: dict[str, Any] = {
        "step": int(step),
        "epoch": None if epoch is None else float(epoch),
        "event": event,
        "time": float(time),
        "n_points": result.n_points,
        "dim": result.dim,
        "diagrams": {f"h{k}": dgm for k, dgm in enumerate(lists)},
        "summary": result.summary(),
        "prompt_file": prompt_file,
    }
    if accuracy is not None:
        record["accuracy"] = float(accuracy)
    if eval_info:
        record["eval"] = eval_info
    if evolution:
        record["evolution"] = evolution
    return record


def write_snapshot(
    tdir: str | os.PathLike, record: dict[str, Any], prompt: np.ndarray | None
) -> None:
    """Write the prompt array (atomically) and then append the record line."""
    tdir = Path(tdir)
    if prompt is not None and record.get("prompt_file"):
        buf = _npy_bytes(np.asarray(prompt, dtype=np.float32))
        atomic_write_bytes(tdir / record["prompt_file"], buf)
    append_line(tdir / RECORDS_FILE, json.dumps(record, allow_nan=False))


def _npy_bytes(arr: np.ndarray) -> bytes:

    bio = io.BytesIO()
    np.save(bio, arr, allow_pickle=False)
    return bio.getvalue()


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parsed records and the number of unreadable lines skipped."""
    records: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a run, sorted by step (one per step; the last one wins).

    ``path`` is a run folder, its ``topology/`` folder or the ``records.jsonl`` file. A torn
    line (a crash mid-write) is skipped with a warning. Diagrams are returned as numpy arrays
    under ``record["diagrams_np"]`` (``[H0, H1]``, infinite deaths as ``inf``).
    """
    tdir = topology_dir(path)
    file = tdir / RECORDS_FILE
    if not file.is_file():
        raise MissingFileError(
            f"no topology records at {file}. Train with hf_tsprompt.PersistenceCallback (or "
            "`hf-tsprompt train`), which writes <output_dir>/topology/records.jsonl."
        )
    records, bad = _parse_lines(file)
    if bad:
        logger.warning("skipped %d unreadable line(s) in %s (interrupted write?)", bad, file)
    by_step: dict[int, dict[str, Any]] = {}
    for rec in records:
        by_step[rec["step"]] = rec
    out = [by_step[s] for s in sorted(by_step)]
    for rec in out:
        dg = rec.get("diagrams", {})
        rec["diagrams_np"] = diagrams_from_lists([dg.get("h0", []), dg.get("h1", [])])
    return out


def snapshot_accuracy_set(record: dict[str, Any]) -> str | None:
    """Which examples a record's ``accuracy`` was measured on: ``"train"`` (the pipeline's
    ``topology.evaluate: train`` stores the training accuracy there, with ``eval`` holding
    ``train_accuracy`` and no test counts), ``"test"`` (``eval`` has the test ``correct`` /
    ``total``), or None (no accuracy, or an evaluate function that does not say)."""
    if record.get("accuracy") is None:
        return None
    info = record.get("eval") if isinstance(record.get("eval"), dict) else {}
    if "total" in info or "correct" in info:
        return "test"
    if "train_accuracy" in info:
        return "train"
    return None


def evolution_series(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The structural evolution of a run: one entry per snapshot after the first.

    Each entry is ``{"step", "previous_step", "h0_wasserstein", "h0_bottleneck",
    "h1_wasserstein", "h1_bottleneck"}``: the record's stored ``evolution`` where it has one,
    else (a record written before the callback stored it) computed from its diagrams and those
    of the record before it. ``records`` as :func:`read_records` returns them (sorted, with
    ``diagrams_np``).
    """
    out: list[dict[str, Any]] = []
    for prev, rec in itertools.pairwise(records):
        stored = rec.get("evolution")
        if isinstance(stored, dict) and all(k in stored for k in EVOLUTION_KEYS):
            values = {k: float(stored[k]) for k in EVOLUTION_KEYS}
            previous_step = int(stored.get("previous_step", prev["step"]))
        else:
            values = evolution(prev["diagrams_np"], rec["diagrams_np"])
            previous_step = int(prev["step"])
        out.append({"step": int(rec["step"]), "previous_step": previous_step, **values})
    return out


def evolution_stats(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and max of each evolution metric over a run's snapshot intervals (``{}`` with
    fewer than two snapshots): ``{key: {"mean", "max", "intervals"}}``."""
    series = evolution_series(records)
    if not series:
        return {}
    return {
        key: {
            "mean": float(np.mean([e[key] for e in series])),
            "max": float(np.max([e[key] for e in series])),
            "intervals": len(series),
        }
        for key in EVOLUTION_KEYS
    }


def load_prompt(path: str | os.PathLike, record: dict[str, Any]) -> np.ndarray:
    """The prompt matrix saved with ``record`` (float32, n x d)."""
    rel = record.get("prompt_file")
    if not rel:
        raise MissingFileError(f"the record of step {record.get('step')} has no prompt file.")
    file = topology_dir(path) / rel
    if not file.is_file():
        raise MissingFileError(f"prompt file {file} is missing.")
    return np.load(file, allow_pickle=False)


def truncate_records(path: str | os.PathLike, max_step: int) -> list[dict[str, Any]]:
    """Keep only records with ``step <= max_step`` (and no torn lines); delete the rest's files.

    Used when training resumes from the checkpoint at ``max_step``: snapshots taken after it by
    the interrupted run will be taken again, so keeping them would duplicate steps. Temporary
    files an interrupted write left in ``prompts/`` are removed. Returns the kept records.
    """
    tdir = topology_dir(path)
    # A job killed inside an atomic write leaves its temporary file (``.<name>.*.tmp``).
    for stale in (tdir / PROMPTS_DIR).glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    file = tdir / RECORDS_FILE
    if not file.is_file():
        return []
    records, bad = _parse_lines(file)
    keep = [r for r in records if r["step"] <= max_step]
    drop = [r for r in records if r["step"] > max_step]
    if drop or bad:
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        atomic_write_text(file, text)
        kept_files = {r.get("prompt_file") for r in keep}
        for r in drop:
            rel = r.get("prompt_file")
            if rel and rel not in kept_files:
                (tdir / rel).unlink(missing_ok=True)
    return keep
