"""The main job: a recipe in, a complete run folder out (``hf-tsprompt train``).

Stages, each reading the previous one's files (so ``evaluate``, ``plot``, ``analyze`` and
``push`` also work on a finished run folder). This module only orchestrates: each stage's
work lives with its owner (the run folder in :mod:`hf_tsprompt.runs`, a finished run's
evaluation and ACT heads in :mod:`hf_tsprompt.finished`, figures in :mod:`hf_tsprompt.viz`)::

    recipe --validate--> model + data --evaluate before--> train (TSLoss, barcodes)
           --> adapter/ + trainer_state.json --evaluate after--> figures/ --> README.md card

Run folder layout (``recipe.run_dir``)::

    recipe.yaml            the resolved recipe (after --set)
    run.json               what ran and how it went (status, accuracies, topology, versions)
    adapter/               PeftModel.save_pretrained: loads with PeftModel.from_pretrained
    trainer_state.json     transformers' TrainerState (log_history: loss, loss_ce, topo/*...)
    topology/              PersistenceCallback records (see hf_tsprompt.records)
    eval/before.json, eval/before_predictions.jsonl, eval/after.json, ...
    figures/*.png          hf_tsprompt.viz.plots
    README.md              the model card (hf_tsprompt.cards)
    checkpoint-N/          Trainer checkpoints, if the recipe saves any

Nothing is written before the recipe, the data and the model have loaded (the data first, so
a bad source, split or column fails before the model loads): a bad recipe or a missing file
fails with nothing on disk. A run folder that already holds a run is refused
unless ``overwrite`` (replace it) or ``resume`` (continue from its last checkpoint) is given,
and a folder in use by another job (an OS file lock on ``<run>/.lock``) is always refused.
A run that stops early records it in ``run.json``: ``status: failed`` with the error, or
``interrupted`` (Ctrl-C), and the step reached; refusing the folder then says what happened
to that run and whether ``--resume`` (it saved a checkpoint) or ``--overwrite`` applies.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import Trainer, set_seed
from transformers.integrations import get_available_reporting_integrations
from transformers.trainer_callback import PrinterCallback
from transformers.utils import is_liger_kernel_available

from .callbacks import PersistenceCallback
from .cards import save_model_card
from .data import TrainCollator, build_train_dataset, uses_chat_template
from .errors import ConfigError, MissingDependencyError
from .evaluation import evaluate_model, save_eval
from .explain import Vocabulary, explain_run, save_explain
from .finished import evaluate_run, load_data
from .fsutil import atomic_write_text
from .metrics import format_value, metric_label, table_keys
from .models import load_base_model
from .prompts import get_prompt_model
from .recipes import Recipe, training_arguments
from .records import read_records
from .runs import (
    CARD_FILE,
    FIGURES_DIR,
    RECIPE_FILE,
    adapter_dir,
    check_run_folder,
    clear_run,
    eval_paths,
    last_checkpoint,
    records_file,
    run_lock,
    save_adapter,
    write_run,
)
from .trainer import TopologicalLossMixin, TopologicalPromptTrainer

__all__ = [
    "Log",
    "RunResult",
    "format_summary",
    "snapshot_evaluator",
    "train_from_recipe",
    "training_config",
    "versions",
]

Log = Callable[[str], None]


@dataclass
class RunResult:
    """What :func:`train_from_recipe` produced."""

    run_dir: Path
    accuracy_before: float | None
    accuracy_after: float | None
    topology_start: dict[str, float] = field(default_factory=dict)
    topology_end: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    figures: list[Path] = field(default_factory=list)
    is_main_process: bool = True


# --- building blocks ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Framework versions for run.json and the model card."""
    out = {"python": platform.python_version()}
    for name in ("hf-tsprompt", "torch", "transformers", "peft", "trl", "datasets", "ripser"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def snapshot_evaluator(
    recipe: Recipe, tokenizer: Any, task: Any, train_rows: list, test_rows: list
) -> Callable[[Any], dict[str, Any]] | None:
    """The accuracy recorded with each barcode snapshot (``topology.evaluate``)."""
    mode = recipe.topology.evaluate
    if mode == "none":
        return None
    eval_rows = test_rows[: recipe.topology.eval_size]
    kwargs = {
        "batch_size": recipe.evaluation.batch_size,
        "max_new_tokens": recipe.evaluation.max_new_tokens,
        "progress": False,
        "max_prompt_tokens": recipe.data.max_length,
    }

    def evaluate(model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if mode in ("train", "both"):
            res = evaluate_model(model, tokenizer, task, train_rows, **kwargs)
            out.update(train_accuracy=res.accuracy, train_correct=res.correct)
        if mode in ("test", "both"):
            res = evaluate_model(model, tokenizer, task, eval_rows, **kwargs)
            out.update(accuracy=res.accuracy, correct=res.correct, total=res.total)
        else:
            out["accuracy"] = out["train_accuracy"]
        return out

    return evaluate


def training_config(recipe: Recipe, run_dir: Path):
    """The recipe's ``TopologicalPromptConfig`` (built and validated when the recipe was
    loaded, :func:`hf_tsprompt.recipes.training_arguments`) writing into ``run_dir``, after
    the checks that depend on this machine."""
    args = recipe.training if recipe.training is not None else training_arguments(recipe)
    args = copy.copy(args)  # the recipe's own config keeps its output_dir
    args.output_dir = str(run_dir)
    _check_training_on_this_machine(vars(args))
    _check_optimizer(args)
    return args


def _check_training_on_this_machine(values: dict[str, Any]) -> None:
    """The recipe-independent checks of :mod:`hf_tsprompt.recipes` cannot know the machine:
    refuse here (still before any model loads) what this one cannot honour."""
    if values.get("fp16") and not torch.cuda.is_available():
        raise ConfigError(
            "training.fp16 needs a CUDA GPU; on this machine the Trainer would silently train "
            "in float32. Set training.fp16: false (or bf16: true, which CPUs support)."
        )
    workers, cores = values.get("dataloader_num_workers") or 0, os.cpu_count() or 1
    if workers > 4 * cores:
        raise ConfigError(
            f"training.dataloader_num_workers={workers} would start {workers} processes on a "
            f"machine with {cores} cores; use at most {4 * cores} (torch suggests one per core)."
        )
    if values.get("use_liger_kernel") and not is_liger_kernel_available():
        raise ConfigError(
            "training.use_liger_kernel needs the liger-kernel package (pip install "
            "liger-kernel), or set it to false."
        )
    report_to = values.get("report_to")
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if any(n not in ("none", "all") for n in names):
        available = get_available_reporting_integrations()
        for name in names:
            if name not in ("none", "all") and name not in available:
                raise ConfigError(
                    f"training.report_to={name!r} is not installed here; installed: "
                    f"{', '.join(available) or 'none'} (or 'none'). Install its package "
                    f"(e.g. pip install {name}) or drop it from report_to."
                )


def _check_optimizer(args: Any) -> None:
    """Resolve ``optim`` / ``optim_args`` as the Trainer will, before any model loads: an
    optimizer whose package is missing (bitsandbytes, GaLore, ...) fails here, not mid-run."""
    optim = str(getattr(args.optim, "value", args.optim))
    if "galore" in optim or "apollo" in optim:
        return  # these resolve their target modules on the model itself
    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except Exception as err:
        raise ConfigError(
            f"training.optim={optim!r} (optim_args={args.optim_args!r}) cannot be used here: {err}"
        ) from None


def _evaluate(model, tokenizer, task, rows, recipe, run_dir: Path, name: str, progress: bool):
    result = evaluate_model(
        model,
        tokenizer,
        task,
        rows,
        batch_size=recipe.evaluation.batch_size,
        max_new_tokens=recipe.evaluation.max_new_tokens,
        progress=progress,
        max_prompt_tokens=recipe.data.max_length,
    )
    save_eval(result, *eval_paths(run_dir, name))
    return result


def _summary(record: dict[str, Any] | None) -> dict[str, float]:
    if not record:
        return {}
    # the card's topology rows, read from the registry now (a plugin's metric included)
    keys = table_keys("topology")
    return {k: float(record["summary"][k]) for k in keys if k in record["summary"]}


# --- the main job -------------------------------------------------------------------------


@dataclass
class _Prepared:
    """What stage 1 (:func:`_prepare`) loaded; the later stages read it."""

    recipe: Recipe
    run_dir: Path
    args: Any  # the trainer's TrainingArguments
    state: Any  # accelerate's PartialState
    loaded: Any  # models.LoadedModel
    task: Any
    train_rows: list
    test_rows: list
    model: Any  # the peft prompt model
    train_ds: Any
    say: Log

    @property
    def main(self) -> bool:
        return bool(self.state.is_main_process)


def train_from_recipe(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    extra_callbacks: list[Any] | None = None,
    trainer_cls: type | None = None,
) -> RunResult:
    """Run a recipe end to end and write its run folder (see the module docstring).

    Four stages: :func:`_prepare` (check the folder, build the training arguments, load
    model, data and prompt; writes nothing), :func:`_start` (lock the folder, write the
    recipe and ``run.json``, evaluate before), :func:`_train` and :func:`_finish` (adapter,
    evaluate after, ``run.json``, figures, explanation, card). A failure after :func:`_start`
    is recorded in ``run.json`` (:func:`_outcome_recorded`).

    ``trainer_cls``: the Trainer to train with (default
    :class:`hf_tsprompt.trainer.TopologicalPromptTrainer`); a subclass of it customises
    training without re-implementing the run folder. Under ``accelerate launch`` /
    ``torchrun`` every process runs this function: all of them load, check and train; only
    the main process holds the lock, evaluates before and after, and writes files, while the
    others wait for it at barriers.
    """
    trainer_cls = _trainer_class(trainer_cls)
    p = _prepare(recipe, overwrite=overwrite, resume=resume, log=log)
    run_info = _initial_run_info(p)
    lock = run_lock(p.run_dir) if p.main else contextlib.nullcontext()
    live: dict[str, Any] = {}  # the trainer, once built: its step goes into a failure record
    with lock, _outcome_recorded(p.run_dir, run_info, live, enabled=p.main):
        before = _start(p, run_info, overwrite=overwrite, resume=resume, progress=progress)
        trainer, train_out = _train(
            p,
            trainer_cls,
            resume=resume,
            progress=progress,
            extra_callbacks=extra_callbacks,
            live=live,
        )
        after, figures = _finish(p, trainer, train_out, run_info, before, progress=progress)
    return RunResult(
        run_dir=p.run_dir,
        accuracy_before=before,
        accuracy_after=after,
        topology_start=run_info.get("topology_start", {}),
        topology_end=run_info.get("topology_end", {}),
        global_step=int(trainer.state.global_step),
        figures=figures,
        is_main_process=p.main,
    )


def _trainer_class(trainer_cls: type | None) -> type:
    if trainer_cls is None:
        return TopologicalPromptTrainer
    if not (
        isinstance(trainer_cls, type)
        and issubclass(trainer_cls, Trainer)
        and issubclass(trainer_cls, TopologicalLossMixin)
    ):
        raise ConfigError(
            f"trainer_cls must be a Trainer class with hf_tsprompt's TSLoss (a subclass of "
            f"TopologicalPromptTrainer or TopologicalSFTTrainer), got {trainer_cls!r}."
        )
    return trainer_cls


def _prepare(recipe: Recipe, *, overwrite: bool, resume: bool, log: Log) -> _Prepared:
    """Stage 1: everything that can fail on a bad recipe or a missing file; writes nothing."""
    run_dir = recipe.run_dir.resolve()
    check_run_folder(run_dir, overwrite=overwrite, resume=resume)
    args = training_config(recipe, run_dir)  # fails fast on bad TrainingArguments
    # TrainingArguments sets up the (possibly distributed, possibly CPU/gloo) process state;
    # a bare PartialState() first would settle for a single process under torchrun on CPU.
    _ = args.device
    state = PartialState()
    say: Log = log if state.is_main_process else (lambda _msg: None)

    # The data before the model: a bad source, split or column costs no model load.
    task, train_rows, test_rows = load_data(recipe)
    say(f"[hf-tsprompt] loading model {recipe.model.name_or_path} ...")
    set_seed(recipe.seed)
    loaded = load_base_model(recipe.model.name_or_path, dtype=recipe.model.dtype)
    # The recipe's model.hub_id names a local folder that does not say which Hub model it is.
    loaded.hub_id = recipe.model.hub_id or loaded.hub_id
    base = loaded.hub_id or (
        f"{loaded.source.name} (a local folder with no Hub id: set model.hub_id in the recipe "
        "to publish the adapter with a runnable card)"
    )
    say(
        f"[hf-tsprompt] task {task.name}: {len(train_rows)} training / {len(test_rows)} test "
        f"examples; base model {base}"
    )
    set_seed(recipe.seed)
    model = get_prompt_model(
        loaded.model,
        recipe.peft.method,
        num_virtual_tokens=recipe.peft.num_virtual_tokens,
        init=recipe.peft.init,
        init_std=recipe.peft.init_std,
        init_text=recipe.peft.init_text,
        tokenizer_name_or_path=str(loaded.source),
    )
    # Adapters and cards record the public id, not this machine's folder (peft writes what it
    # was given; the tokenizer path is read only by TEXT init, which has run by now). Without
    # a Hub id the local path stays in the run folder, and push rewrites or refuses it.
    peft_config = model.peft_config[model.active_adapter]
    peft_config.base_model_name_or_path = loaded.hub_id
    if loaded.hub_id and getattr(peft_config, "tokenizer_name_or_path", None):
        peft_config.tokenizer_name_or_path = loaded.hub_id
    train_ds = build_train_dataset(
        loaded.tokenizer, task, train_rows, max_length=recipe.data.max_length
    )
    # Every rank has checked the folder before the main one starts writing into it.
    state.wait_for_everyone()
    return _Prepared(
        recipe, run_dir, args, state, loaded, task, train_rows, test_rows, model, train_ds, say
    )


def _initial_run_info(p: _Prepared) -> dict[str, Any]:
    recipe, task, test_rows = p.recipe, p.task, p.test_rows
    return {
        "name": recipe.name,
        "status": "running",
        "started": time.time(),
        "base_model": p.loaded.hub_id,
        "model_source": recipe.model.name_or_path,
        "license": p.loaded.license,
        "task": task.name,
        "task_config": recipe.data.config,
        "dataset_hub_id": task.hub_id,
        "dataset_source": recipe.data.source,
        "method": recipe.peft.method,
        "num_virtual_tokens": recipe.peft.num_virtual_tokens,
        "train_size": len(p.train_rows),
        "test_size": len(test_rows),
        "num_processes": p.state.num_processes,
        "chat_template": uses_chat_template(p.loaded.tokenizer),
        "example_prompt": task.user_text(test_rows[0]) if test_rows else None,
        "versions": versions(),
    }


def _start(
    p: _Prepared, run_info: dict[str, Any], *, overwrite: bool, resume: bool, progress: bool
) -> float | None:
    """Stage 2 (inside the lock): write the recipe and ``run.json``; the accuracy before."""
    before = None
    if p.main:
        if overwrite:
            clear_run(p.run_dir)
        atomic_write_text(p.run_dir / RECIPE_FILE, p.recipe.to_yaml())
        write_run(p.run_dir, run_info)
        before_file = eval_paths(p.run_dir, "before")[0]
        if p.recipe.evaluation.before and not resume:
            p.say("[hf-tsprompt] accuracy before training ...")
            before = _evaluate(
                p.model,
                p.loaded.tokenizer,
                p.task,
                p.test_rows,
                p.recipe,
                p.run_dir,
                "before",
                progress,
            ).accuracy
        elif resume and before_file.is_file():
            before = json.loads(before_file.read_text())["accuracy"]
    p.state.wait_for_everyone()
    return before


def _train(
    p: _Prepared,
    trainer_cls: type,
    *,
    resume: bool,
    progress: bool,
    extra_callbacks: list[Any] | None,
    live: dict[str, Any],
) -> tuple[Any, Any]:
    """Stage 3: the Trainer with the barcode callback; returns ``(trainer, train output)``."""
    recipe = p.recipe
    callback = PersistenceCallback(
        every_n_steps=recipe.topology.every_n_steps,
        every_n_epochs=recipe.topology.every_n_epochs,
        evaluate=snapshot_evaluator(recipe, p.loaded.tokenizer, p.task, p.train_rows, p.test_rows),
    )
    p.args.disable_tqdm = not progress
    trainer = trainer_cls(
        model=p.model,
        args=p.args,
        train_dataset=p.train_ds,
        data_collator=TrainCollator(p.loaded.tokenizer),
        callbacks=[callback, *(extra_callbacks or [])],
    )
    if not progress:
        # Without tqdm the Trainer prints every log dict instead; quiet means quiet.
        trainer.remove_callback(PrinterCallback)
    live["trainer"] = trainer
    p.say(f"[hf-tsprompt] training into {p.run_dir} ...")
    checkpoint = str(last_checkpoint(p.run_dir)) if resume else None
    train_out = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()  # main process only (Trainer checks)
    return trainer, train_out


def _finish(
    p: _Prepared,
    trainer: Any,
    train_out: Any,
    run_info: dict[str, Any],
    before: float | None,
    *,
    progress: bool,
) -> tuple[float | None, list[Path]]:
    """Stage 4 (main process): adapter, accuracy after (and with ACT / DPC), ``run.json``,
    figures, explanation, card. Returns ``(accuracy after, figure paths)``."""
    after = None
    figures: list[Path] = []
    if p.main:
        run_dir, recipe = p.run_dir, p.recipe
        save_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter_dir(run_dir))
        if recipe.evaluation.after:
            p.say("[hf-tsprompt] accuracy after training ...")
            after = _evaluate(
                p.model,
                p.loaded.tokenizer,
                p.task,
                p.test_rows,
                recipe,
                run_dir,
                "after",
                progress,
            ).accuracy
        for kind in _inference_baselines(recipe):
            p.say(f"[hf-tsprompt] accuracy after training, with {kind.upper()} ...")
            run_info[f"accuracy_after_{kind}"] = evaluate_run(
                run_dir,
                calibration="act" if kind == "act" else None,
                dpc=kind == "dpc",
                progress=progress,
                loaded=(p.model, p.loaded.tokenizer),
            ).accuracy
        records = read_records(run_dir)
        run_info.update(
            status="finished",
            finished=time.time(),
            global_step=int(trainer.state.global_step),
            train_runtime=float(train_out.metrics.get("train_runtime", 0.0)),
            accuracy_before=before,
            accuracy_after=after,
            topology_start=_summary(records[0] if records else None),
            topology_end=_summary(records[-1] if records else None),
            training=_training_summary(p.args),
        )
        write_run(run_dir, run_info)
        figures = _figures(run_dir, p.say)
        _explain(run_dir, p.loaded, p.say)
        _card(run_dir, p.say)
    p.state.wait_for_everyone()
    return after, figures


@contextlib.contextmanager
def _outcome_recorded(
    run_dir: Path, run_info: dict[str, Any], live: dict[str, Any], *, enabled: bool
) -> Iterator[None]:
    """Record a run that stops early in its run.json: ``status: failed`` with the error, or
    ``interrupted`` (Ctrl-C), and the step it reached; then re-raise. The next ``train`` of
    the recipe reads it to say what happened and whether ``--resume`` applies. (A killed job
    cannot record anything: its run.json keeps ``running``, with no job holding the lock.)
    """
    try:
        yield
    except BaseException as err:
        if enabled and run_info.get("status") == "running":
            interrupted = isinstance(err, KeyboardInterrupt)
            trainer = live.get("trainer")
            message = " ".join(str(err).split())[:1000]
            run_info.update(
                status="interrupted" if interrupted else "failed",
                error=f"{type(err).__name__}: {message}" if message else type(err).__name__,
                stopped=time.time(),
                global_step=int(trainer.state.global_step) if trainer is not None else 0,
            )
            with contextlib.suppress(Exception):  # never hide the original error
                write_run(run_dir, run_info)
        raise


def _inference_baselines(recipe: Recipe) -> list[str]:
    """The inference-time methods a recipe asks to score after training (ACT, DPC)."""
    kinds = ["act"] if recipe.evaluation.calibration == "act" else []
    return [*kinds, "dpc"] if recipe.evaluation.dpc else kinds


def _training_summary(args: Any) -> dict[str, Any]:
    """The optimiser settings a card and run.json report."""
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return {
        "optim": str(getattr(args.optim, "value", args.optim)),
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "adam_epsilon": args.adam_epsilon,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "lr_scheduler_type": str(scheduler),
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
    }


def _figures(run_dir: Path, log: Log) -> list[Path]:
    try:  # lazy: figures are the optional [viz] extra
        from .viz.plots import plot_run
    except MissingDependencyError as err:
        log(f"[hf-tsprompt] figures skipped: {err}")
        return []
    try:
        return list(plot_run(run_dir))
    except Exception as err:  # a figure must never cost the user a finished run
        log(
            f"[hf-tsprompt] warning: figures failed ({type(err).__name__}: {err}); the run "
            "is complete; retry with `hf-tsprompt plot RUN_DIR`."
        )
        return []


def _explain(run_dir: Path, loaded: Any, log: Log) -> None:
    try:
        vocab = Vocabulary.from_model(loaded.model, loaded.tokenizer)
        save_explain(explain_run(run_dir, vocab=vocab), run_dir)
    except Exception as err:  # the explanation can be rebuilt with `hf-tsprompt explain`
        log(
            f"[hf-tsprompt] warning: explain failed ({type(err).__name__}: {err}); retry with "
            "`hf-tsprompt explain RUN_DIR`."
        )


def _card(run_dir: Path, log: Log) -> None:
    try:
        save_model_card(run_dir)
    except Exception as err:  # the card can be rebuilt from the run folder later
        log(
            f"[hf-tsprompt] warning: model card failed ({type(err).__name__}: {err}); "
            "rebuild it with `hf-tsprompt card RUN_DIR`."
        )


def format_summary(result: RunResult) -> str:
    """The end-of-run summary printed by ``hf-tsprompt train`` (labels and number formats
    from :mod:`hf_tsprompt.metrics`, as on the card and in the report)."""
    before = format_value("accuracy_before", result.accuracy_before)
    after = format_value("accuracy_after", result.accuracy_after)
    lines = [
        "",
        f"Run finished: {result.run_dir}",
        f"  accuracy (test): {before} -> {after}",
        f"  steps: {result.global_step}",
    ]
    if result.topology_end:
        start, end = result.topology_start, result.topology_end
        lines.append("  topology (start -> end):")
        for key in table_keys("topology"):
            if key in end:
                old, new = format_value(key, start.get(key)), format_value(key, end[key])
                lines.append(f"    {metric_label(key):<28} {old:>10} -> {new:>10}")
    lines += [
        f"  adapter:   {adapter_dir(result.run_dir)}  (PeftModel.from_pretrained(base, path))",
        f"  barcodes:  {records_file(result.run_dir)}",
        f"  figures:   {result.run_dir / FIGURES_DIR} ({len(result.figures)} PNG)",
        f"  card:      {result.run_dir / CARD_FILE}",
    ]
    return "\n".join(lines)
