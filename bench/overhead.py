"""Overhead benchmark: what TSLoss and PersistenceCallback cost per training step.

What it measures
----------------
The same prompt-tuning steps, on the same peft model (SmolLM2-135M-Instruct by default, prompt
tuning with 20 virtual tokens, N(0, 0.02^2) init) and the same GSM8K batches, under three
configurations:

- ``plain``: ``transformers.Trainer`` (cross-entropy only);
- ``topo``: :class:`hf_tsprompt.TopologicalPromptTrainer` (cross-entropy + TSLoss, default
  ``ts_*`` settings);
- ``topo_callback``: ``topo`` plus :class:`hf_tsprompt.PersistenceCallback` every
  ``--every`` steps (20), writing records and prompt files as in a real run, no evaluation.

One process loads the model once. Each repeat runs the three configurations in rotating order
(repeat r starts with configuration r mod 3), each on a freshly re-initialised prompt (same
seed), the same data order (``seed=0``) and a fresh optimiser. A trial is ``--steps + 1``
optimiser steps; the clock runs from the end of step 1 (the warm-up step, excluded) to the end
of step ``steps + 1``, measured by a callback placed first in the callback list, so the window
holds exactly ``steps`` steps and ``steps / every`` snapshots (the snapshot at ``train_begin``
and the forced one at the last step fall outside it). Logging is every 10 steps in all three
configurations (the pipeline's default). One untimed warm-up trial of each configuration
(``--warmup-steps``) runs first.

Each training example is GSM8K's prompt + reference answer tokenized as the library does
(:func:`hf_tsprompt.data.tokenize_example`, chat template) and cut to its *last*
``--seq-len`` tokens, so every batch has the same shape (batch x (20 + seq-len)) and the labels
(the answer's end) are never empty. Short sequences make the fixed per-step costs of the
regulariser and the callback a *larger* share of a step than in real runs: a pessimistic test.

Peak memory is measured per configuration in a child process forked after the model is
loaded (one trial each of ``min(steps, every) + 1`` steps: the peak is reached in the first
steps, and one scheduled snapshot is included): the child resets its peak-RSS mark
(``/proc/self/clear_refs``), builds the trainer, trains, and reports ``VmHWM`` (peak resident
set size during training) and the growth over the RSS just before training. torch's CPU
allocator has no peak statistics, and Python's ``tracemalloc`` does not see torch tensors, so
RSS is the measure. A further child measures the RSS that ``import ripser`` adds (the
callback imports it at its first snapshot; it pulls in scikit-learn).

Besides wall-clock time the script records process CPU time per trial (less sensitive to other
jobs on the machine), the time spent inside the trainer's regulariser (``_add_regularizer``)
and inside the callback's snapshots (wall time of each ``_snapshot`` and the records'
``compute_seconds``), so the overhead can be accounted for without relying on small differences
of noisy totals.

How to run
----------
::

    OMP_NUM_THREADS=1 taskset -c 0 python bench/overhead.py            # full run (~1 hour)
    python bench/overhead.py --quick --model /path/to/tiny --data /path/to/gsm8k --out /tmp/x
    python bench/overhead.py --from-json bench/results/overhead.json   # re-render the page

``--quick`` (a smoke test, run by ``tests/test_bench.py``): 6 timed steps, snapshots every
3 steps, 2 repeats, batch 4, 16 tokens, no warm-up trials. ``--model`` takes anything
:func:`hf_tsprompt.models.load_base_model` accepts; ``--data`` a GSM8K folder
(``train.jsonl``). Results go to ``--out`` (default ``bench/results``) as ``overhead.json`` and
``overhead.md``.

JSON fields (``overhead.json``)
-------------------------------
- ``benchmark``: ``"overhead"``; ``quick``: whether ``--quick`` was given.
- ``command``, ``machine``, ``versions``, ``git`` (commit, dirty), ``started``: see
  ``bench/common.py``
  (:func:`run_metadata`); ``load``: :meth:`LoadMonitor.summary` over the whole run.
- ``settings``: ``model``, ``data``, ``seq_len``, ``batch_size``, ``num_virtual_tokens``,
  ``steps`` (timed steps per trial), ``warmup_steps``, ``repeats``, ``every`` (snapshot
  interval), ``logging_steps``, ``learning_rate``, ``seed``, ``ts`` (the ``ts_*`` values used).
- ``ratio``: median steps/s of ``topo_callback`` / median steps/s of ``plain`` (the headline);
  ``ratio_topo``: the same for ``topo``; ``paired_ratio`` / ``paired_ratio_topo``: the
  geometric mean over repeats of the per-repeat ratio of steps/s (the trials of one repeat
  ran minutes apart, so slow drifts of the machine's load cancel; "paired" as everywhere in
  ``bench/``, :mod:`stats`), with ``paired_ci`` / ``paired_ci_topo`` its bootstrap 95%
  interval over repeats; ``cpu_ratio`` / ``cpu_ratio_topo``: the ratio of
  median steps per CPU-second; ``fastest_step_ratio`` / ``fastest_step_ratio_topo``: plain's
  fastest step / the configuration's fastest step (each the median over trials of the trial's
  fastest step: the least disturbed measure on a shared machine); ``target_ratio`` (0.98) and
  ``target_met`` (``ratio >= 0.98``); ``target_met_by``: the same test for ``ratio``,
  ``paired_ratio``, ``cpu_ratio``, ``fastest_step_ratio`` and ``accounting.predicted_ratio``;
  ``repeat_medians``: median steps/s of each repeat's three trials (how the machine's speed
  drifted during the run).
- ``configs``: per configuration, ``steps_per_s`` and ``steps_per_cpu_s`` (:func:`stats`
  dictionaries: ``n``, ``median``, ``min``, ``max``, ``mean``, ``stdev``, ``iqr``,
  ``spread_pct``), ``step_seconds_median`` (median of all timed steps' durations) and
  ``fastest_step_seconds`` (:func:`stats` of each trial's fastest step).
- ``rendered_by``: present when the page was re-rendered with ``--from-json``: that command.
- ``accounting``: ``regularizer_seconds_per_step`` (median over ``topo*`` trials of the mean
  time in ``_add_regularizer`` per timed step), ``snapshot_wall_seconds`` (median wall time of
  one in-window snapshot, file writes included), ``snapshot_compute_seconds`` (median of the
  records' ``compute_seconds``: prompt read + persistence, no summary, no writes),
  ``snapshot_share_wall`` / ``snapshot_share_compute`` (time in in-window snapshots / training
  time of the window, summed over all ``topo_callback`` trials), ``plain_step_seconds``
  (median plain step), ``predicted_ratio`` (plain step / (plain step + regulariser per step +
  snapshot wall time / every): the ratio the measured costs imply).
- ``memory``: ``method``; ``steps`` (steps per memory trial); ``configs``: per configuration
  ``peak_rss_mb`` (VmHWM during training), ``baseline_rss_mb`` (RSS just before training),
  ``growth_mb`` (peak - baseline) and ``ru_maxrss_mb`` (the child's lifetime peak, inherited
  pages included), or ``error``; ``ripser_import``: ``rss_growth_mb`` of ``import ripser`` in a
  fresh child (``already_imported``: whether the parent had imported it, making it 0);
  ``peak_ratio`` and ``growth_ratio`` of each configuration to ``plain``.
- ``trials``: every timed trial: ``repeat``, ``position`` (0-2 within the repeat), ``config``,
  ``seconds`` (window wall time), ``cpu_seconds``, ``steps``, ``steps_per_s``,
  ``steps_per_cpu_s``, ``step_seconds`` (each step's wall duration), ``regularizer_seconds``
  (in-window total), ``snapshots`` (in-window ``{step, wall_seconds, compute_seconds}``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' pool + fork do not mix

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats as paired_stats  # bench/stats.py: the one definition of "paired"
from common import (
    REPO_ROOT,
    LoadMonitor,
    command_line,
    environment_markdown,
    markdown_table,
    output_dir,
    run_metadata,
    single_thread,
    stats,
    write_result,
)

CONFIGS: tuple[str, ...] = ("plain", "topo", "topo_callback")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
TARGET_RATIO = 0.98


# --------------------------------------------------------------------------- setup


@dataclass
class Setup:
    """Everything the trials share: the peft model, the data and the settings."""

    model: Any
    tokenizer: Any
    dataset: Any
    collator: Any
    settings: dict[str, Any]


def build_dataset(tokenizer: Any, data_dir: Path, n_rows: int, seq_len: int) -> Any:
    """GSM8K training rows tokenized by the library, each cut to its last ``seq_len`` tokens.

    Rows shorter than ``seq_len`` are skipped (none are, for GSM8K with a chat template and
    ``seq_len`` <= 64).
    """
    import datasets

    from hf_tsprompt.data import get_task, load_task_rows, tokenize_example

    task = get_task("gsm8k")
    rows = load_task_rows(task, data_dir, "train", limit=n_rows, seed=0)
    cols: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        feats = tokenize_example(tokenizer, task, row, max_length=4096)
        if len(feats["input_ids"]) < seq_len:
            continue
        for key in cols:
            cols[key].append(feats[key][-seq_len:])
    if not cols["input_ids"]:
        raise SystemExit(f"no GSM8K row in {data_dir} has {seq_len} tokens")
    return datasets.Dataset.from_dict(cols)


def load_setup(args: argparse.Namespace) -> Setup:
    """Load the model once, wrap it for prompt tuning, build the dataset."""
    import transformers

    from hf_tsprompt.data import TrainCollator
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.trainer import TopologicalPromptConfig

    transformers.logging.set_verbosity_error()
    loaded = load_base_model(args.model, dtype=args.dtype, device=args.device)
    model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=args.tokens)
    n_rows = args.batch_size * (args.steps + 1)
    dataset = build_dataset(loaded.tokenizer, Path(args.data), n_rows, args.seq_len)
    ts_defaults = TopologicalPromptConfig(output_dir=tempfile.gettempdir(), report_to="none")
    ts = {k: v for k, v in vars(ts_defaults).items() if k.startswith("ts_")}
    settings = {
        "model": str(args.model),
        "device": args.device,
        "dtype": args.dtype,
        "data": str(args.data),
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "num_virtual_tokens": args.tokens,
        "rows": len(dataset),
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "repeats": args.repeats,
        "every": args.every,
        "logging_steps": args.logging_steps,
        "learning_rate": args.lr,
        "seed": args.seed,
        "ts": ts,
    }
    return Setup(model, loaded.tokenizer, dataset, TrainCollator(loaded.tokenizer), settings)


# --------------------------------------------------------------------------- instrumentation


def _callback_classes() -> tuple[type, type]:
    """The timing callbacks (defined lazily: transformers is imported after argument parsing)."""
    import torch
    from transformers import TrainerCallback

    from hf_tsprompt.callbacks import PersistenceCallback

    class StepClock(TrainerCallback):
        """Wall and CPU time at the end of every optimiser step (put first in the list)."""

        def __init__(self) -> None:
            self.marks: list[tuple[int, float, float]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():  # CUDA runs asynchronously: time finished work
                torch.cuda.synchronize()
            self.marks.append((state.global_step, time.perf_counter(), time.process_time()))

    class TimedPersistenceCallback(PersistenceCallback):
        """``PersistenceCallback`` that also records the wall time of each snapshot."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.wall: dict[int, float] = {}

        def _snapshot(self, model: Any, state: Any, event: str) -> None:
            t0 = time.perf_counter()
            super()._snapshot(model, state, event)
            self.wall.setdefault(int(state.global_step), time.perf_counter() - t0)

    return StepClock, TimedPersistenceCallback


def _time_method(obj: Any, name: str, sink: list[tuple[int, float]], step: Callable[[], int]):
    """Replace ``obj.name`` by a wrapper appending ``(step(), seconds)`` to ``sink``."""
    original = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append((step(), time.perf_counter() - t0))

    setattr(obj, name, timed)


@dataclass
class Trial:
    """One configured trainer, ready to train, and its instruments."""

    config: str
    trainer: Any
    clock: Any
    callback: Any | None
    regularizer_calls: list[tuple[int, float]] = field(default_factory=list)


def make_trial(config: str, setup: Setup, workdir: str, total_steps: int, every: int) -> Trial:
    """A freshly initialised prompt and a trainer for ``config`` (not yet trained)."""
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hf_tsprompt.prompts import init_prompt_
    from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

    s = setup.settings
    torch.manual_seed(s["seed"])
    init_prompt_(setup.model, std=0.02)
    common = {
        "output_dir": workdir,
        "per_device_train_batch_size": s["batch_size"],
        "max_steps": total_steps,
        "learning_rate": s["learning_rate"],
        "logging_steps": s["logging_steps"],
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": s["device"] == "cpu",
        "seed": s["seed"],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    StepClock, TimedPersistenceCallback = _callback_classes()
    callback = None
    kw = {"model": setup.model, "train_dataset": setup.dataset, "data_collator": setup.collator}
    if config == "plain":
        trainer = Trainer(args=TrainingArguments(**common), **kw)
    else:
        if config == "topo_callback":
            callback = TimedPersistenceCallback(every_n_steps=every)
        trainer = TopologicalPromptTrainer(
            args=TopologicalPromptConfig(**common),
            callbacks=[callback] if callback is not None else None,
            **kw,
        )
    trainer.remove_callback(PrinterCallback)
    clock = StepClock()
    trainer.callback_handler.callbacks.insert(0, clock)
    trial = Trial(config, trainer, clock, callback)
    if config != "plain":
        _time_method(
            trainer,
            "_add_regularizer",
            trial.regularizer_calls,
            lambda: int(trainer.state.global_step),
        )
    return trial


def finish_trial(trial: Trial) -> None:
    """Detach what the trainer left on the shared model (the prompt-capture forward hook)."""
    capture = getattr(trial.trainer, "_prompt_capture", None)
    if capture is not None:
        capture.remove()


def run_timed_trial(config: str, setup: Setup, steps: int, every: int) -> dict[str, Any]:
    """Train ``steps + 1`` steps under ``config``; time steps 2..steps+1 (see the docstring)."""
    from hf_tsprompt.records import read_records

    with tempfile.TemporaryDirectory(prefix=f"bench-{config}-") as workdir:
        trial = make_trial(config, setup, workdir, steps + 1, every)
        try:
            trial.trainer.train()
        finally:
            finish_trial(trial)
        marks = {step: (wall, cpu) for step, wall, cpu in trial.clock.marks}
        (w0, c0), (w1, c1) = marks[1], marks[steps + 1]
        walls = [marks[k][0] for k in range(1, steps + 2)]
        step_seconds = [b - a for a, b in itertools.pairwise(walls)]
        snapshots = []
        if trial.callback is not None:
            compute = {r["step"]: r.get("compute_seconds") for r in read_records(workdir)}
            for step in sorted(trial.callback.wall):
                if 1 <= step <= steps:
                    snapshots.append(
                        {
                            "step": step,
                            "wall_seconds": trial.callback.wall[step],
                            "compute_seconds": compute.get(step),
                        }
                    )
    # _add_regularizer of step k runs while global_step == k - 1: steps 2..steps+1 -> 1..steps.
    reg = sum(sec for step, sec in trial.regularizer_calls if 1 <= step <= steps)
    return {
        "config": config,
        "seconds": w1 - w0,
        "cpu_seconds": c1 - c0,
        "steps": steps,
        "steps_per_s": steps / (w1 - w0),
        "steps_per_cpu_s": steps / (c1 - c0),
        "step_seconds": step_seconds,
        "regularizer_seconds": reg,
        "snapshots": snapshots,
    }


# --------------------------------------------------------------------------- memory


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _memory_child(config: str, setup: Setup, steps: int, every: int) -> dict[str, Any]:
    import resource

    with tempfile.TemporaryDirectory(prefix=f"bench-mem-{config}-") as workdir:
        trial = make_trial(config, setup, workdir, steps + 1, every)
        reset = _reset_peak_rss()
        baseline = _proc_status_kb("VmRSS")
        trial.trainer.train()
        peak = _proc_status_kb("VmHWM") if reset else None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out: dict[str, Any] = {"ru_maxrss_mb": maxrss / 1024}
    if peak is not None and baseline is not None:
        out.update(
            peak_rss_mb=peak / 1024,
            baseline_rss_mb=baseline / 1024,
            growth_mb=(peak - baseline) / 1024,
        )
    else:
        out.update(peak_rss_mb=maxrss / 1024, baseline_rss_mb=None, growth_mb=None)
    return out


def _import_ripser_child() -> dict[str, Any]:
    """RSS growth from importing ripser (and what it pulls in, e.g. scikit-learn)."""
    import sys as _sys

    before = _proc_status_kb("VmRSS")
    already = "ripser" in _sys.modules
    import ripser  # noqa: F401

    after = _proc_status_kb("VmRSS")
    if before is None or after is None:
        return {"error": "/proc/self/status is unavailable"}
    return {"already_imported": already, "rss_growth_mb": (after - before) / 1024}


def in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a forked child (a copy of this process) and return its JSON result."""
    if not hasattr(os, "fork"):
        return {"error": "os.fork is unavailable on this platform"}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the parent's code
        os.close(read_fd)
        try:
            payload = json.dumps(fn())
        except BaseException as err:  # report anything, then leave
            payload = json.dumps({"error": f"{type(err).__name__}: {err}"})
        with os.fdopen(write_fd, "w") as fh:
            fh.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        payload = fh.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        return {"error": f"child exited with status {status} and no result"}
    return json.loads(payload)


# --------------------------------------------------------------------------- analysis


def _median(values: list[float]) -> float:
    return float(stats(values)["median"]) if values else float("nan")


def analyse(trials: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Ratios, per-configuration statistics and the overhead accounting."""
    by = {c: [t for t in trials if t["config"] == c] for c in CONFIGS}
    configs = {}
    for c in CONFIGS:
        configs[c] = {
            "steps_per_s": stats([t["steps_per_s"] for t in by[c]]),
            "steps_per_cpu_s": stats([t["steps_per_cpu_s"] for t in by[c]]),
            "step_seconds_median": _median([s for t in by[c] for s in t["step_seconds"]]),
            "fastest_step_seconds": stats([min(t["step_seconds"]) for t in by[c]]),
        }

    def med(c: str, key: str) -> float:
        return float(configs[c][key]["median"])

    def per_repeat(c: str) -> list[float]:
        ratios = []
        for r in range(settings["repeats"]):
            a = [t for t in by[c] if t["repeat"] == r]
            p = [t for t in by["plain"] if t["repeat"] == r]
            if a and p:
                ratios.append(a[0]["steps_per_s"] / p[0]["steps_per_s"])
        return ratios

    def paired(c: str) -> float:
        return paired_stats.geo_mean(per_repeat(c))

    def paired_ci(c: str) -> list[float]:
        return list(paired_stats.bootstrap_ci(per_repeat(c)))

    steps = settings["steps"]
    reg_per_step = _median(
        [t["regularizer_seconds"] / steps for c in ("topo", "topo_callback") for t in by[c]]
    )
    snaps = [s for t in by["topo_callback"] for s in t["snapshots"]]
    train_s = sum(t["seconds"] for t in by["topo_callback"])
    snap_wall = sum(s["wall_seconds"] for s in snaps)
    snap_compute = sum(s["compute_seconds"] or 0.0 for s in snaps)
    plain_step = 1.0 / med("plain", "steps_per_s")
    one_snap = _median([s["wall_seconds"] for s in snaps])
    per_step_snap = one_snap / settings["every"] if snaps else 0.0
    ratio = med("topo_callback", "steps_per_s") / med("plain", "steps_per_s")
    predicted = plain_step / (plain_step + reg_per_step + per_step_snap)
    paired_full = paired("topo_callback")
    cpu_ratio = med("topo_callback", "steps_per_cpu_s") / med("plain", "steps_per_cpu_s")
    fastest = {c: float(configs[c]["fastest_step_seconds"]["median"]) for c in CONFIGS}
    fastest_ratio = fastest["plain"] / fastest["topo_callback"]
    repeat_medians = [
        _median([t["steps_per_s"] for t in trials if t["repeat"] == r])
        for r in range(settings["repeats"])
    ]
    return {
        "ratio": ratio,
        "ratio_topo": med("topo", "steps_per_s") / med("plain", "steps_per_s"),
        "paired_ratio": paired_full,
        "paired_ci": paired_ci("topo_callback"),
        "paired_ratio_topo": paired("topo"),
        "paired_ci_topo": paired_ci("topo"),
        "cpu_ratio": cpu_ratio,
        "cpu_ratio_topo": med("topo", "steps_per_cpu_s") / med("plain", "steps_per_cpu_s"),
        "fastest_step_ratio": fastest_ratio,
        "fastest_step_ratio_topo": fastest["plain"] / fastest["topo"],
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "target_met_by": {
            "ratio": ratio >= TARGET_RATIO,
            "paired_ratio": paired_full >= TARGET_RATIO,
            "cpu_ratio": cpu_ratio >= TARGET_RATIO,
            "fastest_step_ratio": fastest_ratio >= TARGET_RATIO,
            "predicted_ratio": predicted >= TARGET_RATIO,
        },
        "repeat_medians": repeat_medians,
        "configs": configs,
        "accounting": {
            "plain_step_seconds": plain_step,
            "regularizer_seconds_per_step": reg_per_step,
            "snapshots_in_window": len(snaps),
            "snapshot_wall_seconds": one_snap if snaps else None,
            "snapshot_compute_seconds": (
                _median([s["compute_seconds"] or 0.0 for s in snaps]) if snaps else None
            ),
            "snapshot_share_wall": snap_wall / train_s if train_s else None,
            "snapshot_share_compute": snap_compute / train_s if train_s else None,
            "predicted_ratio": predicted,
        },
    }


# --------------------------------------------------------------------------- report


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _fmt_ci(data: dict[str, Any], key: str, ci_key: str) -> str:
    ci = data.get(ci_key)
    text = f"{data[key]:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_markdown(data: dict[str, Any]) -> str:
    """The results page."""
    s = data["settings"]
    acc = data["accounting"]
    cfg = data["configs"]
    names = {
        "plain": "plain `Trainer`",
        "topo": "`TopologicalPromptTrainer`",
        "topo_callback": f"+ `PersistenceCallback` every {s['every']}",
    }
    verdict = "met" if data["target_met"] else "**not met**"
    met_by = data.get("target_met_by") or {}
    if met_by and not data["target_met"]:
        others = [k for k, v in met_by.items() if v]
        verdict += " by this measure; met by " + (", ".join(others) or "none")
    share_compute = 100 * (acc["snapshot_share_compute"] or 0)
    plain_sps = cfg["plain"]["steps_per_s"]["median"]
    plain_cpu = cfg["plain"]["steps_per_cpu_s"]["median"]
    plain_fast = cfg["plain"]["fastest_step_seconds"]["median"]
    snap = acc["snapshot_wall_seconds"]
    snap_per_step = None if snap is None else snap / s["every"]
    snap_share = (
        "n/a"
        if snap_per_step is None
        else f"{100 * snap_per_step / acc['plain_step_seconds']:.4f}%"
    )
    reg = acc["regularizer_seconds_per_step"]
    spread = max(cfg[c]["steps_per_s"]["spread_pct"] for c in CONFIGS)
    ci = data.get("paired_ci") or [None, None]
    lines = [
        "# Overhead of TSLoss and PersistenceCallback"
        + (" (quick smoke run)" if data["quick"] else ""),
        "",
        f"Full configuration (`TopologicalPromptTrainer` + `PersistenceCallback` every "
        f"{s['every']} steps) against plain peft + `transformers.Trainer`.",
        "",
        f"**Cost, accounted directly** (time measured inside the regulariser and the "
        f"callback's snapshots in every trial): the regulariser takes {1e3 * reg:.2f} ms per "
        f"step, **{100 * reg / acc['plain_step_seconds']:.3f}%** of a "
        f"{acc['plain_step_seconds']:.2f} s plain step; snapshots take "
        f"**{100 * (acc['snapshot_share_wall'] or 0):.3f}%** of training time (wall time, file "
        f"writes included; {share_compute:.3f}% by the records' `compute_seconds`). Together "
        f"they predict a ratio of {acc['predicted_ratio']:.4f} to plain "
        f"(target >= {TARGET_RATIO}).",
        "",
        f"**Measured end to end** (noisier: steps/s of one configuration's trials differ by "
        f"up to {spread:.0f}%): ratio of median steps/s {data['ratio']:.3f} (target "
        f"{verdict}); paired ratio {data['paired_ratio']:.3f} [95% CI {_fmt(ci[0], '.3f')}, "
        f"{_fmt(ci[1], '.3f')}] (geometric mean over the {s['repeats']} repeats of the "
        f"per-repeat ratio, as `bench/stats.py` defines it); CPU-time ratio "
        f"{data['cpu_ratio']:.3f}. Differences between configurations smaller than that "
        "spread are the machine's noise, not the library's cost.",
        "",
        "## Setup",
        "",
        f"- Model: `{s['model']}`, prompt tuning, {s['num_virtual_tokens']} virtual tokens, "
        "N(0, 0.02^2) init, re-initialised (same seed) before every trial.",
        f"- Data: GSM8K train rows from `{s['data']}` ({s['rows']} rows), tokenized with the "
        f"chat template by `tokenize_example` and cut to the last {s['seq_len']} tokens: batches "
        f"of {s['batch_size']} x ({s['num_virtual_tokens']} + {s['seq_len']}) positions, same "
        "order in every trial.",
        f"- {s['repeats']} repeats x 3 configurations in rotating order; each trial trains "
        f"{s['steps'] + 1} steps and times the last {s['steps']} (step 1 is warm-up). "
        + (
            f"One untimed {s['warmup_steps']}-step trial per configuration first."
            if s["warmup_steps"]
            else "No warm-up trials."
        ),
        f"- AdamW (Trainer default), lr {s['learning_rate']}, logging every "
        f"{s['logging_steps']} steps in all configurations; TSLoss settings: "
        + ", ".join(f"{k}={v}" for k, v in s["ts"].items() if v is not None)
        + ".",
        f"- `PersistenceCallback(every_n_steps={s['every']})`: H0/H1 persistence of the prompt, "
        "record line + prompt `.npy` written (fsynced) per snapshot, no evaluation; "
        f"{acc['snapshots_in_window']} in-window snapshots over all trials.",
        "",
        "## Speed",
        "",
        markdown_table(
            [
                "configuration",
                "median steps/s",
                "min",
                "max",
                "spread (max-min)/median",
                "ratio to plain",
                "median steps/CPU-s",
                "CPU ratio",
                "fastest step (s)",
                "fastest-step ratio",
            ],
            [
                [
                    names[c],
                    f"{cfg[c]['steps_per_s']['median']:.4f}",
                    f"{cfg[c]['steps_per_s']['min']:.4f}",
                    f"{cfg[c]['steps_per_s']['max']:.4f}",
                    f"{cfg[c]['steps_per_s']['spread_pct']:.1f}%",
                    f"{cfg[c]['steps_per_s']['median'] / plain_sps:.3f}",
                    f"{cfg[c]['steps_per_cpu_s']['median']:.4f}",
                    f"{cfg[c]['steps_per_cpu_s']['median'] / plain_cpu:.3f}",
                    f"{cfg[c]['fastest_step_seconds']['median']:.3f}",
                    f"{plain_fast / cfg[c]['fastest_step_seconds']['median']:.3f}",
                ]
                for c in CONFIGS
            ],
        ),
        "",
        f"Paired ratios (geometric mean over repeats of config / plain in the same repeat, "
        f"bootstrap 95% CI): `topo` {_fmt_ci(data, 'paired_ratio_topo', 'paired_ci_topo')}, "
        f"`topo_callback` {_fmt_ci(data, 'paired_ratio', 'paired_ci')}. "
        "CPU ratio: the same ratio of medians with this process's CPU time in place of wall "
        "time. Fastest step: the median over trials of each trial's fastest step; its ratio is "
        "plain's fastest step / the configuration's. " + paired_stats.interval_note(),
        "",
        "## Where the time goes",
        "",
        markdown_table(
            ["cost", "seconds", "per training step", "share of a plain step"],
            [
                ["plain step (median)", _fmt(acc["plain_step_seconds"]), "", "100%"],
                [
                    "TSLoss + bookkeeping in `_add_regularizer` (forward only)",
                    _fmt(acc["regularizer_seconds_per_step"], ".6f"),
                    _fmt(acc["regularizer_seconds_per_step"], ".6f"),
                    f"{100 * acc['regularizer_seconds_per_step'] / acc['plain_step_seconds']:.4f}%",
                ],
                [
                    "one snapshot, wall (read + persistence + record + writes)",
                    _fmt(snap, ".6f"),
                    _fmt(snap_per_step, ".6f"),
                    snap_share,
                ],
                [
                    "one snapshot, `compute_seconds` (read + persistence)",
                    _fmt(acc["snapshot_compute_seconds"], ".6f"),
                    "",
                    "",
                ],
            ],
        ),
        "",
        f"Predicted ratio from these costs: {acc['predicted_ratio']:.5f} (plain step / (plain "
        "step + regulariser + snapshot per step)); TSLoss's backward is not in the table (it "
        "runs inside the model's backward; see `topology_speed.md` for its size).",
        "",
        "## Peak memory",
        "",
        f"Method: {data['memory']['method']} ({data['memory']['steps']} steps per trial).",
        "",
    ]
    mem = data["memory"]["configs"]
    rows = []
    for c in CONFIGS:
        m = mem.get(c, {})
        if "error" in m:
            rows.append([names[c], "error: " + m["error"], "", "", ""])
            continue
        rows.append(
            [
                names[c],
                _fmt(m.get("peak_rss_mb"), ".1f"),
                _fmt(m.get("growth_mb"), ".1f"),
                _fmt(data["memory"]["peak_ratio"].get(c), ".4f"),
                _fmt(data["memory"]["growth_ratio"].get(c), ".4f"),
            ]
        )
    lines += [
        markdown_table(
            [
                "configuration",
                "peak RSS in training (MB)",
                "growth during training (MB)",
                "peak / plain",
                "growth / plain",
            ],
            rows,
        ),
        "",
        _ripser_import_line(data["memory"].get("ripser_import")),
        "",
        "## Reading",
        "",
        data.get("reading") or "(quick run: no reading)",
        "",
        "## Raw trials",
        "",
        markdown_table(
            [
                "repeat",
                "position",
                "configuration",
                "seconds",
                "CPU seconds",
                "steps/s",
                "snapshots",
            ],
            [
                [
                    t["repeat"],
                    t["position"],
                    t["config"],
                    f"{t['seconds']:.2f}",
                    f"{t['cpu_seconds']:.2f}",
                    f"{t['steps_per_s']:.4f}",
                    ", ".join(
                        f"{x['step']}: {x['wall_seconds'] * 1e3:.1f} ms" for x in t["snapshots"]
                    ),
                ]
                for t in data["trials"]
            ],
        ),
        "",
        "Every step's duration is in `overhead.json` (`trials[].step_seconds`); its fields are "
        "documented in the docstring of `bench/overhead.py`.",
        "",
        environment_markdown(data, data["load"]),
    ]
    return "\n".join(lines)


def _ripser_import_line(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    if "error" in info:
        return f"`import ripser` RSS: not measured ({info['error']})."
    return (
        f"`import ripser` (done by the callback at its first snapshot; it imports scikit-learn) "
        f"adds {info['rss_growth_mb']:.1f} MB of RSS by itself, measured in a separate child."
    )


def default_reading(data: dict[str, Any]) -> str:
    """A short, number-driven reading of the result: accounted cost, then the measurement."""
    acc = data["accounting"]
    cfg = data["configs"]
    every = data["settings"]["every"]
    step = acc["plain_step_seconds"]
    reg = acc["regularizer_seconds_per_step"]
    snap = acc["snapshot_wall_seconds"] or 0.0
    snap_c = acc["snapshot_compute_seconds"] or 0.0
    share = 100 * (acc["snapshot_share_wall"] or 0.0)
    spread = max(cfg[c]["steps_per_s"]["spread_pct"] for c in CONFIGS)
    reps = data.get("repeat_medians") or []
    parts = [
        f"**Cost, accounted.** The regulariser (TSLoss forward plus the trainer's bookkeeping in "
        f"`_add_regularizer`) takes {1e3 * reg:.2f} ms per step, {100 * reg / step:.3f}% of a "
        f"{step:.2f} s plain step (its backward runs inside the model's backward and is of the "
        f"same order, see `topology_speed.md`). A snapshot takes {1e3 * snap:.1f} ms of wall "
        f"time, of which {1e3 * snap_c:.1f} ms is the prompt read and persistence "
        "(`compute_seconds`) and the rest the summary, the record and two fsynced file writes; "
        f"every {every} steps that is {share:.3f}% of training time (well under 1%). Together "
        f"they predict a ratio of {acc['predicted_ratio']:.4f} to plain.",
        f"**Measured.** Median steps/s ratio {data['ratio']:.3f}, paired ratio "
        f"{_fmt_ci(data, 'paired_ratio', 'paired_ci')}, CPU-time ratio "
        f"{data['cpu_ratio']:.3f}, fastest-step ratio {data['fastest_step_ratio']:.3f} (`topo` "
        f"alone: {data['ratio_topo']:.3f}, {_fmt_ci(data, 'paired_ratio_topo', 'paired_ci_topo')}"
        f", {data['cpu_ratio_topo']:.3f}, {data['fastest_step_ratio_topo']:.3f}). Trials of one "
        "configuration differ by up to "
        f"{spread:.0f}% in steps/s",
    ]
    if len(reps) >= 2:
        parts[-1] += (
            f" and the machine's speed drifted during the run (median steps/s per repeat: "
            f"{', '.join(f'{x:.3f}' for x in reps)})"
        )
    cost_pct = 100 * (1 - acc["predicted_ratio"])
    gap = abs(data["ratio_topo"] - data["ratio"])
    parts[-1] += (
        f"; differences of that size between configurations are the machine's noise: the "
        f"accounted cost ({cost_pct:.3f}% of a step) is far below it. `topo` and "
        f"`topo_callback` differ only by the callback ({share:.3f}% of training time), yet "
        f"their median ratios to plain differ by {100 * gap:.1f} points: that is the "
        "resolution of this measurement."
    )
    met = data.get("target_met_by") or {"ratio": data["target_met"]}
    missed = [k for k, v in met.items() if not v]
    if missed:
        parts[-1] += (
            f" The target ratio {TARGET_RATIO} is missed by {', '.join(missed)} and met by "
            f"{', '.join(k for k, v in met.items() if v) or 'none'}: read a miss by a noisy "
            "wall-clock measure against the accounted cost and the CPU-time ratio."
        )
    else:
        parts[-1] += f" Every measure meets the target ratio {TARGET_RATIO}."
    mem = data.get("memory") or {}
    peak = mem.get("peak_ratio") or {}
    if "topo" in peak and "topo_callback" in peak:
        imp = (mem.get("ripser_import") or {}).get("rss_growth_mb")
        parts.append(
            f"**Memory.** Peak RSS in training is {100 * (peak['topo'] - 1):+.1f}% (`topo`) and "
            f"{100 * (peak['topo_callback'] - 1):+.1f}% (with the callback) against plain, one "
            "forked trial each"
            + (f"; importing ripser alone adds {imp:.0f} MB." if imp is not None else ".")
        )
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds, not an hour)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model (name or folder)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K folder with train.jsonl")
    p.add_argument(
        "--out", default=None, help="output folder (default bench/results; --quick: a temp folder)"
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="re-render the page (and the reading) from a saved overhead.json",
    )
    p.add_argument("--steps", type=int, default=40, help="timed steps per trial")
    p.add_argument(
        "--warmup-steps", type=int, default=2, help="steps of the untimed warm-up (0: none)"
    )
    p.add_argument("--repeats", type=int, default=5, help="repeats of the 3 configurations")
    p.add_argument("--every", type=int, default=20, help="snapshot interval (steps)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu | cuda (bench/gpu.sh)")
    p.add_argument(
        "--dtype",
        default="float32",
        help="base model weights: float32 | bfloat16 (the prompt "
        "stays float32, as peft creates it)",
    )
    p.add_argument("--seq-len", type=int, default=32, help="tokens per example (fixed)")
    p.add_argument("--tokens", type=int, default=20, help="virtual tokens")
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick)
    if args.quick:
        args.steps, args.every, args.repeats = 6, 3, 2
        args.batch_size, args.seq_len, args.warmup_steps = 4, 16, 0
    if args.steps < 1 or args.repeats < 1 or args.every < 1:
        p.error("--steps, --repeats and --every must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        data.update(analyse(data["trials"], data["settings"]))  # from the raw trials
        data["rendered_by"] = command_line()
        data["reading"] = default_reading(data)
        paths = write_result(args.out, "overhead", data, render_markdown(data))
        print(f"[overhead] re-rendered {paths[1]}")
        return 0
    single_thread()
    meta = run_metadata()
    log = print
    with LoadMonitor() as load:
        setup = load_setup(args)
        s = setup.settings
        memory: dict[str, Any] = {}
        ripser_import: dict[str, Any] | None = None
        # Enough steps for one scheduled snapshot; the peak is reached in the first steps.
        mem_steps = min(args.steps, args.every)
        if not args.no_memory:
            for config in CONFIGS:
                log(f"[overhead] memory: {config} ...", flush=True)
                memory[config] = in_child(
                    lambda c=config: _memory_child(c, setup, mem_steps, args.every)
                )
            ripser_import = in_child(_import_ripser_child)
        for config in CONFIGS if args.warmup_steps > 0 else ():
            log(f"[overhead] warm-up: {config} ...", flush=True)
            with tempfile.TemporaryDirectory() as wd:
                trial = make_trial(config, setup, wd, args.warmup_steps, args.every)
                trial.trainer.train()
                finish_trial(trial)
        trials = []
        for r in range(args.repeats):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            for pos, config in enumerate(order):
                t = run_timed_trial(config, setup, args.steps, args.every)
                t.update(repeat=r, position=pos)
                trials.append(t)
                log(
                    f"[overhead] repeat {r} {config:14s} {t['steps_per_s']:.4f} steps/s "
                    f"({t['seconds']:.1f} s, cpu {t['cpu_seconds']:.1f} s)",
                    flush=True,
                )
    data: dict[str, Any] = {"benchmark": "overhead", "quick": args.quick, **meta}
    data["load"] = load.summary()
    data["settings"] = s
    data.update(analyse(trials, s))
    plain_mem = memory.get("plain", {})
    data["memory"] = {
        "method": (
            "one trial per configuration in a child forked after model loading; peak = VmHWM "
            "after resetting it (/proc/self/clear_refs) just before trainer.train(); growth = "
            "peak - RSS just before training"
            if not args.no_memory
            else "skipped (--no-memory)"
        ),
        "steps": mem_steps + 1,
        "configs": memory,
        "ripser_import": ripser_import,
        "peak_ratio": {
            c: m["peak_rss_mb"] / plain_mem["peak_rss_mb"]
            for c, m in memory.items()
            if m.get("peak_rss_mb") and plain_mem.get("peak_rss_mb")
        },
        "growth_ratio": {
            c: m["growth_mb"] / plain_mem["growth_mb"]
            for c, m in memory.items()
            if m.get("growth_mb") and plain_mem.get("growth_mb")
        },
    }
    data["trials"] = trials
    data["reading"] = default_reading(data)
    json_path, md_path = write_result(args.out, "overhead", data, render_markdown(data))
    log(
        f"[overhead] ratio {data['ratio']:.3f} (paired {data['paired_ratio']:.3f}, cpu "
        f"{data['cpu_ratio']:.3f}); snapshot share "
        f"{100 * (data['accounting']['snapshot_share_wall'] or 0):.3f}%"
    )
    log(f"[overhead] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
