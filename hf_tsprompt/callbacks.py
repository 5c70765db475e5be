"""``PersistenceCallback``: persistence barcodes of the soft prompt, recorded during training.

The paper runs TDA on the prompt every 20 epochs and records inference accuracy beside it
(section V-B); this callback does that for any ``Trainer`` on a peft prompt-learning model.
Snapshots are taken at the start of training, on the schedule (``every_n_steps`` and/or
``every_n_epochs``), at the last step, and at the end if training stopped early; each goes to
``<output_dir>/topology/`` in the format of :mod:`hf_tsprompt.records`.

**Logging.** A snapshot's summary is logged as ``topo/<metric>`` (``topo/h1_count``,
``topo/entropy``, ``topo/accuracy``...). From the second snapshot on, the structural
*evolution* is logged too: the Wasserstein and bottleneck distances from the previous snapshot's
diagrams, per homology dimension (``topo/h0_wasserstein``, ``topo/h0_bottleneck``,
``topo/h1_wasserstein``, ``topo/h1_bottleneck``; :func:`hf_tsprompt.topology.evolution`, which
drops the infinite H0 bar), and stored in the record's ``evolution``. They are distances per
snapshot interval, not per step: divide by the step gap (``step - previous_step``) for a rate
when the schedule is uneven (the last step, epoch snapshots).

A callback's ``on_log`` runs *after* the reporting integrations have received the logs, so the
metrics are handed over earlier:
:class:`~hf_tsprompt.TopologicalPromptTrainer` merges them in its ``log()``; with any other
``Trainer``, call :meth:`PersistenceCallback.attach` (it puts the callback first, so its
``on_log`` adds the metrics before TensorBoard / W&B see them).

**Resume.** On ``resume_from_checkpoint`` the records after the checkpoint's step (written by
the interrupted run) are dropped and re-taken, so the record has no duplicate and no gap; the
first snapshot after the resume measures its evolution from the last record kept.

**Distributed.** Only the world main process computes and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .errors import ConfigError
from .metrics import LOG_PREFIX, LOGGED_TOPOLOGY_KEYS
from .prompts import full_prompt_matrix, is_sharded, prompt_matrix
from .records import (
    RECORDS_FILE,
    make_record,
    prompt_file_name,
    read_records,
    topology_dir,
    truncate_records,
    write_snapshot,
)
from .topology import diagrams_from_lists, evolution, persistence
from .trainer import MetricSource

__all__ = ["LOGGED_KEYS", "EvalFn", "PersistenceCallback"]

#: Summary keys sent to the trainer's logs (as ``topo/<key>``;
#: :data:`hf_tsprompt.metrics.LOGGED_TOPOLOGY_KEYS`).
LOGGED_KEYS: tuple[str, ...] = LOGGED_TOPOLOGY_KEYS

EvalFn = Callable[[Any], "float | Mapping[str, Any]"]


def _steps_up_to(tdir: Path, step: int) -> set[int]:
    if not (tdir / RECORDS_FILE).is_file():
        return set()
    return {r["step"] for r in read_records(tdir) if r["step"] <= step}


def _last_diagrams(records: list[dict[str, Any]]) -> tuple[int, list[np.ndarray]] | None:
    """(step, diagrams) of the latest record (the last line wins for a step), or None."""
    by_step = {r["step"]: r for r in records if isinstance(r.get("diagrams"), dict)}
    if not by_step:
        return None
    step = max(by_step)
    lists = by_step[step]["diagrams"]
    return step, diagrams_from_lists([lists.get(f"h{k}", []) for k in range(len(lists))])


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_every(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int or None, got {value!r}.")
    return value


class PersistenceCallback(TrainerCallback, MetricSource):
    """Record the prompt's Vietoris-Rips persistence (H0, H1) during training.

    Args:
        every_n_steps: snapshot every this many optimiser steps (None: no step schedule).
        every_n_epochs: snapshot at the end of every this many epochs (None: no epoch schedule).
        evaluate: optional ``fn(model) -> accuracy`` (a float, or a mapping with ``accuracy``
            and any other numbers, e.g. ``correct``, ``total``, ``train_accuracy``, stored in
            the record's ``eval``), called at every snapshot on the main process: the paper's
            accuracy-at-snapshot pairs of Table II and the convergence count of Table IV. See
            :func:`hf_tsprompt.evaluation.task_evaluator` for one built from a dataset adapter.
        adapter: the peft adapter whose prompt is recorded (default: the active one).
        save_prompts: also save the raw prompt matrix (needed for heatmaps, PCA, t-SNE).
        maxdim: highest homology dimension (1: H0 and H1, as in the paper).
    """

    def __init__(
        self,
        every_n_steps: int | None = 20,
        every_n_epochs: int | None = None,
        *,
        evaluate: EvalFn | None = None,
        adapter: str | None = None,
        save_prompts: bool = True,
        maxdim: int = 1,
    ) -> None:
        self.every_n_steps = _check_every("every_n_steps", every_n_steps)
        self.every_n_epochs = _check_every("every_n_epochs", every_n_epochs)
        if evaluate is not None and not callable(evaluate):
            raise ConfigError(
                f"evaluate must be a callable fn(model) -> accuracy, got {type(evaluate).__name__}."
            )
        self.evaluate = evaluate
        self.adapter = adapter
        self.save_prompts = save_prompts
        self.maxdim = maxdim
        self._recorded: set[int] = set()
        self._pending: dict[str, float] = {}
        self._dir: Path | None = None
        # (step, diagrams) of the last snapshot, for the evolution metrics (main process only).
        self._previous: tuple[int, list[np.ndarray]] | None = None

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, trainer: Any) -> PersistenceCallback:
        """Add this callback to ``trainer`` as its *first* callback and return it.

        First, so that its ``on_log`` puts the ``topo/*`` metrics into the logs before the
        reporting integrations (TensorBoard, W&B) read them. Needed for a plain ``Trainer``
        only; ``TopologicalPromptTrainer`` merges them in ``log()`` wherever the callback is.
        """
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        return self

    def pop_pending_logs(self) -> dict[str, float]:
        """The ``topo/*`` metrics of snapshots not yet logged (and forget them)."""
        out, self._pending = self._pending, {}
        return out

    # -- events ------------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._dir = topology_dir(args.output_dir)
        self._recorded = set()
        self._pending = {}
        self._previous = None
        if state.global_step > 0:
            # Resuming: the snapshots the interrupted run took after its checkpoint are taken
            # again by the schedule, so they are dropped; every rank learns which steps stay
            # (a read), so all ranks take the same snapshot decisions; the main one truncates.
            self._recorded = _steps_up_to(self._dir, state.global_step)
            if state.is_world_process_zero:
                kept = truncate_records(self._dir, state.global_step)
                self._previous = _last_diagrams(kept)
            return
        if state.is_world_process_zero:
            # A fresh run into a folder with old records starts the record over.
            truncate_records(self._dir, -1)
        self._snapshot(model, state, "train_begin")

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        step = state.global_step
        due = bool(self.every_n_steps and step % self.every_n_steps == 0)
        last = state.max_steps > 0 and step >= state.max_steps
        if due or last:
            self._snapshot(model, state, "step")
            # Make the Trainer log at this step so the topo/* metrics reach the integrations.
            control.should_log = True

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not self.every_n_epochs or state.epoch is None:
            return
        if round(state.epoch) % self.every_n_epochs == 0:
            self._snapshot(model, state, "epoch")
            control.should_log = True

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._snapshot(model, state, "train_end")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is not None and self._pending:
            logs.update(self.pop_pending_logs())

    # -- work --------------------------------------------------------------------------------

    def _snapshot(self, model: Any, state: TrainerState, event: str) -> None:
        """Called on every rank with the same arguments; only the main process records."""
        step = int(state.global_step)
        if model is None or self._dir is None or step in self._recorded:
            return
        self._recorded.add(step)
        t0 = time.perf_counter()
        if is_sharded(model, self.adapter):
            P_t = full_prompt_matrix(model, self.adapter)  # a gather: every rank takes part
        elif state.is_world_process_zero:
            P_t = prompt_matrix(model, self.adapter)
        if not state.is_world_process_zero:
            return
        P = P_t.detach().float().cpu().numpy()
        result = persistence(P, maxdim=self.maxdim)
        evo: dict[str, Any] | None = None
        if self._previous is not None:
            evo = {"previous_step": self._previous[0], **evolution(self._previous[1], result)}
        self._previous = (step, result.diagrams)
        compute_s = time.perf_counter() - t0
        accuracy, eval_info = self._run_eval(model)
        record = make_record(
            step=step,
            epoch=state.epoch,
            event=event,
            result=result,
            prompt_file=prompt_file_name(step) if self.save_prompts else None,
            time=time.time(),
            accuracy=accuracy,
            eval_info=eval_info,
            evolution=evo,
        )
        record["compute_seconds"] = compute_s
        write_snapshot(self._dir, record, P if self.save_prompts else None)
        summary = record["summary"]
        self._pending = {f"{LOG_PREFIX}{k}": float(summary[k]) for k in LOGGED_KEYS}
        for key, value in (evo or {}).items():
            if key != "previous_step":
                self._pending[f"{LOG_PREFIX}{key}"] = float(value)
        if accuracy is not None:
            self._pending[f"{LOG_PREFIX}accuracy"] = float(accuracy)
        for key, value in (record.get("eval") or {}).items():
            self._pending[f"{LOG_PREFIX}{key}"] = float(value)

    def _run_eval(self, model: Any) -> tuple[float | None, dict[str, Any] | None]:
        if self.evaluate is None:
            return None, None
        was_training = model.training
        model.eval()
        try:
            out = self.evaluate(model)
        finally:
            model.train(was_training)
        if isinstance(out, Mapping):
            if "accuracy" not in out:
                raise ConfigError("evaluate() returned a mapping without an 'accuracy' key.")
            extra = {
                str(k): float(v) if isinstance(v, (float, np.floating)) else int(v)
                for k, v in out.items()
                if k != "accuracy" and _is_real(v)
            }
            return float(out["accuracy"]), extra or None
        if _is_real(out):
            return float(out), None
        raise ConfigError(
            f"evaluate() must return a float accuracy or a mapping with 'accuracy', got "
            f"{type(out).__name__}."
        )
