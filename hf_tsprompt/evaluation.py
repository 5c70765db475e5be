"""Accuracy of a (soft-prompted) causal LM on a task's test rows.

The paper scores each trained soft prompt by accuracy on 100 test examples per dataset
(section V-B; Tables III-IV). :func:`evaluate_model` generates greedily in batches for a
plain ``PreTrainedModel`` (``model.generate``) or a peft ``PeftModel`` with a prompt-learning
adapter, extracts each answer with the task's ``extract`` and scores it with ``is_correct``.
:func:`save_eval` writes the summary JSON and a predictions JSONL atomically.

Prompt-learning adapters (prompt tuning, P-tuning, prefix tuning) are decoded by
:func:`greedy_prompt_learning`, not ``PeftModel.generate``: with peft 0.21 and transformers
5.x, peft's ``prepare_inputs_for_generation`` still looks for the KV cache under its old name
``past_key_values`` (transformers now passes ``cache``), so it re-inserts the soft prompt
before every generated token (prompt tuning, P-tuning) and never inserts the prefix at all
(prefix tuning: the output equals the base model's). The loop here feeds the virtual tokens
once, exactly as peft's training forward does, then decodes with the model's own cache; the
tests check its logits against that training forward step by step.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_tsprompt.data import Row, Task, build_prompt, encode_prompt, get_task, truncate_ids
from hf_tsprompt.errors import ConfigError, DataError
from hf_tsprompt.fsutil import atomic_write_text
from hf_tsprompt.prompts import method_of, peft_type_name

__all__ = ["EvalResult", "evaluate_model", "greedy_prompt_learning", "save_eval"]


@dataclass
class EvalResult:
    """Outcome of one evaluation: accuracy = correct / total over ``predictions``.

    Each prediction is ``{"index", "prompt", "generation", "extracted", "reference",
    "correct"}`` with ``index`` the row's position in the evaluated rows.
    """

    accuracy: float
    correct: int
    total: int
    predictions: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""
    seconds: float = 0.0
    new_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        """Everything but the predictions, plus throughput (what the summary JSON holds)."""
        out = {k: v for k, v in asdict(self).items() if k != "predictions"}
        out["examples_per_second"] = self.total / self.seconds if self.seconds else None
        out["new_tokens_per_second"] = self.new_tokens / self.seconds if self.seconds else None
        return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Stop tokens: the tokenizer's eos plus the model's generation-config eos (instruct
    models often end a turn with a token, e.g. ``<|im_end|>``, listed only in one of them)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _prompt_learning_config(model: Any) -> Any | None:
    """The active peft config when ``model`` is a PeftModel with a prompt-learning adapter."""
    config = getattr(model, "active_peft_config", None)
    return config if getattr(config, "is_prompt_learning", False) else None


def greedy_prompt_learning(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding of a peft prompt-learning model; (new tokens, per-step logits).

    ``input_ids`` may be left-padded (``attention_mask`` 0 on padding). Step one runs the
    base model on the soft prompt plus the input (prompt tuning / P-tuning: the virtual-token
    embeddings from ``get_prompt`` before the word embeddings; prefix tuning: ``get_prompt``'s
    key/value cache), as peft's training forward does; every later step feeds one token and
    the cache. Position ids count only attended tokens, so a left-padded row sees the same
    positions as it would alone. Rows that emitted a stop token get ``pad_id`` afterwards.
    """
    config = _prompt_learning_config(model)
    if config is None:
        raise ConfigError(
            "greedy_prompt_learning needs a peft model with a prompt-learning adapter"
        )
    method = method_of(config, missing_ok=True)
    base = model.get_base_model()
    params = inspect.signature(base.forward).parameters
    cache_key = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    batch, n_virtual = input_ids.shape[0], config.num_virtual_tokens
    virtual = torch.ones((batch, n_virtual), dtype=attention_mask.dtype, device=input_ids.device)
    mask = torch.cat([virtual, attention_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if method is not None and method.kv_cache:
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            cache_key: model.get_prompt(batch_size=batch),
            "position_ids": positions[:, n_virtual:],
        }
    elif method is not None:
        embeds = model.word_embeddings(input_ids)
        prompts = model.get_prompt(batch_size=batch).to(embeds.dtype)
        inputs = {"inputs_embeds": torch.cat([prompts, embeds], dim=1), "position_ids": positions}
    else:
        raise ConfigError(
            "evaluation supports prompt tuning, P-tuning and prefix tuning adapters, "
            f"not {peft_type_name(config)}"
        )
    stop = torch.tensor(list(eos_ids), dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        out = base(**inputs, attention_mask=mask, use_cache=True, **extra)
        step = out.logits[:, -1].float()
        logits.append(step)
        next_tokens = torch.where(finished, pad_id, step.argmax(-1))
        tokens.append(next_tokens)
        finished |= torch.isin(next_tokens, stop)
        if bool(finished.all()):
            break
        cache = getattr(out, "cache", None)
        cache = out.past_key_values if cache is None else cache
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        inputs = {
            "input_ids": next_tokens[:, None],
            cache_key: cache,
            "position_ids": mask.sum(-1, keepdim=True) - 1,
        }
    return torch.stack(tokens, dim=1), logits


def evaluate_model(
    model: Any,
    tokenizer: Any,
    task: str | Task,
    rows: Sequence[Row],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
) -> EvalResult:
    """Greedy-decode every row's prompt and score the answers.

    Prompts are built exactly as for training (:func:`~hf_tsprompt.data.build_prompt` and
    :func:`~hf_tsprompt.data.encode_prompt`), left-padded in batches of similar length
    (longest first, so an out-of-memory error shows on the first batch) without touching the
    tokenizer's own padding settings, and decoded from the first new token up to the first
    stop token (prompt-learning adapters through :func:`greedy_prompt_learning`, see the
    module docstring; other models through ``model.generate``). ``max_prompt_tokens``
    shortens longer prompts the way training does (middle truncation). The model is put in
    eval mode for the run and restored afterwards.
    """
    task = get_task(task)
    if not rows:
        raise DataError(f"no rows to evaluate {task.name} on")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # many causal LM tokenizers have none; eos is the usual stand-in
        pad_id = eos_ids[0] if eos_ids else None
    if pad_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token; set one of them")

    prompts = [build_prompt(tokenizer, task, row) for row in rows]
    encoded = [encode_prompt(tokenizer, p, task) for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [truncate_ids(ids, max_prompt_tokens) for ids in encoded]
    order = sorted(range(len(rows)), key=lambda i: -len(encoded[i]))
    generations: list[str] = [""] * len(rows)
    new_tokens = 0
    device = _device(model)
    prompt_learning = _prompt_learning_config(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(rows), desc=f"eval {task.name}", disable=not progress) as bar,
        ):
            for first in range(0, len(order), batch_size):
                batch = order[first : first + batch_size]
                width = max(len(encoded[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for slot, i in enumerate(batch):
                    ids = encoded[i]
                    input_ids[slot, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention[slot, width - len(ids) :] = 1
                if prompt_learning is None:
                    output = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention.to(device),
                        do_sample=False,
                        num_beams=1,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad_id,
                        eos_token_id=eos_ids or None,
                    )[:, width:]
                else:
                    output, _ = greedy_prompt_learning(
                        model,
                        input_ids.to(device),
                        attention.to(device),
                        max_new_tokens=max_new_tokens,
                        eos_ids=eos_ids,
                        pad_id=pad_id,
                    )
                for slot, i in enumerate(batch):
                    tokens = output[slot].tolist()
                    stop = next((n for n, t in enumerate(tokens) if t in eos_ids), len(tokens))
                    new_tokens += min(stop + 1, len(tokens))
                    generations[i] = tokenizer.decode(tokens[:stop], skip_special_tokens=True)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start

    predictions = []
    for index, (row, prompt, generation) in enumerate(zip(rows, prompts, generations, strict=True)):
        extracted = task.extract(generation)
        predictions.append(
            {
                "index": index,
                "prompt": prompt,
                "generation": generation,
                "extracted": extracted,
                "reference": task.reference(row),
                "correct": task.is_correct(extracted, row),
            }
        )
    correct = sum(p["correct"] for p in predictions)
    return EvalResult(
        accuracy=correct / len(predictions),
        correct=correct,
        total=len(predictions),
        predictions=predictions,
        task=task.name if task.config in (None, task.hub_config) else f"{task.name}:{task.config}",
        seconds=seconds,
        new_tokens=new_tokens,
    )


def save_eval(result: EvalResult, json_path: str | Path, predictions_path: str | Path) -> None:
    """Write the summary (``json_path``) and one JSON line per prediction
    (``predictions_path``), each atomically. Both texts are serialised before either file is
    touched, so a serialisation error leaves any previous pair intact; the summary is
    replaced last, so an existing summary always describes complete predictions."""
    summary = json.dumps(result.summary(), indent=2, ensure_ascii=False, allow_nan=False)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    atomic_write_text(Path(predictions_path), lines)
    atomic_write_text(Path(json_path), summary + "\n")
