"""``PeftModel.generate`` with prompt-learning adapters, after ``hf_tsprompt.generation``'s
``fix_generate``.

Independent truth: greedy decoding written here with peft's own *training* forward over the
whole, unpadded sequence (virtual tokens or prefix inserted once, no cache), one row at a time.
``generate`` must produce the same tokens, with and without the KV cache, alone and in a
left-padded batch of two, on whatever peft and transformers are installed (CI runs this file
with the pinned versions and with the newest releases). The tiny Llama here (tests/tiny.py,
a trained BPE tokenizer, real text) is not the one the library's check uses, so the check's
verdict is compared with this file's own. The weights are redrawn with a larger spread, so
greedy text varies from token to token (at the default init it repeats one token, and a wrong
decoder can agree with the right one by accident); every test checks that the truth it uses does.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hf_tsprompt import generation
from hf_tsprompt.evaluation import greedy_prompt_learning

from procs import run_process
from tiny import tiny_llama, tiny_tokenizer

METHODS = ["prompt", "p-tuning", "prefix"]
METHOD_NAMES = {"prompt": "prompt_tuning", "p-tuning": "p_tuning", "prefix": "prefix_tuning"}
NEW_TOKENS = 10
EOS = 2  # tiny_llama's eos_token_id


def _lively(model):
    """Redraw the weights with std 0.3 so greedy text varies (see the module docstring)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def _peft(method: str, fix: bool = True):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    configs = {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p-tuning": PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
        ),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }
    base = _lively(tiny_llama(vocab_size=len(tiny_tokenizer())))
    torch.manual_seed(2)
    model = get_peft_model(base, configs[method]).eval()
    if fix:
        generation.fix_generate(model)
    return model


PROMPTS = ["Question: Natalia sold clips to", "True"]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def _truth(model, prompt: list[int]) -> list[int]:
    """Greedy decoding with peft's training forward on the full sequence, no cache."""
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            nxt = model(input_ids=seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
            if int(nxt) == EOS:
                break
    new = seq[0, len(prompt) :].tolist()
    assert len(set(new)) >= 3, f"degenerate reference {new}: the test could not fail"
    return new


def _left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _generate(model, ids, mask, use_cache: bool) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
    return [_until_eos(row) for row in out[:, ids.shape[1] :].tolist()]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("method", METHODS)
def test_generate_equals_greedy_training_forward(tokenizer, method, use_cache):
    model = _peft(method)
    prompt = _ids(tokenizer, PROMPTS[0])
    ids = torch.tensor([prompt])
    assert _generate(model, ids, torch.ones_like(ids), use_cache) == [_truth(model, prompt)]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("method", METHODS)
def test_left_padded_batch_decodes_each_row_as_alone(tokenizer, method, use_cache):
    """Rows of different lengths, left-padded: each equals its own unpadded truth, and the
    library's own evaluation loop (a separate implementation) agrees."""
    model = _peft(method)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    assert len(prompts[0]) != len(prompts[1])
    ids, mask = _left_padded(prompts, pad=0)
    truth = [_truth(model, p) for p in prompts]
    assert _generate(model, ids, mask, use_cache) == truth
    with torch.no_grad():
        tokens, _ = greedy_prompt_learning(
            model, ids, mask, max_new_tokens=NEW_TOKENS, eos_ids=[EOS], pad_id=0
        )
    assert [_until_eos(row) for row in tokens.tolist()] == truth


def _settings_wrong(model, tokenizer) -> list[str]:
    """The settings (as ``generation.SETTINGS`` names them) where ``model.generate`` differs
    from this file's truth or raises."""
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    truth = [_truth(model, p) for p in prompts]
    wrong = []
    for name, batch, use_cache in generation.SETTINGS:
        rows = prompts if batch else prompts[:1]
        ids, mask = _left_padded(rows, pad=0)
        try:
            got = _generate(model, ids, mask, use_cache)
        except Exception:
            got = None
        if got != truth[: len(rows)]:
            wrong.append(name)
    return wrong


@pytest.mark.parametrize("method", METHODS)
def test_the_check_agrees_with_this_files_reference(tokenizer, method):
    """The library's verdict on peft's own ``generate`` (its own tiny model and rows) names the
    same settings as this file's truth on another model: peft unfixed here is wrong exactly
    where the check says it is. On peft 0.21.2 + transformers 5.24 that is every cached
    setting (and prefix uncached); on peft 0.22.0 + transformers 5.25, the left-padded batches
    (prefix uncached raises)."""
    found = generation.check(METHOD_NAMES[method])[METHOD_NAMES[method]]
    assert found.error is None and not found.fix_wrong, found.describe()
    claimed = sorted(entry.split(":")[0] for entry in found.peft_wrong)
    assert sorted(_settings_wrong(_peft(method, fix=False), tokenizer)) == claimed
    assert [name for name, _, _ in generation.SETTINGS if found.wrong_in(name)] == [
        name for name, _, _ in generation.SETTINGS if name in claimed
    ]
    with pytest.raises(ValueError, match="choose one of single row, cached"):
        found.wrong_in("batch")
    fixed = _peft(method, fix=True)
    assert generation._is_fixed(fixed) is found.needs_fix
    assert _settings_wrong(fixed, tokenizer) == []


def test_check_covers_every_registered_method_and_keeps_the_callers_rng():
    from hf_tsprompt.prompts import prompt_method_names

    state = torch.get_rng_state()
    found = generation.check()
    assert torch.equal(torch.get_rng_state(), state)
    assert list(found) == list(prompt_method_names())
    for name, result in found.items():
        assert result.method == name and "peft " in result.versions
        assert result.describe().startswith(f"{name}: ")
    assert generation.check() == found  # remembered: the same verdicts, not rerun


@pytest.fixture
def fresh_checks():
    """Forget remembered checks before and after (a test below changes what they would find)."""
    generation._cached_check.cache_clear()
    yield
    generation._cached_check.cache_clear()


def test_stands_aside_when_peft_is_right(monkeypatch, tokenizer, fresh_checks):
    """A peft whose own method does what the fix does (as an upstream fix would) passes the
    check: ``fix_generate`` leaves the model alone, and its ``generate`` is right anyway."""
    from peft.peft_model import PeftModelForCausalLM

    def upstream_fixed(self, *args, task_ids=None, **kwargs):
        return generation._prepare(self, self.active_peft_config, args, kwargs, task_ids)

    monkeypatch.setattr(PeftModelForCausalLM, "prepare_inputs_for_generation", upstream_fixed)
    found = generation.check("prompt_tuning")["prompt_tuning"]
    assert found.peft_wrong == () and not found.needs_fix
    assert "no fix needed" in found.describe()
    model = _peft("prompt", fix=False)
    assert generation.fix_generate(model) is False
    assert "prepare_inputs_for_generation" not in model.__dict__
    assert _settings_wrong(model, tokenizer) == []


def test_a_fix_that_is_wrong_too_is_not_applied_and_says_so(monkeypatch, fresh_checks):
    """Where peft is wrong and the fix would be wrong as well (a peft changed beyond it), the
    model keeps peft's method and the user is told how to decode right."""
    if not generation.check("prompt_tuning")["prompt_tuning"].peft_wrong:
        pytest.skip("peft's prompt-tuning generate is right here: nothing to fix")
    generation._cached_check.cache_clear()

    original = generation._prepare

    def always_wrong(self, config, args, kwargs, task_ids):
        inputs = original(self, config, args, kwargs, task_ids)
        if inputs.get("inputs_embeds") is not None:
            inputs["inputs_embeds"] = inputs["inputs_embeds"] * 3.0  # not the training forward
        return inputs

    monkeypatch.setattr(generation, "_prepare", always_wrong)
    found = generation.check("prompt_tuning")["prompt_tuning"]
    assert found.fix_wrong and not found.needs_fix
    assert "wrong too" in found.describe()
    model = _peft("prompt", fix=False)
    with pytest.warns(RuntimeWarning, match="greedy_prompt_learning"):
        assert generation.fix_generate(model) is False
    assert "prepare_inputs_for_generation" not in model.__dict__


def test_the_fix_is_per_model_and_undone_by_unfix(tokenizer):
    """Fixing one model changes neither peft's class nor another model; ``unfix_generate``
    gives the model peft's method back, and fixing twice binds once."""
    from peft.peft_model import PeftModelForCausalLM

    own = PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"]
    fixed, other = _peft("prompt", fix=True), _peft("prompt", fix=False)
    needed = generation.needs_fix("prompt_tuning")
    assert generation._is_fixed(fixed) is needed
    bound = fixed.__dict__.get("prepare_inputs_for_generation")
    assert generation.fix_generate(fixed) is needed
    assert fixed.__dict__.get("prepare_inputs_for_generation") is bound
    assert PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"] is own
    assert "prepare_inputs_for_generation" not in other.__dict__
    generation.unfix_generate(fixed)
    assert "prepare_inputs_for_generation" not in fixed.__dict__
    generation.unfix_generate(fixed)  # nothing to undo
    assert "prepare_inputs_for_generation" not in fixed.__dict__


def test_needs_fix_reads_names_configs_and_adapter_configs():
    from peft import LoraConfig, PromptTuningConfig

    expected = generation.check("prompt_tuning")["prompt_tuning"].needs_fix
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert generation.needs_fix("prompt_tuning") is expected
    assert generation.needs_fix(config) is expected
    assert generation.needs_fix(config.to_dict()) is expected
    assert generation.needs_fix(LoraConfig(task_type="CAUSAL_LM")) is False
    with pytest.raises(TypeError, match="prompt method name, a peft config"):
        generation.needs_fix(42)
    from hf_tsprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one of"):
        generation.needs_fix("lora")


def test_fix_generate_refuses_what_is_not_a_peft_model(tiny_model):
    with pytest.raises(TypeError, match="expects a peft PeftModelForCausalLM"):
        generation.fix_generate(tiny_model)


def test_other_adapter_types_use_peft_s_own_method(tokenizer):
    """LoRA is left to peft: ``fix_generate`` binds nothing, and a fresh LoRA (B = 0)
    generates what the base does."""
    from peft import LoraConfig, get_peft_model

    base = _lively(tiny_llama(vocab_size=len(tokenizer)))
    ids = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    with torch.no_grad():
        expected = base.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4)).eval()
    assert generation.fix_generate(model) is False
    assert "prepare_inputs_for_generation" not in model.__dict__
    with torch.no_grad():
        got = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(got, expected)


def test_a_4d_attention_mask_is_refused_with_a_reason(tokenizer):
    if not generation.needs_fix("prompt_tuning"):
        pytest.skip("peft's own generate is right here; the fix is not bound")
    model = _peft("prompt")
    ids = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    with pytest.raises(ValueError, match="needs a 2D attention_mask"):
        model.prepare_inputs_for_generation(ids, attention_mask=torch.ones(1, 1, 6, 6))


_FRESH = """
import sys
import hf_tsprompt
assert "peft" not in sys.modules and "torch" not in sys.modules, "import hf_tsprompt is light"
from peft.peft_model import PeftModelForCausalLM
method = PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"]
hooks = [type(f).__name__ for f in sys.meta_path if "hf_tsprompt" in type(f).__module__]
print(method.__module__, hasattr(method, "__wrapped__"), hooks)
"""


@pytest.mark.slow
def test_importing_hf_tsprompt_leaves_peft_as_it_is():
    """No import hook and no process-wide patch: a program that imports this package and then
    peft gets peft's own ``generate``."""
    done = run_process([sys.executable, "-c", _FRESH], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["peft.peft_model", "False", "[]"]


@pytest.mark.slow
def test_generation_speed_bench_quick(tmp_path, tiny_model_dir):
    """``bench/generation_speed.py --quick`` runs and writes its documented fields."""
    import json
    import math

    from tiny import run_bench

    out = tmp_path / "out"
    run_bench("generation_speed.py", "--quick", "--model", str(tiny_model_dir), "--out", str(out))
    assert (out / "generation_speed.md").read_text().startswith("# Generation speed")
    data = json.loads((out / "generation_speed.json").read_text())
    assert data["benchmark"] == "generation_speed" and data["quick"] is True
    assert "bench/generation_speed.py" in data["command"] and "--quick" in data["command"]
    assert data["machine"]["nproc"] >= 1 and data["versions"]["peft"] and data["git"]
    s = data["settings"]
    assert (s["new_tokens"], s["repeats"]) == (8, 1)
    names = ["base", "prompt_tuning", "p_tuning", "prefix_tuning"]
    expected = {f"{n}_{c}" for n in names for c in ("cached", "uncached")}
    assert set(data["configs"]) == expected
    assert len(data["trials"]) == len(expected) * s["repeats"]
    for trial in data["trials"]:
        assert math.isclose(trial["tokens_per_s"], s["new_tokens"] / trial["seconds"])
    for method in names[1:]:
        needed = generation.needs_fix(method)
        assert data["fix"][method] == {
            "active": needed,
            "reason": generation.check(method)[method].describe(),
        }
        c = data["correctness"][method]
        assert c["reference_equal"] is True and c["cached_equals_uncached"] is True
        assert isinstance(c["unpatched_cached_equal"], bool) is needed
        ratio = data["ratios"][method]["cached_to_base_cached"]["median"]
        assert math.isfinite(ratio) and ratio > 0
    pt = data["ratios"]["prompt_tuning"]["cached_to_base_cached"]["median"]
    assert data["target_met"] is (pt >= data["target_ratio"] == 0.9)
