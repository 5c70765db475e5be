"""Tiny, seeded, offline stand-ins for a real causal LM, shared by the tests.

Nothing here downloads: the tokenizer is a byte-level BPE trained in memory on a few
sentences, the model is a 2-layer Llama built from a config. Both take well under a second.
Subprocess tests (multi-process, CLI) use :func:`save_tiny_model` to get a folder that
``from_pretrained`` loads like any Hub checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from procs import run_process

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Ten (country, capital) pairs: the rows of the own-data tests (tests/test_data_custom.py,
#: tests/test_own_data.py).
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("Vietnam", "Hanoi"),
    ("Australia", "Canberra"),
]

_CORPUS = [
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Answer: 48 / 2 = 24 clips in May. 48 + 24 = 72. #### 72",
    "The answer is (A). The answer is (B). The answer is (C). The answer is (D).",
    "True False Yes No valid invalid sorted words: apple banana cherry",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = $ % . , ? ! ( ) [ ] { }",
]


def tiny_tokenizer(vocab_size: int = 384):
    """A fast byte-level BPE tokenizer with a ChatML chat template (SmolLM2's format)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int = 384, hidden_size: int = 32, seed: int = 0):
    """A 2-layer Llama causal LM (about 60k parameters), deterministic for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def save_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer into ``folder`` (loadable with ``from_pretrained``)."""
    folder = Path(folder)
    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_lm_dataset(tokenizer, n: int = 8):
    """``n`` short arithmetic lines as a causal-LM dataset (labels = inputs, varying lengths)."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        ids = tokenizer(f"Question {i}: 3 + {i} * {i} = ? Answer: {3 + i * i}")["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return Dataset.from_list(rows)


TINY_HUB_ID = "alice/tiny-llama"
"""The Hub id the tiny base model records (``_name_or_path``), for Hub round-trip tests."""


def write_tiny_gsm8k(folder: str | Path, n_train: int = 12, n_test: int = 8) -> Path:
    """A small GSM8K-format dataset (``train.jsonl`` / ``test.jsonl``) written by the test."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 100)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(offset, offset + n):
                a, b = i % 7 + 1, i % 5 + 2
                row = {
                    "question": f"Tom has {a} apples and buys {b} more. How many apples?",
                    "answer": f"{a} + {b} = {a + b}\n#### {a + b}",
                }
                fh.write(json.dumps(row) + "\n")
    return folder


def save_tiny_hub_model(folder: str | Path, seed: int = 0) -> Path:
    """:func:`save_tiny_model` whose config names :data:`TINY_HUB_ID` as the model, so a run
    folder, card or ``run.json`` names a Hub id rather than a temporary path."""
    import json

    model_dir = save_tiny_model(folder, seed=seed)
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_name_or_path"] = TINY_HUB_ID
    cfg_path.write_text(json.dumps(cfg))
    return model_dir


def tiny_recipe(model_dir: str | Path, data_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """A recipe mapping for the tiny model on tiny GSM8K (4 training / 4 test rows, 6 virtual
    tokens, barcodes every 2 steps, 4 steps of batch 2 at lr 0.05). Each keyword updates that
    section (a mapping) or replaces that top-level value (``name``, ``output_dir``, ...)."""
    raw: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"task": "gsm8k", "source": str(data_dir), "train_size": 4, "test_size": 4},
        "peft": {"num_virtual_tokens": 6},
        "topology": {"every_n_steps": 2, "evaluate": "none"},
        "training": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 0.05},
        "evaluation": {"batch_size": 4, "max_new_tokens": 4},
    }
    return merge_sections(raw, sections)


def merge_sections(raw: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """Update ``raw`` in place: a mapping updates that section, anything else replaces it."""
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def write_dist_cli_recipe(root: Path) -> Path:
    """The 2-step tiny recipe that ``hf-tsprompt train`` runs under torchrun, in
    ``test_distributed.py`` and in the by-hand ``stress_dist_exit.py``; returns its path."""
    import yaml

    model_dir = save_tiny_model(root / "model")
    data_dir = write_tiny_gsm8k(root / "data")
    recipe = root / "dist.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(root / "run"),
                "model": {"name_or_path": str(model_dir)},
                "data": {"task": "gsm8k", "source": str(data_dir), "train_size": 4, "test_size": 2},
                "peft": {"num_virtual_tokens": 5},
                "topology": {"every_n_steps": 1, "evaluate": "none"},
                "training": {"max_steps": 2, "per_device_train_batch_size": 2},
                "evaluation": {"batch_size": 2, "max_new_tokens": 4},
            }
        )
    )
    return recipe


def make_tiny_run(root: str | Path, **recipe_overrides):
    """Train a complete run folder with the real pipeline on the tiny model (about 15 s).

    The base model folder records ``TINY_HUB_ID`` as its name, so cards name a Hub id.
    Returns ``(run_dir, model_dir, recipe)``.
    """
    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import recipe_from_dict

    root = Path(root)
    model_dir = save_tiny_hub_model(root / "tiny-model")
    data_dir = write_tiny_gsm8k(root / "gsm8k")
    raw = tiny_recipe(
        model_dir,
        data_dir,
        name="tiny-run",
        output_dir=str(root / "run"),
        topology={"evaluate": "train"},
        training={"logging_steps": 1},
        evaluation={"max_new_tokens": 6},
    )
    merge_sections(raw, recipe_overrides)
    recipe = recipe_from_dict(raw, base_dir=root)
    train_from_recipe(recipe, progress=False, log=lambda _msg: None)
    return root / "run", model_dir, recipe


BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``bench/<script> ARGS`` in a subprocess (one torch thread); assert it exits 0,
    showing the end of its output when it does not."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The slowest --quick run (correlation.py) took 298 s on 2 cores at load 13: 2x that.
    done = run_process(
        [sys.executable, str(BENCH_DIR / script), *args], cwd=cwd, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done
