"""Topology speed benchmark: persistence recording and TSLoss against prompt size.

What it measures
----------------
On seeded random prompts ``P ~ N(0, 0.02^2)`` (float32, the library's prompt init and what a
snapshot sees at step 0) of n points (virtual tokens) in d dimensions:

1. **Persistence recording**, the work of one ``PersistenceCallback`` snapshot, split the way
   the callback does it: :func:`hf_tsprompt.topology.distance_matrix` (float64 conversion,
   finiteness check, ``pdist``), ``ripser`` on that distance matrix (H0 + H1), the whole
   :func:`hf_tsprompt.topology.persistence` call (the two before plus sorting and
   nearest-neighbour distances), :func:`hf_tsprompt.records.make_record` (summary statistics,
   JSON-ready diagrams) and :func:`hf_tsprompt.records.write_snapshot` (prompt ``.npy`` written
   atomically + one record line, each fsynced, into a temporary folder). ``snapshot_s`` is the
   sum of the last three: a snapshot's cost without reading the prompt off the model.
2. **Methods** for the same diagrams: ``pdist`` alone; ripser on the distance matrix (what the
   library does; ``pdist`` not included); ripser on the raw points (it computes its own
   distances with scikit-learn); and for H0 alone, ripser with ``maxdim=0`` on the distance
   matrix against scipy's minimum spanning tree of it (the finite H0 deaths are the MST's edge
   lengths). The diagrams are compared: ``h1_max_abs_diff`` (points vs distance matrix) and
   ``h0_max_abs_diff`` (MST vs ripser).
3. **TSLoss** forward and backward (:func:`hf_tsprompt.losses.ts_loss`, tau 0.1, alpha 10,
   ``variant`` ``soft`` and ``exact``) on a float32 ``P`` that requires grad, split into
   ``check_prompt_matrix`` (finiteness check), ``pairwise_distances`` and the loss terms.

Every time is the median over ``--repeats`` batches after one warm-up call; a batch repeats a
call until it has run at least 20 ms, so sub-millisecond calls are timed reliably. Each is
recorded twice: wall time and this process's CPU time. The pages show CPU time for computing
stages (on a shared machine, waiting for the CPU inflates wall time, not the work) and wall
time for the snapshot write (fsync waits for the disk, which CPU time does not count).

How to run
----------
::

    OMP_NUM_THREADS=1 taskset -c 0 python bench/topology_speed.py      # full grid (minutes)
    python bench/topology_speed.py --quick --out /tmp/x                # smoke test (seconds)
    python bench/topology_speed.py --from-json bench/results/topology_speed.json  # re-render

Defaults: n in 10 20 50 100 200 500, d in 576 1024 2048 4096 (persistence and methods),
TSLoss at d in 576 4096, 5 repeats. ``--quick``: n in 10 50, d 576, 2 repeats. Results go to
``--out`` (default ``bench/results``) as ``topology_speed.json`` and ``topology_speed.md``.

JSON fields (``topology_speed.json``)
-------------------------------------
- ``benchmark``: ``"topology_speed"``; ``quick``; ``command``, ``machine``, ``versions``,
  ``git`` (commit, dirty), ``started`` (see ``bench/common.py``); ``load``
  (:meth:`LoadMonitor.summary`).
- ``settings``: ``ns``, ``ds``, ``tsloss_ds``, ``repeats``, ``min_batch_s``, ``seed``,
  ``cloud`` (how the points are drawn), ``tau``, ``alpha``, ``write_dir_fs`` (filesystem of the
  folder the snapshot writes went to).
- Every timed quantity ``X`` below is two fields, ``X_s`` (median wall seconds per call) and
  ``X_cpu_s`` (median CPU seconds per call).
- ``persistence``: one row per (n, d): ``n``, ``d``, ``h1_count``, timed ``distance``,
  ``ripser``, ``persistence``, ``record``, ``write``; and ``snapshot_s`` =
  ``persistence_cpu_s + record_cpu_s + write_s``.
- ``methods``: one row per (n, d): ``n``, ``d``, timed ``pdist``, ``ripser_dm``,
  ``ripser_points``, ``ripser_dm_h0``, ``mst``; ``h1_counts`` ([distance matrix, points]),
  ``h1_max_abs_diff`` (None when the counts differ), ``h0_max_abs_diff``.
- ``tsloss``: one row per (n, d, variant): timed ``check``, ``distances``, ``terms``,
  ``forward``, ``total`` (forward + backward); ``backward_s`` / ``backward_cpu_s`` = total -
  forward.
- ``reading``: the short reading printed on the page.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LoadMonitor,
    environment_markdown,
    markdown_table,
    output_dir,
    run_metadata,
    single_thread,
    write_result,
)

NS: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
DS: tuple[int, ...] = (576, 1024, 2048, 4096)
TSLOSS_DS: tuple[int, ...] = (576, 4096)
VARIANTS: tuple[str, ...] = ("soft", "exact")
TAU, ALPHA = 0.1, 10.0
#: The library's default prompt: SmolLM2-135M's hidden size, 20 virtual tokens.
DEFAULT_CELL = (20, 576)


def time_call(
    fn: Callable[[], Any], repeats: int, min_batch_s: float = 0.02
) -> tuple[float, float]:
    """``(wall, cpu)``: median wall and process-CPU seconds per call of ``fn`` over ``repeats``
    batches, after one warm-up call. Each batch calls ``fn`` as many times as needed to last
    about ``min_batch_s``."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    number = max(1, math.ceil(min_batch_s / once)) if once > 0 else 1000
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(number):
            fn()
        wall.append((time.perf_counter() - t0) / number)
        cpu.append((time.process_time() - c0) / number)
    return statistics.median(wall), statistics.median(cpu)


def _put(row: dict[str, Any], key: str, times: tuple[float, float]) -> None:
    """Store ``time_call``'s result as ``row[key + "_s"]`` (wall) and ``row[key + "_cpu_s"]``."""
    row[f"{key}_s"], row[f"{key}_cpu_s"] = times


def cloud(n: int, d: int, seed: int) -> Any:
    """A seeded (n x d) float32 point cloud from N(0, 0.02^2)."""
    import numpy as np

    return np.random.default_rng(seed).normal(0.0, 0.02, (n, d)).astype(np.float32)


def _fs_type(path: str) -> str | None:
    """Filesystem type of ``path`` from /proc/mounts (longest matching mount point)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = None
    for m in mounts:
        inside = len(m) >= 3 and (real == m[1] or real.startswith(m[1].rstrip("/") + "/"))
        if inside and (best is None or len(m[1]) > len(best[1])):
            best = m
    return None if best is None else f"{best[2]} ({best[0]} on {best[1]})"


# --------------------------------------------------------------------------- measurements


def bench_persistence(n: int, d: int, repeats: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One snapshot's work on an (n x d) prompt, split by stage."""
    from ripser import ripser

    from hf_tsprompt.records import make_record, prompt_file_name, write_snapshot
    from hf_tsprompt.topology import distance_matrix, persistence

    P = cloud(n, d, seed)
    D = distance_matrix(P)
    result = persistence(P)
    tdir = workdir / f"n{n}-d{d}"
    counter = iter(range(10**9))

    def record() -> dict[str, Any]:
        return make_record(
            step=0,
            epoch=0.0,
            event="step",
            result=result,
            prompt_file=prompt_file_name(0),
            time=time.time(),
        )

    rec = record()

    def write() -> None:
        step = next(counter)
        write_snapshot(tdir, {**rec, "step": step, "prompt_file": prompt_file_name(step)}, P)

    row: dict[str, Any] = {"n": n, "d": d, "h1_count": len(result.diagrams[1])}
    _put(row, "distance", time_call(lambda: distance_matrix(P), repeats))
    _put(row, "ripser", time_call(lambda: ripser(D, maxdim=1, distance_matrix=True), repeats))
    _put(row, "persistence", time_call(lambda: persistence(P), repeats))
    _put(row, "record", time_call(record, repeats))
    _put(row, "write", time_call(write, repeats))
    # Compute stages by CPU time (other jobs on the CPU inflate wall time), the write by wall
    # time (fsync waits for the disk, which CPU time does not see).
    row["snapshot_s"] = row["persistence_cpu_s"] + row["record_cpu_s"] + row["write_s"]
    return row


def _max_abs_diff(a: Any, b: Any) -> float | None:
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    a = a[np.lexsort((a[:, 1], a[:, 0]))]
    b = b[np.lexsort((b[:, 1], b[:, 0]))]
    return float(np.abs(a - b).max())


def bench_methods(n: int, d: int, repeats: int, seed: int) -> dict[str, Any]:
    """ripser on the distance matrix vs on points; ripser H0 vs the minimum spanning tree."""
    import numpy as np
    from ripser import ripser
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform

    X = cloud(n, d, seed)
    X64 = X.astype(np.float64)
    D = squareform(pdist(X64))

    def mst() -> Any:
        return np.sort(minimum_spanning_tree(D).data)

    with warnings.catch_warnings():
        # ripser warns that a cloud with more columns than rows may be transposed: it is not.
        warnings.simplefilter("ignore")
        dm = ripser(D, maxdim=1, distance_matrix=True)["dgms"]
        pts = ripser(X64, maxdim=1)["dgms"]
        row: dict[str, Any] = {"n": n, "d": d}
        _put(row, "pdist", time_call(lambda: squareform(pdist(X64)), repeats))
        _put(
            row, "ripser_dm", time_call(lambda: ripser(D, maxdim=1, distance_matrix=True), repeats)
        )
        _put(row, "ripser_points", time_call(lambda: ripser(X64, maxdim=1), repeats))
        h0_only = time_call(lambda: ripser(D, maxdim=0, distance_matrix=True), repeats)
        _put(row, "ripser_dm_h0", h0_only)
        _put(row, "mst", time_call(mst, repeats))
    h0_deaths = np.sort(dm[0][np.isfinite(dm[0][:, 1]), 1])
    mst_w = mst()
    row["h1_counts"] = [len(dm[1]), len(pts[1])]
    row["h1_max_abs_diff"] = _max_abs_diff(dm[1], pts[1])
    row["h0_max_abs_diff"] = (
        float(np.abs(h0_deaths - mst_w).max()) if len(h0_deaths) == len(mst_w) else None
    )
    return row


def bench_tsloss(n: int, d: int, variant: str, repeats: int, seed: int) -> dict[str, Any]:
    """TSLoss forward / backward on an (n x d) float32 prompt, split by stage."""
    import torch

    from hf_tsprompt.losses import (
        check_prompt_matrix,
        exact_ts_terms,
        h0_loss,
        h1_loss,
        pairwise_distances,
        soft_quantile_scales,
        ts_loss,
    )

    P = torch.from_numpy(cloud(n, d, seed)).requires_grad_(True)

    def forward() -> Any:
        return ts_loss(P, tau=TAU, alpha=ALPHA, variant=variant)

    def forward_backward() -> None:
        forward().total.backward()
        P.grad = None

    D = pairwise_distances(P)

    def terms() -> Any:
        if variant == "exact":
            return exact_ts_terms(D)
        delta, zeta = soft_quantile_scales(D, ALPHA)
        return h0_loss(D, TAU) + h1_loss(D, delta, zeta)

    row: dict[str, Any] = {"n": n, "d": d, "variant": variant}
    _put(row, "check", time_call(lambda: check_prompt_matrix(P), repeats))
    _put(row, "distances", time_call(lambda: pairwise_distances(P), repeats))
    _put(row, "terms", time_call(terms, repeats))
    _put(row, "forward", time_call(forward, repeats))
    _put(row, "total", time_call(forward_backward, repeats))
    row["backward_s"] = max(0.0, row["total_s"] - row["forward_s"])
    row["backward_cpu_s"] = max(0.0, row["total_cpu_s"] - row["forward_cpu_s"])
    return row


# --------------------------------------------------------------------------- report


def _ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{1e3 * x:.3f}" if x < 0.01 else f"{1e3 * x:.1f}"


def _find(rows: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in keys.items()):
            return row
    return None


def _slope(rows: list[dict[str, Any]], key: str, **fixed: Any) -> float | None:
    """Log-log slope of ``key`` against n between the two largest n (the empirical exponent)."""
    pts = sorted((r["n"], r[key]) for r in rows if all(r.get(k) == v for k, v in fixed.items()))
    if len(pts) < 2 or pts[-2][1] <= 0 or pts[-1][1] <= 0:
        return None
    (n0, t0), (n1, t1) = pts[-2], pts[-1]
    return math.log(t1 / t0) / math.log(n1 / n0)


def default_reading(data: dict[str, Any]) -> str:
    """A short, number-driven reading: where the time goes (CPU times, wall time for writes)."""
    pers, meth, tsl = data["persistence"], data["methods"], data["tsloss"]
    s = data["settings"]
    out = []
    base = _find(pers, n=DEFAULT_CELL[0], d=DEFAULT_CELL[1]) or pers[0]
    out.append(
        f"For a {base['n']}-token prompt in d={base['d']} a snapshot costs "
        f"{_ms(base['snapshot_s'])} ms: persistence {_ms(base['persistence_cpu_s'])} ms "
        f"(ripser {_ms(base['ripser_cpu_s'])} ms, distance matrix "
        f"{_ms(base['distance_cpu_s'])} ms), building the record {_ms(base['record_cpu_s'])} ms "
        f"and writing it {_ms(base['write_s'])} ms wall "
        f"({100 * base['write_s'] / base['snapshot_s']:.0f}% of the snapshot: two fsyncs)."
    )
    n_max = max(s["ns"])
    for d in sorted({min(s["ds"]), max(s["ds"])}):
        big = _find(pers, n=n_max, d=d)
        if big:
            out.append(
                f"At n={n_max}, d={d}: {_ms(big['snapshot_s'])} ms, of which ripser "
                f"{100 * big['ripser_cpu_s'] / big['snapshot_s']:.0f}% and the distance matrix "
                f"{100 * big['distance_cpu_s'] / big['snapshot_s']:.0f}%."
            )
    exp = _slope(pers, "ripser_cpu_s", d=min(s["ds"]))
    if exp is not None:
        out.append(
            f"ripser's time grows like n^{exp:.1f} between the two largest n (H1 needs the "
            "triangles); the distance matrix grows like n^2 d."
        )
    m = _find(meth, n=n_max, d=max(s["ds"]))
    if m:
        lib = m["pdist_cpu_s"] + m["ripser_dm_cpu_s"]
        out.append(
            f"At n={n_max}, d={max(s['ds'])}, pdist + ripser on the distance matrix takes "
            f"{_ms(lib)} ms against {_ms(m['ripser_points_cpu_s'])} ms for ripser on the points "
            f"(scikit-learn's BLAS distances); the H0 diagram alone costs "
            f"{_ms(m['ripser_dm_h0_cpu_s'])} ms with ripser and {_ms(m['mst_cpu_s'])} ms with "
            "the minimum spanning tree (both after pdist)."
        )
    soft = [r for r in tsl if r["variant"] == "soft" and r["d"] == min(s["tsloss_ds"])]
    if soft:
        small, large = soft[0], soft[-1]
        out.append(
            f"TSLoss (soft) forward+backward: {_ms(small['total_cpu_s'])} ms at n={small['n']} "
            f"and {_ms(large['total_cpu_s'])} ms at n={large['n']} (d={small['d']}); the "
            f"finiteness check is {_ms(small['check_cpu_s'])} ms of it at n={small['n']}."
        )
    ex = _find(tsl, n=n_max, d=min(s["tsloss_ds"]), variant="exact")
    so = _find(tsl, n=n_max, d=min(s["tsloss_ds"]), variant="soft")
    if ex and so:
        out.append(
            f"The exact variant runs ripser every step: {_ms(ex['total_cpu_s'])} ms at "
            f"n={n_max} against {_ms(so['total_cpu_s'])} ms for the soft one."
        )
    return " ".join(out)


def render_markdown(data: dict[str, Any]) -> str:
    """The results page."""
    s = data["settings"]
    lines = [
        "# Topology speed: persistence recording and TSLoss"
        + (" (quick smoke run)" if data["quick"] else ""),
        "",
        f"Prompts: {s['cloud']}; every time is the median of {s['repeats']} batches (each at "
        f"least {1e3 * s['min_batch_s']:.0f} ms of repeated calls), in milliseconds of CPU "
        "time (this process's; other jobs shared the CPU, which inflates wall times, kept in the "
        "JSON), except the snapshot write, which is wall time (fsync waits for the disk). "
        f"Snapshot files were written to {s['write_dir_fs']}.",
        "",
        "## Reading",
        "",
        data["reading"],
        "",
        "## Persistence recording (one PersistenceCallback snapshot)",
        "",
        "`snapshot` = `persistence` (distance matrix + ripser + sorting) + `record` "
        "(`make_record`: summary, diagrams as lists) + `write` (`write_snapshot`: prompt .npy "
        "and record line, each fsynced; wall time). Reading the prompt off the model is not "
        "included. The callback's `compute_seconds` covers the prompt read and `persistence` "
        "only.",
        "",
        markdown_table(
            [
                "n",
                "d",
                "H1 bars",
                "distance matrix",
                "ripser (H0+H1)",
                "persistence",
                "record",
                "write (wall)",
                "snapshot",
            ],
            [
                [
                    r["n"],
                    r["d"],
                    r["h1_count"],
                    _ms(r["distance_cpu_s"]),
                    _ms(r["ripser_cpu_s"]),
                    _ms(r["persistence_cpu_s"]),
                    _ms(r["record_cpu_s"]),
                    _ms(r["write_s"]),
                    _ms(r["snapshot_s"]),
                ]
                for r in data["persistence"]
            ],
        ),
        "",
        "## Methods: ripser on the distance matrix vs on points; H0 by ripser vs by the MST",
        "",
        "`pdist` is scipy's float64 distance matrix (what the library computes); "
        "`ripser (matrix)` excludes it; `ripser (points)` computes its own distances. H0 only: "
        "ripser `maxdim=0` and scipy's `minimum_spanning_tree`, both on the precomputed matrix. "
        "The last two columns compare the diagrams (max absolute difference).",
        "",
        markdown_table(
            [
                "n",
                "d",
                "pdist",
                "ripser (matrix)",
                "pdist + ripser (matrix)",
                "ripser (points)",
                "H0: ripser",
                "H0: MST",
                "H1 diff points/matrix",
                "H0 diff MST/ripser",
            ],
            [
                [
                    r["n"],
                    r["d"],
                    _ms(r["pdist_cpu_s"]),
                    _ms(r["ripser_dm_cpu_s"]),
                    _ms(r["pdist_cpu_s"] + r["ripser_dm_cpu_s"]),
                    _ms(r["ripser_points_cpu_s"]),
                    _ms(r["ripser_dm_h0_cpu_s"]),
                    _ms(r["mst_cpu_s"]),
                    "counts differ"
                    if r["h1_max_abs_diff"] is None
                    else f"{r['h1_max_abs_diff']:.1e}",
                    "n/a" if r["h0_max_abs_diff"] is None else f"{r['h0_max_abs_diff']:.1e}",
                ]
                for r in data["methods"]
            ],
        ),
        "",
        "## TSLoss forward + backward",
        "",
        f"`ts_loss(P, tau={s['tau']}, alpha={s['alpha']})` on a float32 P that requires grad. "
        "`check` = `check_prompt_matrix` (finiteness), `distances` = `pairwise_distances` "
        "(forward), `terms` = the H0/H1 terms on a precomputed D (the exact variant includes "
        "its ripser call); `backward` = (forward + backward) - forward.",
        "",
        markdown_table(
            ["n", "d", "variant", "check", "distances", "terms", "forward", "backward", "total"],
            [
                [
                    r["n"],
                    r["d"],
                    r["variant"],
                    _ms(r["check_cpu_s"]),
                    _ms(r["distances_cpu_s"]),
                    _ms(r["terms_cpu_s"]),
                    _ms(r["forward_cpu_s"]),
                    _ms(r["backward_cpu_s"]),
                    _ms(r["total_cpu_s"]),
                ]
                for r in data["tsloss"]
            ],
        ),
        "",
        "Raw numbers (seconds): `topology_speed.json`, fields documented in the docstring of "
        "`bench/topology_speed.py`.",
        "",
        environment_markdown(data, data["load"]),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    p.add_argument(
        "--out", default=None, help="output folder (default bench/results; --quick: a temp folder)"
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="re-render the page (and the reading) from a saved topology_speed.json",
    )
    p.add_argument("--ns", type=int, nargs="+", default=list(NS), help="numbers of points")
    p.add_argument("--ds", type=int, nargs="+", default=list(DS), help="dimensions")
    p.add_argument("--tsloss-ds", type=int, nargs="+", default=list(TSLOSS_DS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick)
    if args.quick:
        args.ns, args.ds, args.tsloss_ds, args.repeats = [10, 50], [576], [576], 2
    if min(args.ns) < 3 or min(args.ds) < 1 or args.repeats < 1:
        p.error("n must be >= 3 (TSLoss needs 3 points), d and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        data["reading"] = default_reading(data)
        paths = write_result(args.out, "topology_speed", data, render_markdown(data))
        print(f"[topology_speed] re-rendered {paths[1]}")
        return 0
    single_thread()
    meta = run_metadata()
    ns, ds = sorted(args.ns), sorted(args.ds)
    pers: list[dict[str, Any]] = []
    meth: list[dict[str, Any]] = []
    tsl: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-topology-") as tmp, LoadMonitor() as load:
        workdir = Path(tmp)
        for d in ds:
            for n in ns:
                pers.append(bench_persistence(n, d, args.repeats, args.seed, workdir))
                meth.append(bench_methods(n, d, args.repeats, args.seed))
                r = pers[-1]
                print(
                    f"[topology] n={n:4d} d={d:5d} snapshot {_ms(r['snapshot_s'])} ms "
                    f"(ripser {_ms(r['ripser_cpu_s'])} ms CPU)",
                    flush=True,
                )
        for d in sorted(args.tsloss_ds):
            for variant in VARIANTS:
                for n in ns:
                    tsl.append(bench_tsloss(n, d, variant, args.repeats, args.seed))
                    print(
                        f"[topology] tsloss {variant:5s} n={n:4d} d={d:5d} "
                        f"fwd+bwd {_ms(tsl[-1]['total_cpu_s'])} ms CPU",
                        flush=True,
                    )
        write_fs = _fs_type(tmp)
    data: dict[str, Any] = {"benchmark": "topology_speed", "quick": args.quick, **meta}
    data["load"] = load.summary()
    data["settings"] = {
        "ns": ns,
        "ds": ds,
        "tsloss_ds": sorted(args.tsloss_ds),
        "repeats": args.repeats,
        "min_batch_s": 0.02,
        "seed": args.seed,
        "cloud": "N(0, 0.02^2) float32, numpy default_rng(seed)",
        "tau": TAU,
        "alpha": ALPHA,
        "write_dir_fs": write_fs,
    }
    data["persistence"], data["methods"], data["tsloss"] = pers, meth, tsl
    data["reading"] = default_reading(data)
    json_path, md_path = write_result(args.out, "topology_speed", data, render_markdown(data))
    print(f"[topology] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
