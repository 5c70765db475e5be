"""Share a run on the Hugging Face Hub: push, load back.

The model card is built by :mod:`hf_tsprompt.cards` (:func:`build_model_card`,
:func:`save_model_card`, :func:`base_model_id` and :func:`run_info` are re-exported here).
This module reads no finished-run reader (explain, analysis, viz), so it sits in the pieces
layer: ``TopologicalPromptTrainer.push_to_hub`` writes the card with ``create_model_card`` and
publishes its ``output_dir`` through :func:`push_to_hub`, the same push as ``hf-tsprompt
push``, rather than Trainer's upload of the whole folder (whose ``training_args.bin`` and
adapter config name this machine's folders).

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

from .cards import (
    CARD_FIGURES,
    CARD_TEMPLATE,
    base_model_id,
    build_model_card,
    card_template,
    regularizer_label,
    run_info,
    run_regularizer,
    save_model_card,
)
from .errors import HubError, MissingFileError, RunFolderError
from .fsutil import read_json_dict
from .models import default_cache_dir, load_base_model
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
)

__all__ = [
    "CARD_FIGURES",
    "CARD_TEMPLATE",
    "PUSHED_FILES",
    "PUSHED_GLOBS",
    "base_model_id",
    "build_model_card",
    "card_template",
    "load_adapter",
    "push_to_hub",
    "run_info",
    "save_model_card",
]

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
    regularizer = run_regularizer(run_dir, ts)
    message = commit_message or (
        f"hf-tsprompt: {info.get('name')} ({info.get('method')}, {regularizer_label(regularizer)})"
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
    from .generation import fix_generate  # lazy: peft and transformers' generate

    loaded = load_base_model(str(base_model), dtype=dtype)
    model = PeftModel.from_pretrained(loaded.model, repo_id, revision=revision, token=token)
    model.eval()
    fix_generate(model)  # where peft's own generate is wrong for this adapter (generation.py)
    return model, loaded.tokenizer
