"""The main job: a recipe in, a complete run folder out (``hf-tsprompt train``).

Stages, each reading the previous one's files (so ``evaluate``, ``plot``, ``analyze`` and
``push`` also work on a finished run folder)::

    recipe --validate--> model + data --evaluate before--> train (TSLoss, barcodes)
           --> adapter/ + trainer_state.json --evaluate after--> figures/ --> README.md card

Run folder layout (``recipe.run_dir``)::

    recipe.yaml            the resolved recipe (after --set)
    run.json               what ran and how it went (status, accuracies, topology, versions)
    adapter/               PeftModel.save_pretrained: loads with PeftModel.from_pretrained
    trainer_state.json     transformers' TrainerState (log_history: loss, loss_ce, topo/*...)
    topology/              PersistenceCallback records (see hf_tsprompt.records)
    eval/before.json, eval/before_predictions.jsonl, eval/after.json, ...
    figures/*.png          hf_tsprompt.plots
    README.md              the model card (hf_tsprompt.hub)
    checkpoint-N/          Trainer checkpoints, if the recipe saves any

Nothing is written before the recipe, the model and the data have loaded: a bad recipe or a
missing file fails with nothing on disk. A run folder that already holds a run is refused
unless ``overwrite`` (replace it) or ``resume`` (continue from its last checkpoint) is given,
and a folder in use by another job (an OS file lock on ``<run>/.lock``) is always refused.
A run that stops early records it in ``run.json``: ``status: failed`` with the error, or
``interrupted`` (Ctrl-C), and the step reached; refusing the folder then says what happened
to that run and whether ``--resume`` (it saved a checkpoint) or ``--overwrite`` applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingFileError, RunFolderError
from .fsutil import atomic_write_json, atomic_write_text
from .recipes import TRAINING_DEFAULTS, Recipe, recipe_from_dict

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
ADAPTER_DIR = "adapter"
EVAL_DIR = "eval"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
#: Names a run writes into its folder; ``overwrite`` removes these and nothing else.
RUN_ARTIFACTS: tuple[str, ...] = (
    RUN_FILE,
    RECIPE_FILE,
    ADAPTER_DIR,
    EVAL_DIR,
    FIGURES_DIR,
    "topology",
    "README.md",
    "trainer_state.json",
    "report.html",
    "explain.json",
    "explain.md",
    "analysis.md",
    "analysis.json",
    "calibration",
)
SUMMARY_METRICS: tuple[str, ...] = (
    "h0_count",
    "h1_count",
    "h0_mean_lifespan",
    "h1_mean_lifespan",
    "h0_max_lifespan",
    "h1_max_lifespan",
    "entropy",
)

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


# --- run folder state ---------------------------------------------------------------------


def _has_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and (
        any((run_dir / name).exists() for name in RUN_ARTIFACTS)
        or any(run_dir.glob("checkpoint-*"))
    )


def _lock_holder(lock_path: Path) -> str | None:
    """The pid text of the process holding ``lock_path``, or None when it is free."""
    import fcntl

    if not lock_path.exists():
        return None
    with open(lock_path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return fh.read().strip() or "?"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``<run>/.lock`` (released even if the process is killed)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the block's duration
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise RunFolderError(
                f"run folder {run_dir} is in use by another job (pid {holder}). Wait for it to "
                "finish, or choose another output_dir (--set output_dir=...)."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def check_run_folder(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder in use, or one holding a run unless overwrite/resume. Writes nothing."""
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other; pick one.")
    holder = _lock_holder(run_dir / LOCK_FILE)
    if holder is not None:
        raise RunFolderError(
            f"run folder {run_dir} is in use by another job (pid {holder}). Wait for it to "
            "finish, or choose another output_dir (--set output_dir=...)."
        )
    if resume:
        if last_checkpoint(run_dir) is None:
            raise RunFolderError(
                f"--resume: {run_dir} has no checkpoint-N folder to resume from. Save "
                "checkpoints with training.save_strategy: steps (and save_steps), or start "
                "over with --overwrite."
            )
        return
    if _has_run(run_dir) and not overwrite:
        raise RunFolderError(_previous_run_message(run_dir))


def _previous_run_message(run_dir: Path) -> str:
    """What happened to the run already in ``run_dir``, and which flag applies to it."""
    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = {}
    status = info.get("status") if isinstance(info, dict) else None
    step = info.get("global_step") if isinstance(info, dict) else None
    at = f" at step {step}" if isinstance(step, int) else ""
    ckpt = last_checkpoint(run_dir)
    resume = f"--resume to continue from {ckpt.name}, " if ckpt is not None else ""
    new = "or --set output_dir=... for a new folder."
    if status == "failed":
        error = str(info.get("error") or "unknown error").rstrip(".")
        what = f"the previous run in {run_dir} failed{at}: {error}."
    elif status == "interrupted":
        what = f"the previous run in {run_dir} was interrupted (Ctrl-C){at}."
    elif status == "running":
        # The lock is free (checked before), so no live job is writing it: it was killed.
        what = (
            f"the previous run in {run_dir} stopped without finishing (its run.json still says "
            "running and no job holds the folder: the job was killed)."
        )
    else:
        return (
            f"run folder {run_dir} already holds a run. Pass --overwrite to replace it, "
            f"{resume or '--resume to continue from its last checkpoint, '}{new}"
        )
    if ckpt is None:
        return (
            f"{what} Pass --overwrite to start it again (--resume does not apply: it saved no "
            f"checkpoint), {new}"
        )
    return f"{what} Pass {resume}--overwrite to start it again, {new}"


def _complete_checkpoint(path: Path) -> bool:
    """Whether a ``checkpoint-N`` folder was fully written: the Trainer writes its
    ``trainer_state.json`` last, without an atomic rename, so a job killed while writing it
    leaves a torn file; such a checkpoint is skipped rather than crashing the resume."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_checkpoint(run_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N that is complete, or None."""
    best: tuple[int, Path] | None = None
    for path in run_dir.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if not suffix.isdigit() or (best is not None and int(suffix) <= best[0]):
            continue
        if _complete_checkpoint(path):
            best = (int(suffix), path)
    return best[1] if best else None


def _clear_run(run_dir: Path) -> None:
    for name in RUN_ARTIFACTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for ckpt in run_dir.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run folder (raises a clear error when it is not one)."""
    run_dir = Path(run_dir)
    file = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} does not exist.")
    if not file.is_file():
        raise RunFolderError(
            f"{run_dir} is not a run folder (no {RUN_FILE}); create one with "
            "`hf-tsprompt train RECIPE`."
        )
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{file} is corrupt ({err}); re-run the training.") from None


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe saved in a run folder."""
    import yaml

    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no {RECIPE_FILE}; it was not made by hf-tsprompt.")
    return recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), base_dir=run_dir)


# --- building blocks ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Framework versions for run.json and the model card."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("hf-tsprompt", "torch", "transformers", "peft", "trl", "datasets", "ripser"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def load_data(recipe: Recipe):
    """``(task, train_rows, test_rows)`` for the recipe's data section."""
    from .data import get_task, load_subsets

    task = get_task(recipe.data.task, recipe.data.config)
    train_rows, test_rows = load_subsets(
        task,
        recipe.data.source,
        k=recipe.data.train_size,
        n_test=recipe.data.test_size,
        seed=recipe.seed,
    )
    return task, train_rows, test_rows


def snapshot_evaluator(
    recipe: Recipe, tokenizer: Any, task: Any, train_rows: list, test_rows: list
) -> Callable[[Any], dict[str, Any]] | None:
    """The accuracy recorded with each barcode snapshot (``topology.evaluate``)."""
    from .evaluation import evaluate_model

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


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or torch.backends.mps.is_available()
    )


def training_config(recipe: Recipe, run_dir: Path):
    """``TopologicalPromptConfig`` from the recipe's training and ts sections."""
    from .trainer import TopologicalPromptConfig

    values: dict[str, Any] = {
        **TRAINING_DEFAULTS,
        # Without an accelerator, say so: only then does TrainingArguments set up gloo DDP
        # under torchrun / accelerate launch (else each process trains alone, world size 1).
        "use_cpu": not _has_accelerator(),
    }
    values.update(recipe.training)
    _check_training_on_this_machine(values)
    ts = recipe.ts
    try:
        args = TopologicalPromptConfig(
            output_dir=str(run_dir),
            seed=recipe.seed,
            ts_regularizer=ts.regularizer,
            ts_weight=ts.weight,
            ts_beta_h0=ts.beta_h0,
            ts_beta_h1=ts.beta_h1,
            ts_tau=ts.tau,
            ts_alpha=ts.alpha,
            ts_lambda_repel=ts.lambda_repel,
            ts_lambda_attract=ts.lambda_attract,
            ts_variant=ts.variant,
            ts_scale=ts.scale,
            **values,
        )
    except ConfigError:
        raise
    except Exception as err:  # anything TrainingArguments refuses is a recipe problem
        raise ConfigError(f"the recipe's training section is invalid: {err}") from None
    _check_optimizer(args)
    return args


def _check_training_on_this_machine(values: dict[str, Any]) -> None:
    """The recipe-independent checks of :mod:`hf_tsprompt.recipes` cannot know the machine:
    refuse here (still before any model loads) what this one cannot honour."""
    import torch

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
    if values.get("use_liger_kernel"):
        from transformers.utils import is_liger_kernel_available

        if not is_liger_kernel_available():
            raise ConfigError(
                "training.use_liger_kernel needs the liger-kernel package (pip install "
                "liger-kernel), or set it to false."
            )
    report_to = values.get("report_to")
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if any(n not in ("none", "all") for n in names):
        from transformers.integrations import get_available_reporting_integrations

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
    from transformers import Trainer

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
    from .evaluation import evaluate_model, save_eval

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
    eval_dir = run_dir / EVAL_DIR
    save_eval(result, eval_dir / f"{name}.json", eval_dir / f"{name}_predictions.jsonl")
    return result


def _summary(record: dict[str, Any] | None) -> dict[str, float]:
    if not record:
        return {}
    return {k: float(record["summary"][k]) for k in SUMMARY_METRICS if k in record["summary"]}


# --- the main job -------------------------------------------------------------------------


def train_from_recipe(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    extra_callbacks: list[Any] | None = None,
) -> RunResult:
    """Run a recipe end to end and write its run folder (see the module docstring).

    Under ``accelerate launch`` / ``torchrun`` every process runs this function: all of them
    load, check and train; only the main process holds the lock, evaluates before and after,
    and writes files, while the others wait for it at barriers.
    """
    from accelerate import PartialState
    from transformers import set_seed

    from .callbacks import PersistenceCallback
    from .data import TrainCollator, build_train_dataset, uses_chat_template
    from .models import load_base_model
    from .prompts import get_prompt_model
    from .records import read_records
    from .trainer import TopologicalPromptTrainer

    run_dir = recipe.run_dir.resolve()
    check_run_folder(run_dir, overwrite=overwrite, resume=resume)
    args = training_config(recipe, run_dir)  # fails fast on bad TrainingArguments
    # TrainingArguments sets up the (possibly distributed, possibly CPU/gloo) process state;
    # a bare PartialState() first would settle for a single process under torchrun on CPU.
    _ = args.device
    state = PartialState()
    main = state.is_main_process
    say: Log = log if main else (lambda _msg: None)

    say(f"[hf-tsprompt] loading model {recipe.model.name_or_path} ...")
    set_seed(recipe.seed)
    loaded = load_base_model(recipe.model.name_or_path, dtype=recipe.model.dtype)
    task, train_rows, test_rows = load_data(recipe)
    say(
        f"[hf-tsprompt] task {task.name}: {len(train_rows)} training / {len(test_rows)} test "
        f"examples; base model {loaded.hub_id}"
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
    # Adapters and cards record the public id, not this machine's cache folder.
    model.peft_config[model.active_adapter].base_model_name_or_path = loaded.hub_id
    train_ds = build_train_dataset(
        loaded.tokenizer, task, train_rows, max_length=recipe.data.max_length
    )
    # Every rank has checked the folder before the main one starts writing into it.
    state.wait_for_everyone()

    run_info: dict[str, Any] = {
        "name": recipe.name,
        "status": "running",
        "started": time.time(),
        "base_model": loaded.hub_id,
        "model_source": recipe.model.name_or_path,
        "license": loaded.license,
        "task": task.name,
        "task_config": recipe.data.config,
        "dataset_hub_id": task.hub_id,
        "dataset_source": recipe.data.source,
        "method": recipe.peft.method,
        "num_virtual_tokens": recipe.peft.num_virtual_tokens,
        "train_size": len(train_rows),
        "test_size": len(test_rows),
        "num_processes": state.num_processes,
        "chat_template": uses_chat_template(loaded.tokenizer),
        "example_prompt": task.user_text(test_rows[0]) if test_rows else None,
        "versions": versions(),
    }
    lock = run_lock(run_dir) if main else contextlib.nullcontext()
    live: dict[str, Any] = {}  # the trainer, once built: its step goes into a failure record
    with lock, _outcome_recorded(run_dir, run_info, live, enabled=main):
        before = None
        if main:
            if overwrite:
                _clear_run(run_dir)
            atomic_write_text(run_dir / RECIPE_FILE, recipe.to_yaml())
            atomic_write_json(run_dir / RUN_FILE, run_info)
            if recipe.evaluation.before and not resume:
                say("[hf-tsprompt] accuracy before training ...")
                before = _evaluate(
                    model, loaded.tokenizer, task, test_rows, recipe, run_dir, "before", progress
                ).accuracy
            elif resume and (run_dir / EVAL_DIR / "before.json").is_file():
                before = json.loads((run_dir / EVAL_DIR / "before.json").read_text())["accuracy"]
        state.wait_for_everyone()

        callback = PersistenceCallback(
            every_n_steps=recipe.topology.every_n_steps,
            every_n_epochs=recipe.topology.every_n_epochs,
            evaluate=snapshot_evaluator(recipe, loaded.tokenizer, task, train_rows, test_rows),
        )
        args.disable_tqdm = not progress
        trainer = TopologicalPromptTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            data_collator=TrainCollator(loaded.tokenizer),
            callbacks=[callback, *(extra_callbacks or [])],
        )
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            # Without tqdm the Trainer prints every log dict instead; quiet means quiet.
            trainer.remove_callback(PrinterCallback)
        live["trainer"] = trainer
        say(f"[hf-tsprompt] training into {run_dir} ...")
        checkpoint = str(last_checkpoint(run_dir)) if resume else None
        train_out = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_state()  # main process only (Trainer checks)

        after = None
        figures: list[Path] = []
        if main:
            # The prompt never changes the vocabulary; "auto" would ask the Hub about the base.
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
                run_dir / ADAPTER_DIR, save_embedding_layers=False
            )
            if recipe.evaluation.after:
                say("[hf-tsprompt] accuracy after training ...")
                after = _evaluate(
                    model, loaded.tokenizer, task, test_rows, recipe, run_dir, "after", progress
                ).accuracy
            for kind in _inference_baselines(recipe):
                say(f"[hf-tsprompt] accuracy after training, with {kind.upper()} ...")
                run_info[f"accuracy_after_{kind}"] = evaluate_run(
                    run_dir,
                    calibration="act" if kind == "act" else None,
                    dpc=kind == "dpc",
                    progress=progress,
                    loaded=(model, loaded.tokenizer),
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
                training=_training_summary(args),
            )
            atomic_write_json(run_dir / RUN_FILE, run_info)
            figures = _figures(run_dir, say)
            _explain(run_dir, loaded, say)
            _card(run_dir, say)
        state.wait_for_everyone()

    return RunResult(
        run_dir=run_dir,
        accuracy_before=before,
        accuracy_after=after,
        topology_start=run_info.get("topology_start", {}),
        topology_end=run_info.get("topology_end", {}),
        global_step=int(trainer.state.global_step),
        figures=figures,
        is_main_process=main,
    )


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
                atomic_write_json(run_dir / RUN_FILE, run_info)
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
    from .plots import plot_run

    try:
        return list(plot_run(run_dir))
    except Exception as err:  # a figure must never cost the user a finished run
        log(
            f"[hf-tsprompt] warning: figures failed ({type(err).__name__}: {err}); the run "
            "is complete; retry with `hf-tsprompt plot RUN_DIR`."
        )
        return []


def _explain(run_dir: Path, loaded: Any, log: Log) -> None:
    from .explain import Vocabulary, explain_run, save_explain

    try:
        vocab = Vocabulary.from_model(loaded.model, loaded.tokenizer)
        save_explain(explain_run(run_dir, vocab=vocab), run_dir)
    except Exception as err:  # the explanation can be rebuilt with `hf-tsprompt explain`
        log(
            f"[hf-tsprompt] warning: explain failed ({type(err).__name__}: {err}); retry with "
            "`hf-tsprompt explain RUN_DIR`."
        )


def _card(run_dir: Path, log: Log) -> None:
    from .hub import save_model_card

    try:
        save_model_card(run_dir)
    except Exception as err:  # the card can be rebuilt from the run folder later
        log(
            f"[hf-tsprompt] warning: model card failed ({type(err).__name__}: {err}); "
            "rebuild it with `hf-tsprompt card RUN_DIR`."
        )


def format_summary(result: RunResult) -> str:
    """The end-of-run summary printed by ``hf-tsprompt train``."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        "",
        f"Run finished: {result.run_dir}",
        f"  accuracy (test): {pct(result.accuracy_before)} -> {pct(result.accuracy_after)}",
        f"  steps: {result.global_step}",
    ]
    if result.topology_end:
        start, end = result.topology_start, result.topology_end
        lines.append("  topology (start -> end):")
        for key in SUMMARY_METRICS:
            if key in end:
                lines.append(
                    f"    {key:<18} {start.get(key, float('nan')):10.4g} -> {end[key]:10.4g}"
                )
    lines += [
        f"  adapter:   {result.run_dir / ADAPTER_DIR}  (PeftModel.from_pretrained(base, path))",
        f"  barcodes:  {result.run_dir / 'topology' / 'records.jsonl'}",
        f"  figures:   {result.run_dir / FIGURES_DIR} ({len(result.figures)} PNG)",
        f"  card:      {result.run_dir / 'README.md'}",
    ]
    return "\n".join(lines)


# --- working on a finished run ------------------------------------------------------------


def load_run_model(run_dir: str | Path):
    """``(peft_model, tokenizer, recipe, run_info)``: the base model with the run's adapter."""
    from peft import PeftModel

    from .models import load_base_model

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    recipe = load_run_recipe(run_dir)
    adapter = run_dir / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise RunFolderError(
            f"{run_dir} has no trained adapter ({adapter}/adapter_config.json); the training "
            "did not finish. Resume it with `hf-tsprompt train RECIPE --resume`."
        )
    if not (adapter / "adapter_model.safetensors").is_file():
        raise RunFolderError(
            f"{adapter} has no adapter_model.safetensors. hf-tsprompt reads weights as "
            "safetensors only (a pickled adapter_model.bin can run code when loaded); re-run "
            "or resume the training to write it."
        )
    loaded = load_base_model(recipe.model.name_or_path, dtype=recipe.model.dtype)
    model = PeftModel.from_pretrained(loaded.model, adapter)
    model.eval()
    return model, loaded.tokenizer, recipe, info


def evaluate_run(
    run_dir: str | Path,
    *,
    name: str | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    calibration: str | None = None,
    dpc: Any = None,
    progress: bool = True,
    loaded: tuple[Any, Any] | None = None,
) -> Any:
    """Re-run the test evaluation of a finished run; writes ``eval/<name>.json``.

    ``calibration="act"`` evaluates with ACT attention calibration (heads searched on the
    run's training rows once and saved in ``<run>/calibration/act.json``, reused while the
    adapter is unchanged); ``dpc`` (a :class:`hf_tsprompt.dpc.DPCConfig`, or True for its
    defaults) evaluates with dynamic prompt corruption. ``name`` defaults to ``after``,
    ``after_act`` or ``after_dpc``; only a plain re-evaluation updates ``accuracy_after``.
    ``loaded`` = ``(peft_model, tokenizer)`` reuses a model already in memory.
    """
    from .evaluation import evaluate_model, save_eval

    if calibration not in (None, "none", "act"):
        raise ConfigError(f"calibration must be 'none' or 'act', got {calibration!r}.")
    calibration = None if calibration == "none" else calibration
    if calibration and dpc:
        raise ConfigError("ACT calibration and DPC cannot be combined; choose one of them.")
    run_dir = Path(run_dir)
    if loaded is None:
        model, tokenizer, recipe, info = load_run_model(run_dir)
    else:  # the pipeline's own model, right after training
        (model, tokenizer), recipe, info = loaded, load_run_recipe(run_dir), read_run(run_dir)
    task, _, test_rows = load_data(recipe)
    if limit is not None:
        test_rows = test_rows[:limit]
    kwargs = {
        "batch_size": batch_size or recipe.evaluation.batch_size,
        "max_new_tokens": max_new_tokens or recipe.evaluation.max_new_tokens,
        "progress": progress,
        "max_prompt_tokens": recipe.data.max_length,
    }
    if calibration == "act":
        from .calibration import act_attention, calibrate_run

        act = calibrate_run(run_dir, model=model, tokenizer=tokenizer)
        with act_attention(model, act):
            result = evaluate_model(model, tokenizer, task, test_rows, **kwargs)
        name = name or "after_act"
    elif dpc:
        from .dpc import DPCConfig, evaluate_with_dpc

        config = dpc if isinstance(dpc, DPCConfig) else DPCConfig()
        result = evaluate_with_dpc(model, tokenizer, task, test_rows, config=config, **kwargs)
        name = name or "after_dpc"
    else:
        result = evaluate_model(model, tokenizer, task, test_rows, **kwargs)
        name = name or "after"
    eval_dir = run_dir / EVAL_DIR
    save_eval(result, eval_dir / f"{name}.json", eval_dir / f"{name}_predictions.jsonl")
    if name == "after" and not calibration and not dpc:
        info["accuracy_after"] = result.accuracy
        atomic_write_json(run_dir / RUN_FILE, info)
    return result
