"""``PeftModel.generate`` with prompt-learning adapters, as fixed by ``hf_tsprompt.generation``.

Independent truth: greedy decoding written here with peft's own *training* forward over the
whole, unpadded sequence (virtual tokens or prefix inserted once, no cache), one row at a time.
``generate`` must produce the same tokens, with and without the KV cache, alone and in a
left-padded batch of two. The tiny Llama's weights are redrawn with a larger spread, so its
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
NEW_TOKENS = 10
EOS = 2  # tiny_llama's eos_token_id


@pytest.fixture(autouse=True)
def _fix_applied():
    """Every test starts and ends with the fix as ``import hf_tsprompt`` leaves it (run the
    suite with HF_TSPROMPT_NO_GENERATE_FIX=1 to see peft's own generate fail it)."""
    generation.install()
    yield
    generation.install()


def _lively(model):
    """Redraw the weights with std 0.3 so greedy text varies (see the module docstring)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def _peft(method: str):
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
    return get_peft_model(base, configs[method]).eval()


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


@pytest.mark.parametrize("method", METHODS)
def test_without_the_fix_cached_generate_is_wrong(tokenizer, method):
    """The upstream bug this module works around (skipped once peft is fixed, as the fix then
    stands aside). Prefix tuning is wrong even uncached."""
    active, reason = generation.status()
    if not active:
        pytest.skip(f"peft's generate needs no fix here: {reason}")
    model = _peft(method)
    prompt = _ids(tokenizer, PROMPTS[0])
    ids = torch.tensor([prompt])
    truth = [_truth(model, prompt)]
    generation.remove()
    assert generation.status()[0] is False
    assert _generate(model, ids, torch.ones_like(ids), use_cache=True) != truth
    uncached = _generate(model, ids, torch.ones_like(ids), use_cache=False)
    assert (uncached == truth) is (method != "prefix")
    generation.apply()
    assert _generate(model, ids, torch.ones_like(ids), use_cache=True) == truth


def test_apply_is_idempotent_and_remove_restores_peft():
    from peft.peft_model import PeftModelForCausalLM

    active, reason = generation.status()
    if not active:
        pytest.skip(f"not patched here: {reason}")
    patched = PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"]
    generation.install()
    assert generation.apply() is True
    assert PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"] is patched
    generation.remove()
    original = PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"]
    assert original is not patched and not hasattr(original, "__wrapped__")
    generation.remove()  # nothing to undo: still peft's own
    assert PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"] is original


def test_stands_aside_when_peft_reads_the_cache(monkeypatch):
    """A peft whose method reads ``cache`` (here: this module's own logic, as an upstream fix
    would) passes the probe, so ``apply`` leaves it alone and says why."""
    from peft.peft_model import PeftModelForCausalLM

    generation.remove()

    def upstream_fixed(self, *args, task_ids=None, **kwargs):
        config = self.active_peft_config
        return generation._prepare(self, config, args, kwargs, task_ids)

    monkeypatch.setattr(PeftModelForCausalLM, "prepare_inputs_for_generation", upstream_fixed)
    assert generation.apply() is False
    active, reason = generation.status()
    assert not active and "reads the cache as 'cache'; not patched" in reason
    assert PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"] is upstream_fixed


def test_stands_aside_when_peft_changed_beyond_the_probe(monkeypatch):
    from peft.peft_model import PeftModelForCausalLM

    generation.remove()

    def refactored(self, *args, task_ids=None, **kwargs):
        return self.some_new_peft_helper(*args, **kwargs)

    monkeypatch.setattr(PeftModelForCausalLM, "prepare_inputs_for_generation", refactored)
    assert generation.apply() is False
    assert "peft's generation code changed" in generation.status()[1]


def test_the_environment_variable_keeps_peft_as_it_is(monkeypatch):
    needed = generation.status()[0]
    generation.remove()
    monkeypatch.setenv(generation.DISABLE_ENV_VAR, "1")
    generation.install()
    assert generation.status() == (False, f"not patched: {generation.DISABLE_ENV_VAR} is set")
    monkeypatch.setenv(generation.DISABLE_ENV_VAR, "0")
    generation.install()
    assert generation.status()[0] is needed


def test_other_adapter_types_use_peft_s_own_method(tokenizer):
    """LoRA goes to peft's method untouched: a fresh LoRA (B = 0) generates what the base does."""
    from peft import LoraConfig, get_peft_model

    base = _lively(tiny_llama(vocab_size=len(tokenizer)))
    ids = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    with torch.no_grad():
        expected = base.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4)).eval()
    with torch.no_grad():
        got = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(got, expected)


def test_a_4d_attention_mask_is_refused_with_a_reason(tokenizer):
    if not generation.status()[0]:
        pytest.skip("not patched here")
    model = _peft("prompt")
    ids = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    with pytest.raises(ValueError, match="needs a 2D attention_mask"):
        model.prepare_inputs_for_generation(ids, attention_mask=torch.ones(1, 1, 6, 6))


_FRESH = """
import sys
import hf_tsprompt
assert "peft" not in sys.modules, "import hf_tsprompt must not import peft"
from hf_tsprompt import generation
from peft import PeftModelForCausalLM
active, reason = generation.status()
method = PeftModelForCausalLM.__dict__["prepare_inputs_for_generation"]
hooks = [f for f in sys.meta_path if type(f).__name__ == "_PeftImportHook"]
print(active, hasattr(method, "__wrapped__"), len(hooks), reason)
"""


@pytest.mark.slow
def test_importing_hf_tsprompt_fixes_peft_imported_later():
    import peft  # noqa: F401 - so that generation.status() below has decided (run alone too)

    done = run_process([sys.executable, "-c", _FRESH], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    active, wrapped, hooks, reason = done.stdout.split(maxsplit=3)
    assert hooks == "0", "the import hook removes itself once it has fired"
    needed = generation.status()[0]  # this process decided with the same peft/transformers
    assert (active, wrapped) == (str(needed), str(needed)), reason


@pytest.mark.slow
def test_generation_speed_bench_quick(tmp_path, tiny_model_dir):
    """``bench/generation_speed.py --quick`` runs and writes its documented fields."""
    import json
    import math

    import peft  # noqa: F401 - so that generation.status() below has decided

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
    assert data["fix"]["active"] is generation.status()[0]
    for method in names[1:]:
        c = data["correctness"][method]
        assert c["reference_equal"] is True and c["cached_equals_uncached"] is True
        assert isinstance(c["unpatched_cached_equal"], bool) is data["fix"]["active"]
        ratio = data["ratios"][method]["cached_to_base_cached"]["median"]
        assert math.isfinite(ratio) and ratio > 0
    pt = data["ratios"]["prompt_tuning"]["cached_to_base_cached"]["median"]
    assert data["target_met"] is (pt >= data["target_ratio"] == 0.9)
