"""The run folder: the one owner of its layout, its metadata, its lock and its adapter.

A run folder is what ``hf-tsprompt train`` writes and everything else reads::

    recipe.yaml            RECIPE_FILE: the resolved recipe (after --set)
    run.json               RUN_FILE: what ran and how it went (status, accuracies, topology)
    adapter/               ADAPTER_DIR: PeftModel.save_pretrained, see save_adapter
    trainer_state.json     TRAINER_STATE_FILE: transformers' TrainerState (log_history)
    topology/records.jsonl TOPOLOGY_DIR / RECORDS_FILE: PersistenceCallback's barcodes
    eval/<name>.json       EVAL_DIR: eval_paths(run, name), with <name>_predictions.jsonl
    figures/*.png          FIGURES_DIR: hf_tsprompt.viz.plots
    README.md              CARD_FILE: the model card
    explain.json/.md, analysis.json/.md, report.html, calibration/act.json
    checkpoint-N/          Trainer checkpoints, if the recipe saves any
    .lock                  LOCK_FILE: held by the job writing the folder, removed when it
                           ends (a killed job leaves it, unlocked)

No other module spells one of these names: it asks this module. :func:`read_run` is the one
reader of ``run.json`` (``strict`` for the pipeline, lenient for readers of folders that other
tools made), :func:`write_run` the one writer, :func:`run_lock` the one lock, and
:func:`save_adapter` the one place an adapter is saved (never with embedding layers).

**Layer.** This module imports only the foundations (``errors``, ``fsutil``) and PyYAML. The
issue that created it placed the run folder above the training pieces; it sits lower here
because two training pieces write into the folder themselves (``PersistenceCallback`` its
records, the Trainer its checkpoints and, in ``push_to_hub``, the adapter), and a layout they
could not import would have to be spelled twice. It holds no training, recipe or reading
logic, so nothing it depends on is above them: the recipe of a run is parsed by
``hf_tsprompt.recipes.load_run_recipe``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingFileError, RunFolderError
from .fsutil import atomic_write_json, file_lock, lock_holder, read_json_dict

__all__ = [
    "ACT_FILE",
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_DIR",
    "ADAPTER_FILES",
    "ANALYSIS_JSON",
    "ANALYSIS_MD",
    "CALIBRATION_DIR",
    "CARD_FILE",
    "EVAL_DIR",
    "EXPLAIN_JSON",
    "EXPLAIN_MD",
    "FIGURES_DIR",
    "LOCK_FILE",
    "PROMPTS_DIR",
    "RECIPE_FILE",
    "RECORDS_FILE",
    "REPORT_FILE",
    "RUN_ARTIFACTS",
    "RUN_FILE",
    "TOPOLOGY_DIR",
    "TRAINER_STATE_FILE",
    "adapter_dir",
    "adapter_fingerprint",
    "adapter_save_kwargs",
    "check_run_folder",
    "clear_run",
    "eval_paths",
    "find_adapter",
    "has_run",
    "last_checkpoint",
    "previous_run_message",
    "read_recipe_text",
    "read_run",
    "records_file",
    "run_lock",
    "save_adapter",
    "trainer_state_file",
    "write_run",
]

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: The files of a complete saved adapter (what a push uploads to the repo root).
ADAPTER_FILES: tuple[str, ...] = (ADAPTER_CONFIG_FILE, "adapter_model.safetensors")
EVAL_DIR = "eval"
FIGURES_DIR = "figures"
TOPOLOGY_DIR = "topology"
RECORDS_FILE = "records.jsonl"
#: Saved prompt matrices, inside :data:`TOPOLOGY_DIR`.
PROMPTS_DIR = "prompts"
CARD_FILE = "README.md"
TRAINER_STATE_FILE = "trainer_state.json"
REPORT_FILE = "report.html"
EXPLAIN_JSON = "explain.json"
EXPLAIN_MD = "explain.md"
ANALYSIS_MD = "analysis.md"
ANALYSIS_JSON = "analysis.json"
CALIBRATION_DIR = "calibration"
#: ACT's head search result (``hf_tsprompt.paper.calibration``), relative to the run folder.
ACT_FILE = f"{CALIBRATION_DIR}/act.json"
LOCK_FILE = ".lock"
#: Names a run writes into its folder; ``overwrite`` removes these (and checkpoints) only.
RUN_ARTIFACTS: tuple[str, ...] = (
    RUN_FILE,
    RECIPE_FILE,
    ADAPTER_DIR,
    EVAL_DIR,
    FIGURES_DIR,
    TOPOLOGY_DIR,
    CARD_FILE,
    TRAINER_STATE_FILE,
    REPORT_FILE,
    EXPLAIN_JSON,
    EXPLAIN_MD,
    ANALYSIS_MD,
    ANALYSIS_JSON,
    CALIBRATION_DIR,
)


# --- paths --------------------------------------------------------------------------------


def adapter_dir(run_dir: str | Path) -> Path:
    """``<run>/adapter``, where :func:`save_adapter` puts the run's adapter."""
    return Path(run_dir) / ADAPTER_DIR


def find_adapter(run_dir: str | Path) -> Path:
    """Where a saved adapter is: ``<run>/adapter`` (our layout) or the folder itself (an
    adapter saved by plain peft). Raises :class:`RunFolderError` when neither holds one."""
    run_dir = Path(run_dir)
    for candidate in (adapter_dir(run_dir), run_dir):
        if (candidate / ADAPTER_CONFIG_FILE).is_file():
            return candidate
    raise RunFolderError(
        f"{run_dir} has no trained adapter ({ADAPTER_DIR}/{ADAPTER_CONFIG_FILE}). Finish the "
        "training first (`hf-tsprompt train RECIPE`, or `--resume` an interrupted one)."
    )


def eval_paths(run_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(eval/<name>.json, eval/<name>_predictions.jsonl)``: an evaluation's summary and its
    per-row predictions (``name``: before, after, or a baseline's name)."""
    folder = Path(run_dir) / EVAL_DIR
    return folder / f"{name}.json", folder / f"{name}_predictions.jsonl"


def records_file(run_dir: str | Path) -> Path:
    """``<run>/topology/records.jsonl``."""
    return Path(run_dir) / TOPOLOGY_DIR / RECORDS_FILE


def trainer_state_file(run_dir: str | Path) -> Path | None:
    """``<run>/trainer_state.json``, else the latest complete checkpoint's (a run stopped
    before its end saved only those), else None."""
    run_dir = Path(run_dir)
    file = run_dir / TRAINER_STATE_FILE
    if file.is_file():
        return file
    ckpt = last_checkpoint(run_dir)
    return ckpt / TRAINER_STATE_FILE if ckpt is not None else None


# --- run.json and recipe.yaml -------------------------------------------------------------


def read_run(run_dir: str | Path, *, strict: bool = True) -> dict[str, Any]:
    """``run.json`` of a run folder.

    ``strict`` (the pipeline, ``evaluate``): raise :class:`MissingFileError` for a missing
    folder and :class:`RunFolderError` for a missing, corrupt or non-object file. Lenient
    (the card, the report, explain: they also read folders that plain peft or an interrupted
    run made): ``{}`` in each of those cases.
    """
    run_dir = Path(run_dir)
    file = run_dir / RUN_FILE
    if not strict:
        return read_json_dict(file)
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} does not exist.")
    if not file.is_file():
        raise RunFolderError(
            f"{run_dir} is not a run folder (no {RUN_FILE}); create one with "
            "`hf-tsprompt train RECIPE`."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{file} is corrupt ({err}); re-run the training.") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{file} is corrupt (not a JSON object); re-run the training.")
    return data


def write_run(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``run.json`` atomically (a crash leaves the previous version whole)."""
    return atomic_write_json(Path(run_dir) / RUN_FILE, info)


def read_recipe_text(run_dir: str | Path, *, strict: bool = True) -> tuple[dict[str, Any], str]:
    """``recipe.yaml`` of a run folder as ``(mapping, text)``, not validated (the recipe
    module validates: ``recipes.load_run_recipe``).

    ``strict``: raise :class:`RunFolderError` when the file is missing or is not a YAML
    mapping. Lenient: ``({}, "")`` when missing, ``({}, text)`` when unparsable.
    """
    import yaml  # lazy: the CLI imports this module for ``--help``, which needs no YAML

    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        if strict:
            raise RunFolderError(f"{run_dir} has no {RECIPE_FILE}; it was not made by hf-tsprompt.")
        return {}, ""
    text = path.read_text(encoding="utf-8", errors="strict" if strict else "replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        if strict:
            raise RunFolderError(f"{path} is not valid YAML ({err}).") from None
        return {}, text
    if not isinstance(data, dict):
        if strict:
            raise RunFolderError(f"{path} is not a YAML mapping of recipe sections.")
        return {}, text
    return data, text


# --- state: lock, previous runs, checkpoints -----------------------------------------------


def _in_use(run_dir: Path, holder: str) -> RunFolderError:
    return RunFolderError(
        f"run folder {run_dir} is in use by another job (pid {holder}). Wait for it to "
        "finish, or choose another output_dir (--set output_dir=...)."
    )


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock on ``<run>/.lock`` for the block (the OS releases it even if
    the process is killed); raises :class:`RunFolderError` naming the holder's pid when
    another job holds it. The file is removed when the block ends, so a finished (or failed)
    run folder holds no ``.lock``; a killed job's stays, unlocked, and is reused."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = file_lock(run_dir / LOCK_FILE, blocking=False, record_pid=True, remove=True)
    with lock as acquired:
        if not acquired:
            raise _in_use(run_dir, lock_holder(run_dir / LOCK_FILE) or "?")
        yield


def has_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a run."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and (
        any((run_dir / name).exists() for name in RUN_ARTIFACTS)
        or any(run_dir.glob("checkpoint-*"))
    )


def check_run_folder(run_dir: str | Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder in use, or one holding a run unless overwrite/resume. Writes nothing."""
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other; pick one.")
    holder = lock_holder(run_dir / LOCK_FILE)
    if holder is not None:
        raise _in_use(run_dir, holder)
    if resume:
        if last_checkpoint(run_dir) is None:
            raise RunFolderError(
                f"--resume: {run_dir} has no checkpoint-N folder to resume from. Save "
                "checkpoints with training.save_strategy: steps (and save_steps), or start "
                "over with --overwrite."
            )
        return
    if has_run(run_dir) and not overwrite:
        raise RunFolderError(previous_run_message(run_dir))


def previous_run_message(run_dir: str | Path) -> str:
    """What happened to the run already in ``run_dir``, and which flag applies to it."""
    run_dir = Path(run_dir)
    info = read_run(run_dir, strict=False)
    status = info.get("status")
    step = info.get("global_step")
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
            f"the previous run in {run_dir} stopped without finishing (its {RUN_FILE} still "
            "says running and no job holds the folder: the job was killed)."
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
    state = read_json_dict(path / TRAINER_STATE_FILE)
    return "global_step" in state


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N that is complete, or None."""
    best: tuple[int, Path] | None = None
    for path in Path(run_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if not suffix.isdigit() or (best is not None and int(suffix) <= best[0]):
            continue
        if _complete_checkpoint(path):
            best = (int(suffix), path)
    return best[1] if best else None


def clear_run(run_dir: str | Path) -> None:
    """Remove what a run wrote (:data:`RUN_ARTIFACTS` and checkpoints), nothing else."""
    run_dir = Path(run_dir)
    for name in RUN_ARTIFACTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for ckpt in run_dir.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt)


# --- the adapter --------------------------------------------------------------------------


def save_adapter(model: Any, directory: str | Path, **kwargs: Any) -> Path:
    """``model.save_pretrained(directory, save_embedding_layers=False)``; returns the folder.

    A soft prompt never changes the vocabulary, so the embedding layers are never saved with
    it; and peft's default ``"auto"`` looks the base model's config up on the Hub at every
    save, which stalls for the Hub timeout without a network. Used for ``<run>/adapter``
    (:func:`adapter_dir`) and by the trainer's checkpoints and ``push_to_hub``.
    """
    model.save_pretrained(str(directory), **adapter_save_kwargs(kwargs))
    return Path(directory)


def adapter_save_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``PeftModel.save_pretrained`` with embedding layers off unless the
    caller says otherwise: the policy of :func:`save_adapter`, for the Trainer's own
    checkpoint save, which calls ``save_pretrained`` itself."""
    return {"save_embedding_layers": False, **kwargs}


def adapter_fingerprint(run_dir: str | Path) -> str | None:
    """sha256 over the files of ``<run>/adapter`` (None when there is no adapter folder):
    ties what was computed from a run's adapter (ACT's saved head search) to the exact soft
    prompt it was computed with."""
    adapter = adapter_dir(run_dir)
    if not adapter.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(adapter).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
