"""Your own data: the ``custom`` task, for rows in TRL's standard dataset formats.

Owns :class:`CustomTask` (``data: {task: custom, source: my.jsonl}`` in a recipe) and the
scorers it evaluates with (:class:`Scorer`, :data:`SCORERS`). The rows are what people who
train with TRL already hold (``trl.data_utils``; TRL's "dataset formats" page):

* prompt-completion: ``{"prompt": "...", "completion": "..."}``: the prompt is used as it is,
  the completion gets the eos token (TRL's ``add_eos``), and nothing goes through a chat
  template, exactly as ``SFTTrainer`` treats this format;
* conversational prompt-completion: ``{"prompt": [messages], "completion": [messages]}``;
* conversational: ``{"messages": [messages]}``: the last message (an assistant turn) is the
  completion, the messages before it the prompt.

Conversations are rendered by TRL's own :func:`trl.data_utils.apply_chat_template` (the
prompt with the generation prompt, the completion as the rest of the whole conversation),
so the text is what ``SFTTrainer`` trains on. The loss covers the completion only. Column
names are configurable (``columns={"prompt": "question", "completion": "answer"}`` or
``{"messages": "chat"}``); without them the format is read off the columns, as TRL does.
Prompt-only and language-modelling rows (``{"text"}``) have no completion to train on or
score against and are refused.

The data is read with ``datasets.load_dataset`` (a Hub dataset id, with ``config``; a local
``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file; a folder that ``load_dataset`` reads,
such as ``train.jsonl`` + ``test.jsonl``), so splits are ``datasets`` split expressions,
fractions included (``train[:80%]``). A source with a single split (a single file) is one
pool: test rows are drawn from it first and training rows after them, disjoint.

Scoring: each test prompt is answered by greedy generation and compared with the
completion's text by the named scorer (:data:`SCORERS`). ``hub_id`` is the source when the
source is a Hub dataset id and None for a local file or folder, so a model card names the
real dataset or none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hf_tsprompt.data.answers import final_number, normalize_text, option_letter
from hf_tsprompt.data.tasks import Row, Task, register_task, uses_chat_template
from hf_tsprompt.errors import ConfigError

__all__ = ["CHOICE_LETTERS", "COLUMN_ROLES", "SCORERS", "CustomTask", "Scorer"]

SCORERS: dict[str, str] = {
    "exact": "the whole generation equals the completion after normalisation (lower case, no "
    "punctuation, articles or extra spaces)",
    "contains": "the normalised completion appears in the normalised generation as whole words",
    "choice": "the option letter (A-J) the generation gives equals the completion's",
    "number": "the final number (after the last '####', else the last number) equals the "
    "completion's",
    "regex": "what answer_pattern captures (its first group, else the match; the last match "
    "in the text) equals the completion's capture (or the whole completion, when the pattern "
    "does not match it), normalised",
}
"""The scorers a recipe names in ``data.scorer``, with what each compares."""

CHOICE_LETTERS = "ABCDEFGHIJ"
"""Option letters the ``choice`` scorer recognises."""

COLUMN_ROLES = ("prompt", "completion", "messages")
"""The keys of ``data.columns``: which of the user's columns plays which TRL role."""

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?$")


class Scorer:
    """One of :data:`SCORERS`: the answer a text gives (:meth:`answer`, applied to the
    generation and to the completion alike) and whether two answers match (:meth:`correct`)."""

    def __init__(self, name: str = "exact", pattern: str | None = None) -> None:
        if name not in SCORERS:
            raise ConfigError(
                f"data.scorer={name!r} is not allowed; choose one of {', '.join(SCORERS)}."
            )
        if (name == "regex") != (pattern is not None):
            raise ConfigError(
                "data.answer_pattern goes with data.scorer: regex (and only with it): "
                "give both, e.g. scorer: regex, answer_pattern: 'Answer: (\\w+)'."
                if name == "regex"
                else f"data.answer_pattern is set but data.scorer is {name!r}; set "
                "data.scorer: regex, or remove data.answer_pattern."
            )
        self.name = name
        self.pattern = None
        if pattern is not None:
            try:
                self.pattern = re.compile(pattern)
            except re.error as err:
                raise ConfigError(
                    f"data.answer_pattern {pattern!r} is not a valid regular expression ({err})."
                ) from None

    def __repr__(self) -> str:
        extra = f", pattern={self.pattern.pattern!r}" if self.pattern else ""
        return f"Scorer({self.name!r}{extra})"

    def _capture(self, text: str) -> str | None:
        assert self.pattern is not None
        found = list(self.pattern.finditer(text))
        if not found:
            return None
        last = found[-1]
        return last.group(1) if self.pattern.groups else last.group(0)

    def answer(self, text: str) -> str | None:
        """The normalised answer a text gives, or None when it gives none."""
        if self.name == "choice":
            return option_letter(text, CHOICE_LETTERS)
        if self.name == "number":
            return final_number(text)
        if self.name == "regex":
            captured = self._capture(text)
            return (normalize_text(captured) or None) if captured is not None else None
        return normalize_text(text) or None

    def reference(self, completion: str) -> str | None:
        """The gold answer of a completion; ``regex`` falls back to the whole completion."""
        if self.name == "regex" and self._capture(completion) is None:
            return normalize_text(completion) or None
        return self.answer(completion)

    def correct(self, extracted: str | None, reference: str) -> bool:
        """Whether a generation's answer matches the gold one."""
        if extracted is None:
            return False
        if self.name == "contains":
            return f" {reference} " in f" {extracted} "
        return extracted == reference


def _split_bases(expression: str) -> list[str]:
    """The split names in a ``datasets`` split expression (``train[:80%]+validation``)."""
    return [part.split("[", 1)[0].strip() for part in expression.split("+")]


def _is_message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, Mapping) and "role" in m for m in value)
    )


@register_task
class CustomTask(Task):
    """The user's own data in TRL's prompt-completion or conversational format (see the
    module docstring); ``data: {task: custom, source: ...}`` in a recipe.

    ``source``: a local file or folder, or a Hub dataset id (with ``config``). ``columns``:
    ``{"prompt": ..., "completion": ...}`` or ``{"messages": ...}`` when the columns have
    other names. ``scorer`` / ``answer_pattern``: see :data:`SCORERS`. ``train_split`` /
    ``test_split``: ``datasets`` split expressions (``train``, ``test``, ``train[:80%]``).
    """

    name = "custom"
    hub_id = None
    options: ClassVar[tuple[str, ...]] = (
        "source",
        "columns",
        "scorer",
        "answer_pattern",
        "train_split",
        "test_split",
    )
    fields_help = (
        'rows need "prompt" and "completion" (texts, or lists of {"role", "content"} messages) '
        'or "messages" (a conversation ending with the assistant turn)'
    )

    def __init__(
        self,
        config: str | None = None,
        *,
        source: str | Path | None = None,
        columns: Mapping[str, str] | None = None,
        scorer: str = "exact",
        answer_pattern: str | None = None,
        train_split: str = "train",
        test_split: str = "test",
    ) -> None:
        super().__init__(config)
        if source is None or not str(source).strip():
            raise ConfigError(
                "data.source is required for task 'custom': a local .jsonl / .json / .csv / "
                ".parquet file or folder, or a Hub dataset id (user/name)."
            )
        self.source = str(source)
        path = Path(self.source).expanduser()
        self.local = path.exists()
        if not self.local and not _HUB_ID.match(self.source):
            raise ConfigError(
                f"data.source {self.source!r} does not exist; give an existing file or folder, "
                "or a Hub dataset id (user/name)."
            )
        if self.local:
            self.source = str(path.resolve())
            if path.is_file() and path.suffix.lower() not in _FILE_BUILDERS:
                raise ConfigError(
                    f"data.source {self.source!r}: unsupported file type {path.suffix!r}; use "
                    f"one of {', '.join(_FILE_BUILDERS)}."
                )
            if config is not None and path.is_file():
                raise ConfigError(
                    f"data.config {config!r} names a config of a Hub dataset; the local file "
                    f"{self.source} has none: remove data.config."
                )
        self.hub_id = None if self.local else self.source
        self.scorer = Scorer(scorer, answer_pattern)
        self.roles = self._roles(columns)
        self.train_split, self.test_split = train_split, test_split
        self._dataset: Any = None
        self._resolved: dict[str, str] | None = None
        self._format: tuple[str, bool] | None = None  # ("messages"|"prompt_completion", chat)

    def __repr__(self) -> str:
        return f"CustomTask(source={self.source!r}, scorer={self.scorer!r})"

    @staticmethod
    def _roles(columns: Mapping[str, str] | None) -> dict[str, str] | None:
        if columns is None:
            return None
        if not isinstance(columns, Mapping):
            raise ConfigError(
                "data.columns must map roles to your column names, e.g. {prompt: question, "
                "completion: answer} or {messages: chat}."
            )
        for role, column in columns.items():
            if role not in COLUMN_ROLES:
                raise ConfigError(
                    f"unknown key data.columns.{role}; its keys are the TRL roles "
                    f"{', '.join(COLUMN_ROLES)}, each mapped to one of your column names."
                )
            if not isinstance(column, str) or not column:
                raise ConfigError(f"data.columns.{role} must be a column name, got {column!r}.")
        if "messages" in columns and ({"prompt", "completion"} & set(columns)):
            raise ConfigError(
                "data.columns names both messages and prompt/completion columns; choose one "
                "format: {messages: ...} or {prompt: ..., completion: ...}."
            )
        if "messages" in columns:
            return {"messages": columns["messages"]}
        return {
            "prompt": columns.get("prompt", "prompt"),
            "completion": columns.get("completion", "completion"),
        }

    # -- reading the source with datasets.load_dataset
    def _load(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        import datasets

        path = Path(self.source)
        if self.local and path.is_file() and not path.read_bytes().strip():
            raise ConfigError(
                f"data.source {self.source!r} is empty; add rows to it (one JSON object per line "
                "for .jsonl)."
            )
        try:
            if self.local and path.is_file():
                builder = _FILE_BUILDERS[path.suffix.lower()]
                self._dataset = datasets.load_dataset(builder, data_files=str(path))
            elif self.local:
                self._dataset = datasets.load_dataset(str(path), self.config)
            else:
                self._dataset = datasets.load_dataset(self.source, self.config)
        except Exception as err:  # missing repo, bad file, no network: one recipe problem
            what = "the file or folder" if self.local else "the Hub dataset"
            message = " ".join(str(err).split())[:400]
            raise ConfigError(
                f"data.source {self.source!r}: datasets.load_dataset could not read {what} "
                f"({type(err).__name__}: {message}). Check the path or Hub id"
                + ("" if self.local else " (and data.config, the network and your token)")
                + "."
            ) from None
        return self._dataset

    def _resolve(self) -> dict[str, str]:
        """The split expression of each logical split, the format, checked against the data."""
        if self._resolved is not None:
            return self._resolved
        available = list(self._load())
        listed = ", ".join(available) or "none"

        def known(expression: str) -> bool:
            return all(base in available for base in _split_bases(expression))

        test = self.test_split
        if not known(test):
            if test == "test" and len(available) == 1:
                test = available[0]  # one split (a single file): one pool
            else:
                raise ConfigError(
                    f"data.test_split {test!r}: {self.source} has no such split (its splits: "
                    f"{listed}); name one of them, or a fraction such as "
                    f"'{available[0] if available else 'train'}[80%:]'."
                )
        train = self.train_split
        if not known(train):
            if train == "train" and len(available) == 1:
                train = test
            else:
                raise ConfigError(
                    f"data.train_split {train!r}: {self.source} has no such split (its splits: "
                    f"{listed}); name one of them, or a fraction such as "
                    f"'{available[0] if available else 'train'}[:80%]'."
                )
        self._format = self._detect_format({train, test})
        self._resolved = {"train": train, "test": test}
        self.splits = self._resolved
        return self._resolved

    def _detect_format(self, expressions: set[str]) -> tuple[str, bool]:
        from trl.data_utils import is_conversational

        dataset = self._load()
        bases = sorted({b for e in expressions for b in _split_bases(e)})
        columns = set(dataset[bases[0]].column_names)
        for base in bases[1:]:
            columns &= set(dataset[base].column_names)
        roles = self.roles
        if roles is None:  # read the format off the columns, as TRL does
            if "prompt" in columns and "completion" in columns:
                roles = {"prompt": "prompt", "completion": "completion"}
            elif "messages" in columns:
                roles = {"messages": "messages"}
            else:
                kind = (
                    "prompt-only rows have no completion"
                    if "prompt" in columns
                    else "language-modelling rows ('text') have no prompt/completion split"
                    if "text" in columns
                    else "no 'prompt'/'completion' or 'messages' columns were found"
                )
                raise ConfigError(
                    f"data.columns: {self.source} (splits {', '.join(bases)}; columns: "
                    f"{', '.join(sorted(columns)) or 'none'}): {kind}. A soft prompt is trained "
                    "on a completion and scored against it: give prompt-completion or "
                    "conversational rows, or name your columns with data.columns: {prompt: "
                    "..., completion: ...} or {messages: ...}."
                )
        missing = [c for c in roles.values() if c not in columns]
        if missing:
            named = ", ".join(f"{r}: {c}" for r, c in roles.items())
            raise ConfigError(
                f"data.columns: {self.source} (splits {', '.join(bases)}) has no column "
                f"{missing[0]!r} (wanted {{{named}}}; its columns: "
                f"{', '.join(sorted(columns)) or 'none'}); name your columns with "
                "data.columns: {prompt: ..., completion: ...} or {messages: ...}."
            )
        self.roles = roles
        if "messages" in roles:
            return "messages", True
        first = dataset[bases[0]][0] if len(dataset[bases[0]]) else {}
        example = {
            "prompt": first.get(roles["prompt"]),
            "completion": first.get(roles["completion"]),
        }
        return "prompt_completion", bool(first) and is_conversational(example)

    @property
    def single_split(self) -> bool:
        resolved = self._resolve()
        return resolved["train"] == resolved["test"]

    def hub_split(self, split: str) -> str:
        return self._resolve().get(split, split)

    def own_split(self, split: str) -> tuple[str, Sequence[Any]]:
        """(label, rows) of a logical split, read with ``datasets.load_dataset``."""
        import datasets

        expression = self.hub_split(split)
        dataset = self._load()
        if expression in dataset:
            rows = dataset[expression]
        else:  # a fraction or a sum of splits: datasets' own split syntax
            parts = []
            for part in expression.split("+"):
                base, _, rest = part.strip().partition("[")
                parts.append(self._slice(dataset[base], rest.rstrip("]"), part))
            rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return f"{self.source} split {expression!r}", rows

    def _slice(self, dataset: Any, spec: str, part: str) -> Any:
        """``train[10:20]``, ``train[:80%]``: the rows a ``datasets`` split slice selects."""
        if not spec:
            return dataset
        from datasets.arrow_reader import ReadInstruction

        try:
            instruction = ReadInstruction.from_spec(f"x[{spec}]")
            (absolute,) = instruction.to_absolute({"x": len(dataset)})
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"data split {part!r} is not a valid split slice ({err}).") from None
        return dataset.select(range(absolute.from_, absolute.to))

    # -- rows
    def _messages(self, value: Any, where: str, field: str) -> list[dict[str, str]]:
        if not _is_message_list(value):
            raise self._fail(where, f"field {field!r} must be a non-empty list of messages")
        out = []
        for i, message in enumerate(value):
            content = message.get("content")
            if not isinstance(content, str):
                raise self._fail(
                    where, f"field {field!r} message {i} needs text 'content' (text-only data)"
                )
            out.append({"role": str(message["role"]), "content": content})
        return out

    def parse_row(self, raw: Mapping[str, Any], where: str) -> Row:
        self._resolve()
        assert self._format is not None and self.roles is not None
        kind, chat = self._format
        if kind == "messages":
            field = self.roles["messages"]
            messages = self._messages(raw.get(field), where, field)
            if messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise self._fail(
                    where,
                    f"field {field!r} must end with an assistant message (the completion) "
                    "after at least one prompt message",
                )
            prompt: Any = messages[:-1]
            completion: Any = messages[-1:]
        else:
            p_field, c_field = self.roles["prompt"], self.roles["completion"]
            if chat:
                prompt = self._messages(raw.get(p_field), where, p_field)
                completion = self._messages(raw.get(c_field), where, c_field)
            else:
                prompt = self.text(raw, p_field, where)
                completion = self.text(raw, c_field, where)
        answer = "\n".join(m["content"] for m in completion) if chat else completion
        reference = self.scorer.reference(answer)
        if reference is None:
            raise self._fail(
                where,
                f"the {self.scorer.name!r} scorer finds no answer in the completion "
                f"{answer!r:.80} ({SCORERS[self.scorer.name]})",
            )
        return {
            "prompt": prompt,
            "completion": completion,
            "answer": answer,
            "reference": reference,
            "chat": chat,
        }

    def _rendered(self, tokenizer: Any, row: Row) -> dict[str, str]:
        from trl.data_utils import apply_chat_template

        if not uses_chat_template(tokenizer):
            raise ConfigError(
                "conversational rows are rendered with the tokenizer's chat template and this "
                "tokenizer has none: use a model with a chat template (model.name_or_path), or "
                "prompt-completion rows with text prompts (data.source)."
            )
        return apply_chat_template(
            {"prompt": row["prompt"], "completion": row["completion"]}, tokenizer
        )

    def prompt_text(self, tokenizer: Any, row: Row) -> str:
        if row["chat"]:
            return self._rendered(tokenizer, row)["prompt"]
        return row["prompt"]

    def prompt_special_tokens(self, tokenizer: Any) -> bool:
        # TRL: text prompts are tokenized with the tokenizer's special tokens, rendered
        # conversations without them (the template writes them).
        self._resolve()
        assert self._format is not None
        return not self._format[1]

    def completion_ids(self, tokenizer: Any, row: Row) -> list[int]:
        if row["chat"]:
            text = self._rendered(tokenizer, row)["completion"]
        else:
            eos = tokenizer.eos_token
            if eos is None:
                raise ConfigError(
                    "the tokenizer has no eos token; set tokenizer.eos_token so completions "
                    "can end with it"
                )
            text = row["completion"] if row["completion"].endswith(eos) else row["completion"] + eos
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_text(self, row: Row) -> str:
        if row["chat"]:
            users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
            return users[-1] if users else row["prompt"][-1]["content"]
        return row["prompt"]

    def target_text(self, row: Row) -> str:
        return row["answer"]

    def reference(self, row: Row) -> str:
        return row["reference"]

    def extract(self, text: str) -> str | None:
        return self.scorer.answer(text)

    def is_correct(self, extracted: str | None, row: Row) -> bool:
        return self.scorer.correct(extracted, row["reference"])
