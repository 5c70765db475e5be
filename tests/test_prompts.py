"""prompt_matrix: which matrix is the prompt, for every peft prompt-learning method."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model

from hf_tsprompt.errors import ConfigError
from hf_tsprompt.prompts import (
    build_peft_config,
    get_prompt_model,
    init_prompt_,
    prompt_matrix,
    prompt_parameters,
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
