"""prompt_matrix: which matrix is the prompt, for every peft prompt-learning method."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model

from hf_tsprompt import prompts
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.prompts import (
    PromptMethod,
    build_peft_config,
    get_prompt_method,
    get_prompt_model,
    init_prompt_,
    method_of,
    peft_type_name,
    prompt_matrix,
    prompt_method_names,
    prompt_methods,
    prompt_parameters,
    register_prompt_method,
    unwrap_model,
)

from tiny import tiny_llama

N = 6


def _model(tokenizer, method, **kw):
    return get_prompt_model(tiny_llama(len(tokenizer)), method, num_virtual_tokens=N, **kw)


def _captured_prompt(model, ids):
    """What the base model actually receives for the virtual tokens (via peft's get_prompt)."""
    return model.get_prompt(batch_size=ids.shape[0])


def test_prompt_tuning_is_the_embedding_table(tokenizer):
    model = _model(tokenizer, "prompt_tuning")
    P = prompt_matrix(model)
    assert P.shape == (N, 32)
    assert P is model.prompt_encoder["default"].embedding.weight
    assert torch.equal(_captured_prompt(model, torch.ones(1, 3, dtype=torch.long))[0], P)


def test_p_tuning_is_the_encoder_output(tokenizer):
    model = _model(tokenizer, "p_tuning")
    P = prompt_matrix(model)
    raw = model.prompt_encoder["default"].embedding.weight
    assert P.shape == (N, 32)
    assert not torch.allclose(P, raw)  # the MLP output, not its input
    assert torch.allclose(_captured_prompt(model, torch.ones(2, 3, dtype=torch.long))[1], P)


@pytest.mark.parametrize("method,projection", [("prefix_tuning", True), ("p_tuning_v2", False)])
def test_prefix_methods_give_one_point_per_virtual_token(tokenizer, method, projection):
    model = _model(tokenizer, method)
    cfg = model.peft_config["default"]
    assert cfg.prefix_projection is projection
    P = prompt_matrix(model)
    # one row per virtual token: keys and values of every layer (2 layers x 2 x 16 kv dims)
    assert P.shape == (N, 2 * cfg.num_layers * cfg.token_dim)
    enc = model.prompt_encoder["default"]
    assert torch.allclose(enc(torch.arange(N).unsqueeze(0))[0], P)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"])
def test_gradients_reach_the_trainable_parameters(tokenizer, method):
    model = _model(tokenizer, method)
    prompt_matrix(model).pow(2).sum().backward()
    params = prompt_parameters(model)
    assert params and all(p.requires_grad for p in params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    frozen = [p for n, p in model.named_parameters() if "prompt_encoder" not in n]
    assert frozen and all(not p.requires_grad for p in frozen)


def test_paper_init_is_normal_002(tokenizer):
    torch.manual_seed(0)
    base = tiny_llama(len(tokenizer), hidden_size=256)
    model = get_prompt_model(base, "prompt_tuning", num_virtual_tokens=40)
    P = prompt_matrix(model).detach()
    assert P.mean().abs() < 0.002 and P.std().item() == pytest.approx(0.02, rel=0.05)
    init_prompt_(model, std=0.5)
    assert prompt_matrix(model).detach().std().item() == pytest.approx(0.5, rel=0.05)
    peft_default = get_prompt_model(
        tiny_llama(len(tokenizer), hidden_size=256),
        "prompt_tuning",
        num_virtual_tokens=40,
        init="random",
    )
    assert prompt_matrix(peft_default).detach().std().item() == pytest.approx(1.0, rel=0.1)


def test_sample_vocab_init_uses_vocabulary_rows(tokenizer):
    model = get_prompt_model(
        tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=5, init="sample_vocab"
    )
    vocab = model.get_input_embeddings().weight
    P = prompt_matrix(model).detach()
    for row in P:
        assert (vocab - row).abs().sum(dim=1).min() < 1e-6


def test_lora_and_plain_models_get_clear_errors(tokenizer):
    lora = get_peft_model(tiny_llama(len(tokenizer)), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LORA, which is not a prompt-learning method"):
        prompt_matrix(lora)
    with pytest.raises(ValueError, match="expected a peft PeftModel"):
        prompt_matrix(tiny_llama(len(tokenizer)))
    model = _model(tokenizer, "prompt_tuning")
    with pytest.raises(ValueError, match="adapter 'other' not found"):
        prompt_matrix(model, adapter="other")


def test_named_adapter(tokenizer):
    model = get_peft_model(
        tiny_llama(len(tokenizer)),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        adapter_name="gsm8k",
    )
    assert prompt_matrix(model, adapter="gsm8k").shape == (4, 32)
    assert prompt_matrix(model).shape == (4, 32)


def test_works_through_ddp_wrapper(tokenizer, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = _model(tokenizer, "prompt_tuning")
        wrapped = DDP(model)
        assert unwrap_model(wrapped) is model
        assert isinstance(unwrap_model(wrapped), PeftModel)
        assert prompt_matrix(wrapped) is prompt_matrix(model)
    finally:
        dist.destroy_process_group()


def test_loaded_adapter_in_inference_mode(tokenizer, tmp_path):
    for method in ("prompt_tuning", "p_tuning", "prefix_tuning"):
        model = _model(tokenizer, method)
        before = prompt_matrix(model).detach().clone()
        model.save_pretrained(tmp_path / method)
        loaded = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), tmp_path / method)
        assert torch.allclose(prompt_matrix(loaded), before, atol=1e-6), method


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "lora"}, "not a prompt-learning method"),
        (
            {"method": "prompt_tuning", "num_virtual_tokens": 2},
            "num_virtual_tokens must be an int >= 3",
        ),
        ({"method": "prompt_tuning", "num_virtual_tokens": "20"}, "num_virtual_tokens"),
        ({"method": "prompt_tuning", "init": "zeros"}, "prompt init 'zeros' unknown"),
        ({"method": "p_tuning", "init": "text"}, "only applies to method 'prompt_tuning'"),
        ({"method": "prompt_tuning", "init": "text"}, "needs init_text"),
    ],
)
def test_build_peft_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_peft_config(**kwargs)


def test_init_std_must_be_positive(tokenizer):
    with pytest.raises(ConfigError, match="std"):
        init_prompt_(_model(tokenizer, "prompt_tuning"), std=0)


# --- the table of prompt methods ------------------------------------------------------------


@pytest.mark.parametrize("entry", prompt_methods(), ids=lambda m: m.name)
def test_every_registered_method_against_the_model(tokenizer, entry):
    model = _model(tokenizer, entry.name)
    cfg = model.peft_config["default"]
    # the table entry round-trips through the live config and through adapter_config.json
    assert get_prompt_method(entry.name) is entry
    assert method_of(cfg) is entry
    assert method_of(json.loads(json.dumps(cfg.to_dict()))) is entry
    assert peft_type_name(cfg) == entry.peft_type

    P = prompt_matrix(model)
    embed_dim = model.get_input_embeddings().weight.shape[1]
    received = model.get_prompt(batch_size=1)  # what peft hands the base model
    as_embeddings = isinstance(received, torch.Tensor)
    width = cfg.token_dim if as_embeddings else 2 * cfg.num_layers * cfg.token_dim
    assert P.shape == (cfg.num_virtual_tokens, width)

    # independent truths for the table's facts
    assert entry.kv_cache is not as_embeddings
    used_as_input = as_embeddings and torch.allclose(received[0], P)
    assert entry.in_vocabulary_space is (P.shape[1] == embed_dim and used_as_input)
    assert entry.matrix_is_embedding is (P is model.prompt_encoder["default"].embedding.weight)
    assert entry.card_label and entry.card_tag


def test_prefix_projection_tells_prefix_tuning_from_p_tuning_v2():
    base = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}
    assert method_of({**base, "prefix_projection": True}).name == "prefix_tuning"
    assert method_of({**base, "prefix_projection": False}).name == "p_tuning_v2"
    assert method_of(base).name == "p_tuning_v2"  # peft's default is no projection


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ConfigError, match="'lora' is not a prompt-learning method") as err:
        get_prompt_method("lora")
    assert all(name in str(err.value) for name in prompt_method_names())
    lora = LoraConfig(target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="LORA adapter is not of a prompt method"):
        method_of(lora)
    assert method_of(lora, missing_ok=True) is None


def test_peft_type_name_reads_configs_dicts_and_enums():
    from peft import PeftType

    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert peft_type_name(cfg) == "PROMPT_TUNING"
    assert peft_type_name({"peft_type": "P_TUNING"}) == "P_TUNING"
    assert peft_type_name(PeftType.PREFIX_TUNING) == "PREFIX_TUNING"


def test_duplicate_registration_is_refused(monkeypatch):
    monkeypatch.setattr(prompts, "_REGISTRY", dict(prompts._REGISTRY))
    before = prompt_method_names()
    existing = get_prompt_method("prompt_tuning")
    with pytest.raises(ConfigError, match="'prompt_tuning' is already registered"):
        register_prompt_method(existing)
    same_adapters = dataclasses.replace(existing, name="my_prompt_tuning")
    with pytest.raises(ConfigError, match="same peft adapters as 'prompt_tuning'"):
        register_prompt_method(same_adapters)
    assert prompt_method_names() == before

    new = dataclasses.replace(existing, name="my_method", peft_type="MY_TYPE")
    assert register_prompt_method(new) is new
    assert get_prompt_method("my_method") is new
    assert method_of({"peft_type": "MY_TYPE"}) is new
    assert prompt_method_names() == (*before, "my_method")


def test_prompt_method_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_prompt_method("p_tuning").name = "other"  # type: ignore[misc]
    assert isinstance(get_prompt_method("p_tuning"), PromptMethod)
