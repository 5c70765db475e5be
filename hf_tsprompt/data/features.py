"""Features: a row as the model sees it: prompt text, token ids, training labels, batches.

Owns the one way a prompt is rendered and tokenized (:func:`build_prompt`, :func:`encode_prompt`,
shared by training and :func:`hf_tsprompt.evaluation.evaluate_model`), truncation, the training
features with the prompt masked out (:func:`tokenize_example`, :func:`build_train_dataset`) and
the right-padding :class:`TrainCollator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy, deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from hf_tsprompt.data.tasks import Row, Task, get_task, uses_chat_template
from hf_tsprompt.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "IGNORE_INDEX",
    "TrainCollator",
    "build_prompt",
    "build_train_dataset",
    "encode_prompt",
    "tokenize_example",
    "truncate_ids",
    "uses_chat_template",
]

IGNORE_INDEX = -100
"""Label value ignored by ``torch.nn.CrossEntropyLoss`` (and by peft's virtual-token padding)."""


def build_prompt(tokenizer: PreTrainedTokenizerBase, task: str | Task, row: Row) -> str:
    """The prompt text (:meth:`Task.prompt_text <hf_tsprompt.data.Task.prompt_text>`): for
    the built-in tasks the user turn in the chat template with the generation prompt
    (instruct models), else ``task.plain_prompt(row)`` (``Question: ...\\nAnswer:``)."""
    return get_task(task).prompt_text(tokenizer, row)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, task: str | Task | None = None
) -> list[int]:
    """Token ids of a prompt exactly as training and evaluation both see it. Special tokens
    are added as ``task.prompt_special_tokens`` says (without a task: only when the tokenizer
    has no chat template, since a chat template already writes any BOS token into the text)."""
    if task is None:
        special = not uses_chat_template(tokenizer)
    else:
        special = get_task(task).prompt_special_tokens(tokenizer)
    return list(tokenizer(prompt, add_special_tokens=special)["input_ids"])


def truncate_ids(
    ids: Sequence[int], budget: int, side: Literal["middle", "left"] = "middle"
) -> list[int]:
    """Shorten ``ids`` to ``budget`` tokens. ``middle`` (default) keeps the first and last
    halves, LongBench's own practice: the chat-template header and the question (which
    comes last) survive and the long context loses its middle; ``left`` drops the start."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    if budget <= 0:
        return []
    if side == "left":
        return ids[-budget:]
    if side != "middle":
        raise ConfigError(f"truncation side must be 'middle' or 'left', got {side!r}")
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head) :]


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    task: str | Task,
    row: Row,
    max_length: int = 1024,
    truncation: Literal["middle", "left"] = "middle",
) -> dict[str, list[int]]:
    """Training features of one row: ``input_ids`` = prompt + target + eos, ``labels`` =
    -100 over the prompt and the target ids after it, ``attention_mask`` all ones (the
    target ids are ``task.completion_ids``: for the built-in tasks the target text and eos).

    Prompt and target are tokenized separately so the prompt ids equal what
    :func:`~hf_tsprompt.evaluation.evaluate_model` feeds at generation time. When the
    example exceeds ``max_length`` the prompt is shortened (:func:`truncate_ids`) and the
    target is kept whole; if the target alone does not fit, a :class:`ConfigError` says so.
    Labels cover real tokens only: peft's ``PeftModelForCausalLM.forward`` prepends -100
    labels for the virtual tokens of prompt-learning methods itself.
    """
    task = get_task(task)
    prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, task, row), task)
    target_ids = task.completion_ids(tokenizer, row)
    budget = max_length - len(target_ids)
    if budget < 1:
        raise ConfigError(
            f"{task.name} row with reference {task.reference(row)!r}: the target needs "
            f"{len(target_ids)} tokens (with eos) but max_length is {max_length}; raise "
            "max_length so that at least one prompt token fits"
        )
    prompt_ids = truncate_ids(prompt_ids, budget, truncation)
    return {
        "input_ids": prompt_ids + target_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(target_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


def build_train_dataset(
    tokenizer: PreTrainedTokenizerBase,
    task: str | Task,
    rows: Sequence[Row],
    max_length: int = 1024,
    truncation: Literal["middle", "left"] = "middle",
) -> datasets.Dataset:
    """A ``datasets.Dataset`` of :func:`tokenize_example` features, one per row."""
    import datasets

    if not rows:
        raise DataError("no training rows; select at least one (single-sample: k=1)")
    task = get_task(task)
    features = [tokenize_example(tokenizer, task, r, max_length, truncation) for r in rows]
    columns = {key: [f[key] for f in features] for key in ("input_ids", "attention_mask", "labels")}
    return datasets.Dataset.from_dict(columns)


@dataclass
class TrainCollator(DataCollatorForSeq2Seq):
    """``DataCollatorForSeq2Seq`` that always pads on the right (-100 labels, 0 attention).

    The parent pads on ``tokenizer.padding_side``, which instruct tokenizers often set to
    ``"left"`` for generation; this collator pads with its own copy of the tokenizer set to
    right padding (and to eos as pad token when there is none), so the caller's tokenizer is
    never modified.
    """

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token is None:
            # Setting a special token on a shallow copy would write through to shared state.
            tokenizer = deepcopy(self.tokenizer)
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer = copy(self.tokenizer)  # padding_side is a plain attribute: cheap copy
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
