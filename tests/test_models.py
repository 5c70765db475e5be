"""Tests for hf_tsprompt.models: resolving and loading base models (folders, Hub ids, names).

The embedded-model cache (GGUF conversion, its lock, the real SmolLM2 / Gemma checkpoints) is
tested in ``test_embedded.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hf_tsprompt import embedded, models
from hf_tsprompt.errors import ConfigError, MissingFileError, UserError
from hf_tsprompt.models import LoadedModel, load_base_model, resolve_model_name

from tiny import CHAT_TEMPLATE, tiny_llama

TINY_TEXT = "Answer: 48 / 2 = 24 clips in May. The answer is (A)."


def _logits(model, tokenizer, text: str = TINY_TEXT) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        return model(ids).logits


# --- loading save_pretrained folders ---------------------------------------------------------


def test_load_local_folder(tiny_model_dir):
    loaded = load_base_model(str(tiny_model_dir))
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == Path(tiny_model_dir).resolve()
    # The config names no Hub id, and the folder's own name is not one: the id is unknown.
    assert loaded.hub_id is None
    assert loaded.license is None
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    expected = tiny_llama(vocab_size=len(loaded.tokenizer))
    torch.testing.assert_close(
        _logits(loaded.model, loaded.tokenizer), _logits(expected, loaded.tokenizer)
    )


def test_load_local_folder_dtype_and_pad(tmp_path, tiny_model_dir):
    loaded = load_base_model(Path(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert loaded.model.dtype == torch.bfloat16
    # A tokenizer saved without a pad token gets eos.
    folder = tmp_path / "nopad"
    loaded.tokenizer.pad_token = None
    loaded.tokenizer.save_pretrained(folder)
    loaded.model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    again = load_base_model(folder)
    assert again.tokenizer.pad_token == again.tokenizer.eos_token == "<|im_end|>"
    assert again.model.config.pad_token_id is not None
    assert again.license == "mit"


@pytest.mark.parametrize("dtype", ["float64x", "int8", 3])
def test_bad_dtype(tiny_model_dir, dtype):
    with pytest.raises(ConfigError, match="dtype"):
        load_base_model(str(tiny_model_dir), dtype=dtype)


def test_bad_device_is_rejected_before_loading(tiny_model_dir):
    with pytest.raises(ConfigError, match="Unknown device 'gpu0'"):
        load_base_model(str(tiny_model_dir), device="gpu0")


def test_not_a_causal_lm_bert_model(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    folder = tmp_path / "bert"
    BertModel(cfg).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"not read: the config is checked before any weight")
    with pytest.raises(ConfigError, match=r"'bert' model.*not a causal language model") as err:
        load_base_model(str(folder))
    assert "causal LM" in str(err.value) and "BertModel" in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)


@pytest.mark.parametrize(
    "config_name", ["BertConfig", "T5Config"], ids=["bert-config-only", "t5-seq2seq"]
)
def test_not_a_causal_lm_config_only(tmp_path, config_name):
    import transformers

    getattr(transformers, config_name)().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_base_model(str(tmp_path))


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingFileError, match=r"no-such-model.*does not exist"):
        load_base_model(str(missing))
    with pytest.raises(FileNotFoundError):  # the builtin a caller would catch
        load_base_model(missing)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(MissingFileError, match=r"no config\.json.*weights\.gguf"):
        load_base_model(str(tmp_path))


def test_unknown_bare_name_suggests_embedded():
    # A bare word is never sent to the Hub (which takes 'org/name' ids).
    with pytest.raises(ConfigError, match="Did you mean 'smollm2-135m-instruct'"):
        load_base_model("smollm2-135m")


def test_file_instead_of_folder(tmp_path):
    file = tmp_path / "config.json"
    file.write_text("{}")
    with pytest.raises(ConfigError, match="is a file"):
        load_base_model(str(file))


def test_resolve_model_name(tmp_path, tiny_model_dir):
    assert resolve_model_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_name("gemma-3-270m") == "google/gemma-3-270m"
    assert resolve_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_name(str(tiny_model_dir)) is None
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "org/base-model"}))
    assert resolve_model_name(folder) == "org/base-model"
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "/abs/checkpoint"}))
    assert resolve_model_name(folder) is None  # never the folder's name ("my-finetune")
    with pytest.raises(MissingFileError):
        resolve_model_name(str(tmp_path / "gone"))


def test_an_hf_cache_snapshot_folder_is_named_by_its_repo_id(tmp_path, tiny_model_dir):
    """A model loaded from a downloaded snapshot folder records the repo id that the cache
    layout gives (models--org--name/snapshots/<revision>), never the commit hash."""
    from hf_tsprompt.models import hub_id_from_path, is_hub_id

    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--Org-x--Model.v2-135M" / "snapshots" / revision
    shutil.copytree(tiny_model_dir, snapshot)
    assert resolve_model_name(str(snapshot)) == "Org-x/Model.v2-135M"
    assert load_base_model(snapshot).hub_id == "Org-x/Model.v2-135M"
    # From the path alone, on a machine where it does not exist (a pushed run's record).
    assert hub_id_from_path(f"/elsewhere/models--a--b/snapshots/{revision}") == "a/b"
    assert hub_id_from_path(f"/x/models--a--b/blobs/{revision}") is None
    assert hub_id_from_path(tmp_path / "gone") is None
    assert is_hub_id("org/name") and not is_hub_id("tinyllama") and not is_hub_id(revision)
    assert not is_hub_id(None) and not is_hub_id("/abs/path")


def test_models_still_exposes_the_embedded_cache_names():
    """The cache moved to hf_tsprompt.embedded; hf_tsprompt.models re-exports its names."""
    for name in embedded.__all__:
        if name != "ensure_pad_token" and name != "read_manifest":
            assert getattr(models, name) is getattr(embedded, name), name
    assert set(models.__all__) >= set(embedded.__all__) - {"ensure_pad_token", "read_manifest"}
