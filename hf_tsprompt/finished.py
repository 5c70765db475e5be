"""A finished run folder, worked on again: its model, its data, its evaluation, its ACT heads.

What ``hf-tsprompt evaluate RUN_DIR`` runs, and what the pipeline calls after training for
the recipe's inference-time baselines (ACT, DPC): each function reads the run's resolved
recipe (``recipe.yaml``) and ``run.json`` and writes only into the run folder's own files
(``eval/<name>.json``, ``calibration/act.json``, ``run.json``'s ``accuracy_after``).
:func:`load_data` is the recipe's data section loaded, for training (the pipeline) as for
evaluation (here), so both see the same rows.

**Layer.** A reader (it takes a finished run folder): it needs the recipe (``recipes``) and
the pieces that evaluate (``evaluation``, ``paper.calibration``, ``paper.dpc``) and load
models (``models``); ACT's saved heads and the adapter fingerprint belong to
``paper.calibration`` and ``runs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel

from .data import get_task, get_task_class, load_subsets
from .errors import ConfigError, RunFolderError
from .evaluation import EvalResult, evaluate_model, save_eval
from .models import load_base_model
from .paper.calibration import (
    ACTConfig,
    act_attention,
    find_act_heads,
    save_act,
    saved_act,
)
from .paper.dpc import DPCConfig, evaluate_with_dpc
from .recipes import Recipe, load_run_recipe
from .runs import ADAPTER_FILES, adapter_dir, adapter_fingerprint, eval_paths, read_run, write_run

__all__ = ["calibrate_run", "evaluate_run", "load_data", "load_run_model"]


def load_data(recipe: Recipe) -> tuple[Any, list, list]:
    """``(task, train_rows, test_rows)`` for the recipe's data section (the ``data`` keys a
    task declares in its ``options``, e.g. custom's ``columns`` and ``scorer``, go to it)."""
    data = recipe.data
    options = {k: getattr(data, k) for k in get_task_class(data.task).options if hasattr(data, k)}
    task = get_task(data.task, data.config, **options)
    train_rows, test_rows = load_subsets(
        task,
        recipe.data.source,
        k=recipe.data.train_size,
        n_test=recipe.data.test_size,
        seed=recipe.seed,
    )
    return task, train_rows, test_rows


def load_run_model(run_dir: str | Path) -> tuple[Any, Any, Recipe, dict[str, Any]]:
    """``(peft_model, tokenizer, recipe, run_info)``: the base model with the run's adapter."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    recipe = load_run_recipe(run_dir)
    adapter = adapter_dir(run_dir)
    config_file, weights_file = ADAPTER_FILES
    if not (adapter / config_file).is_file():
        raise RunFolderError(
            f"{run_dir} has no trained adapter ({adapter}/{config_file}); the training "
            "did not finish. Resume it with `hf-tsprompt train RECIPE --resume`."
        )
    if not (adapter / weights_file).is_file():
        raise RunFolderError(
            f"{adapter} has no {weights_file}. hf-tsprompt reads weights as "
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
) -> EvalResult:
    """Re-run the test evaluation of a finished run; writes ``eval/<name>.json``.

    ``calibration="act"`` evaluates with ACT attention calibration (heads searched on the
    run's training rows once and saved in ``<run>/calibration/act.json``, reused while the
    adapter is unchanged); ``dpc`` (a :class:`hf_tsprompt.paper.dpc.DPCConfig`, or True for its
    defaults) evaluates with dynamic prompt corruption. ``name`` defaults to ``after``,
    ``after_act`` or ``after_dpc``; only a plain re-evaluation updates ``accuracy_after``.
    ``loaded`` = ``(peft_model, tokenizer)`` reuses a model already in memory.
    """
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
        act = calibrate_run(run_dir, model=model, tokenizer=tokenizer)
        with act_attention(model, act):
            result = evaluate_model(model, tokenizer, task, test_rows, **kwargs)
        name = name or "after_act"
    elif dpc:
        config = dpc if isinstance(dpc, DPCConfig) else DPCConfig()
        result = evaluate_with_dpc(model, tokenizer, task, test_rows, config=config, **kwargs)
        name = name or "after_dpc"
    else:
        result = evaluate_model(model, tokenizer, task, test_rows, **kwargs)
        name = name or "after"
    save_eval(result, *eval_paths(run_dir, name))
    if name == "after" and not calibration and not dpc:
        info["accuracy_after"] = result.accuracy
        write_run(run_dir, info)
    return result


def calibrate_run(
    run_dir: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    **search: Any,
) -> ACTConfig:
    """Load ``<run>/calibration/act.json``, or search ACT's heads on the run's *training*
    rows and save them there, so every later evaluation uses the same heads.

    A saved search is reused only if it was made with the adapter now in the run folder
    (:func:`hf_tsprompt.paper.calibration.saved_act`); otherwise (or with ``overwrite``) the
    heads are searched again. ``model`` / ``tokenizer`` reuse an already loaded run model
    (from :func:`load_run_model`); ``search`` goes to
    :func:`~hf_tsprompt.paper.calibration.find_act_heads` (``batch_size`` and ``max_length``
    default to the recipe's evaluation batch size and ``data.max_length``)."""
    run_dir = Path(run_dir)
    if not overwrite and (saved := saved_act(run_dir)) is not None:
        return saved
    if model is None or tokenizer is None:
        model, tokenizer, recipe, _ = load_run_model(run_dir)
    else:
        recipe = load_run_recipe(run_dir)
    task, train_rows, _ = load_data(recipe)
    search.setdefault("batch_size", recipe.evaluation.batch_size)
    if recipe.data.max_length:
        search.setdefault("max_length", recipe.data.max_length)
    config = find_act_heads(model, tokenizer, task, train_rows, **search)
    config.calibration.update(
        rows_source="train",
        seed=recipe.seed,
        run=recipe.name,
        adapter_sha256=adapter_fingerprint(run_dir),
    )
    save_act(config, run_dir)
    return config
