"""The TRL variant (hf_tsprompt.sft) on a tiny seeded Llama, and that only it imports trl."""

from __future__ import annotations

import sys

import pytest
import torch
from datasets import Dataset

from hf_tsprompt.prompts import get_prompt_model, prompt_matrix
from hf_tsprompt.sft import TopologicalSFTConfig, TopologicalSFTTrainer

from procs import run_process
from tiny import tiny_llama


def _prompt_model(tokenizer, n=8, seed=0):
    torch.manual_seed(seed)
    return get_prompt_model(
        tiny_llama(len(tokenizer), seed=seed), "prompt_tuning", num_virtual_tokens=n, init_std=0.02
    )


def test_sft_variant_trains_on_a_text_dataset(tokenizer, tmp_path):
    model = _prompt_model(tokenizer)
    before = prompt_matrix(model).detach().clone()
    data = Dataset.from_list(
        [{"prompt": f"What is {i} + {i}?", "completion": f" {2 * i}"} for i in range(8)]
    )
    args = TopologicalSFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
        ts_weight=2.0,
    )
    assert args.bf16 is False  # TRL's default would refuse to start on a CPU-only machine
    trainer = TopologicalSFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert {"loss_ce", "loss_ts", "ts_h0", "mean_token_accuracy"} <= set(log)
    assert log["loss"] == pytest.approx(log["loss_ce"] + 2.0 * log["loss_ts"], rel=1e-4)
    assert not torch.allclose(prompt_matrix(model), before)


def test_the_plain_trainer_does_not_import_trl():
    code = (
        "import sys, hf_tsprompt.trainer, hf_tsprompt.pipeline, hf_tsprompt.cli\n"
        "assert 'trl' not in sys.modules, sorted(m for m in sys.modules if 'trl' in m)\n"
        "from hf_tsprompt import TopologicalSFTTrainer\n"
        "assert 'trl' in sys.modules\n"
    )
    done = run_process([sys.executable, "-c", code], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
