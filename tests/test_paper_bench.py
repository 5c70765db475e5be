"""``bench/paper_bench.py``: the seeded prompt re-init the benchmarks use is peft's own init."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from paper_bench import INIT_TEXTS, seed_prompt

from hf_tsprompt.prompts import get_prompt_model, prompt_matrix


@pytest.mark.parametrize("init", ["sample_vocab", "text"])
@pytest.mark.parametrize("seed", [0, 7])
def test_seed_prompt_equals_a_fresh_peft_init(tiny_model_dir, init, seed):
    """One wrapped model re-drawn in place == a new ``get_peft_model`` with that init."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = INIT_TEXTS["bbh"]
    kw = (
        {"init_text": text, "tokenizer_name_or_path": str(tiny_model_dir)} if init == "text" else {}
    )
    torch.manual_seed(seed)
    fresh = get_prompt_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), init=init, **kw)
    reused = get_prompt_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    seed_prompt(reused, seed, init, tokenizer=tok, init_text=text)
    torch.testing.assert_close(prompt_matrix(reused), prompt_matrix(fresh), rtol=0, atol=0)
    if init == "sample_vocab":  # another seed draws other tokens
        seed_prompt(reused, seed + 1, init)
        assert not torch.equal(prompt_matrix(reused), prompt_matrix(fresh))


def test_seed_prompt_normal_and_bad_input(tiny_model_dir):
    model = get_prompt_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    seed_prompt(model, 3, "normal", std=0.02)
    P = prompt_matrix(model).detach()
    torch.manual_seed(3)
    torch.testing.assert_close(P, torch.randn(P.shape) * 0.02)
    with pytest.raises(ValueError, match="unknown"):
        seed_prompt(model, 0, "orthogonal")
    with pytest.raises(ValueError, match="init_text"):
        seed_prompt(model, 0, "text")
