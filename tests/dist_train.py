"""Training script for tests/test_distributed.py, run under ``torchrun`` (not a test itself).

Every rank trains the tiny model with TopologicalPromptTrainer + PersistenceCallback and dumps
what it saw (its final prompt, its logged losses) to ``<out>/rank<k>.json``, so the test can
compare ranks with each other and with a single-process run of the same global batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

sys.path.insert(0, str(Path(__file__).parent))

from hf_tsprompt.callbacks import PersistenceCallback
from hf_tsprompt.distributed import release_process_groups
from hf_tsprompt.prompts import full_prompt_matrix, get_prompt_model
from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

from tiny import tiny_llama, tiny_lm_dataset, tiny_tokenizer


def main(out: str, per_device_batch: int, extra: str = "{}") -> None:
    """Train, dump ``rank<k>.json``; the trainer is gone when this returns (see below)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = get_prompt_model(
        tiny_llama(len(tokenizer), seed=0), "prompt_tuning", num_virtual_tokens=8, init_std=0.5
    )
    args = TopologicalPromptConfig(
        output_dir=out,
        per_device_train_batch_size=per_device_batch,
        max_steps=3,
        logging_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        ts_weight=5.0,
        **json.loads(extra),
    )
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer, 4),  # one global batch = the whole dataset
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        callbacks=[PersistenceCallback(every_n_steps=1)],
    )
    trainer.train()
    trainer.save_model(str(Path(out) / "adapter"))
    rank = args.process_index
    inner = trainer.accelerator.unwrap_model(trainer.model)
    dump = {
        "world_size": args.world_size,
        "param_type": type(inner.prompt_encoder["default"].embedding.weight).__name__,
        "prompt": full_prompt_matrix(inner).tolist(),
        "logs": [h for h in trainer.state.log_history if "loss" in h],
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(dump))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
    # main's trainer (and its DDP Reducer) is unreachable now; the group must go after it and
    # through its Python object, or the exit can deadlock (see hf_tsprompt.distributed).
    if not release_process_groups():
        sys.exit("dist_train.py: a process group outlived release_process_groups()")
