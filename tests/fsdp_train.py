"""FSDP2 check for tests/test_distributed.py, run under ``torchrun`` (not a test itself).

transformers' Trainer does not enable FSDP on a CPU-only machine (accelerate picks MULTI_CPU,
i.e. DDP), so CI checks the mechanism the trainer relies on directly with torch's
``fully_shard`` over gloo: the prompt embedding is sharded across ranks, yet the prompt
captured from the forward pass (``PromptCapture``, what TopologicalPromptTrainer regularises)
is the full matrix, and training matches an unsharded reference step for step.

Usage: ``fsdp_train.py OUT fsdp`` (2 ranks) or ``fsdp_train.py OUT ref`` (1 process, no FSDP,
the same two half-batches averaged as FSDP's gradient reduction averages them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import DataCollatorForSeq2Seq

sys.path.insert(0, str(Path(__file__).parent))

from hf_tsprompt.losses import ts_loss
from hf_tsprompt.prompts import PromptCapture, full_prompt_matrix, get_prompt_model, prompt_matrix

from tiny import tiny_llama, tiny_lm_dataset, tiny_tokenizer


def main(out: str, mode: str) -> None:
    fsdp = mode == "fsdp"
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
    rank = dist.get_rank() if fsdp else 0
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = get_prompt_model(
        tiny_llama(len(tok), seed=0), "prompt_tuning", num_virtual_tokens=8, init_std=0.5
    )
    capture = PromptCapture(model)
    if fsdp:
        for layer in model.base_model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    weight = model.prompt_encoder["default"].embedding.weight
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    data = tiny_lm_dataset(tok, 4)
    batch = DataCollatorForSeq2Seq(tok)([data[i] for i in range(4)])
    halves = [{k: v[2 * h : 2 * h + 2] for k, v in batch.items()} for h in range(2)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    regs, captured_rows = [], []
    for _ in range(3):
        if fsdp:
            ce = model(**halves[rank]).loss
        else:
            ce = (model(**halves[0]).loss + model(**halves[1]).loss) / 2
        P = capture.take()
        captured_rows.append(P.shape[0])
        reg = ts_loss(P, tau=0.1, alpha=10.0).total
        (ce + 5.0 * reg).backward()
        opt.step()
        opt.zero_grad()
        regs.append(float(reg.detach()))
    outside = prompt_matrix(model)  # a shard under FSDP: why the trainer uses the capture
    dump = {
        "param_type": type(weight).__name__,
        "local_rows": int(local.shape[0]),
        "outside_forward_type": type(outside).__name__,
        "captured_rows": captured_rows,
        "regs": regs,
        "prompt": full_prompt_matrix(model).detach().tolist(),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(dump))
    if fsdp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
