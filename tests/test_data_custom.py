"""The ``custom`` task (hf_tsprompt.data.custom): TRL's formats, scorers, splits, sources.

Expected texts and token ids are written out by hand (the tiny tokenizer's ChatML template,
``tiny.CHAT_TEMPLATE``) or computed the way TRL's SFTTrainer tokenizes each format (prompt
and prompt + completion through the tokenizer or its chat template; the completion is what
follows the prompt), never with the code under test.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hf_tsprompt.data import (
    IGNORE_INDEX,
    TASKS,
    CustomTask,
    Scorer,
    Task,
    build_prompt,
    encode_prompt,
    get_task,
    load_subsets,
    load_task_rows,
    register_task,
    tokenize_example,
)
from hf_tsprompt.errors import ConfigError, DataError

from tiny import CAPITALS


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _messages(country: str, capital: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": capital},
        ]
    }


def _pairs(country: str, capital: str) -> dict:
    return {"prompt": f"Capital of {country}:", "completion": f" {capital}"}


# --------------------------------------------------------------------------- scorers


@pytest.mark.parametrize(
    "name,generation,completion,correct",
    [
        ("exact", "The Paris.", "paris", True),  # articles, case, punctuation normalised
        ("exact", "Paris, France", "Paris", False),
        ("contains", "The capital is Paris.", "Paris", True),
        ("contains", "Parisian food", "Paris", False),  # whole words only
        ("choice", "I think the answer is (C).", "C", True),
        ("choice", "B) because", "The answer is (B).", True),
        ("choice", "(A) or (B)", "B", False),  # first parenthesised letter: A
        ("number", "so 1,080 in total\n#### $1,080.00", "#### 1080", True),
        ("number", "It makes 72 clips.", "48 + 24 = 72\n#### 72", True),
        ("number", "#### 71", "#### 72", False),
        ("number", "no digits here", "#### 72", False),
    ],
)
def test_scorers_compare_what_they_promise(name, generation, completion, correct):
    scorer = Scorer(name)
    assert scorer.correct(scorer.answer(generation), scorer.reference(completion)) is correct


def test_regex_scorer_uses_the_last_capture_and_falls_back_to_the_whole_completion():
    scorer = Scorer("regex", r"Answer: (\w+)")
    assert scorer.answer("Answer: Quito. No wait. Answer: Lima!") == "lima"
    assert scorer.reference("Lima") == "lima"  # no match in the completion: all of it
    assert scorer.reference("Answer: Lima") == "lima"
    assert scorer.answer("Lima") is None  # a generation must match the pattern
    assert Scorer("regex", r"\d+").answer("from 3 to 15") == "15"  # no group: the match


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "fuzzy"}, "data.scorer='fuzzy' is not allowed"),
        ({"name": "regex"}, "data.answer_pattern goes with data.scorer: regex"),
        ({"name": "exact", "pattern": "x"}, "data.answer_pattern is set but data.scorer"),
        ({"name": "regex", "pattern": "(unclosed"}, "data.answer_pattern .* is not a valid"),
    ],
)
def test_bad_scorers_name_their_recipe_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Scorer(**kwargs)


# --------------------------------------------------------------------------- formats


def test_conversational_rows_render_with_the_chat_template_and_train_on_the_answer(
    tmp_path, tokenizer
):
    path = _jsonl(tmp_path / "chat.jsonl", [_messages(c, k) for c, k in CAPITALS])
    task = get_task("custom", source=str(path))
    (row,) = [r for r in load_task_rows(task, split="train") if r["answer"] == "Lima"]
    prompt = build_prompt(tokenizer, task, row)
    assert prompt == (
        "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"
    )
    features = tokenize_example(tokenizer, task, row)
    # TRL (SFTTrainer.tokenize): the whole conversation through the template, the loss on
    # what follows the prompt.
    whole = tokenizer.apply_chat_template(
        _messages("Peru", "Lima")["messages"], tokenize=True, return_dict=True
    )["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == list(whole)
    assert features["labels"] == [IGNORE_INDEX] * len(prompt_ids) + list(whole)[len(prompt_ids) :]
    answer = [
        t for t, label in zip(features["input_ids"], features["labels"], strict=True) if label >= 0
    ]
    assert tokenizer.decode(answer) == "Lima<|im_end|>\n"
    assert task.user_text(row) == "What is the capital of Peru?"
    assert task.hub_id is None and task.reference(row) == "lima"


def test_conversational_prompt_completion_equals_the_same_conversation(tmp_path, tokenizer):
    rows = [
        {"prompt": m["messages"][:1], "completion": m["messages"][1:]}
        for m in (_messages(c, k) for c, k in CAPITALS)
    ]
    split = get_task("custom", source=str(_jsonl(tmp_path / "pc.jsonl", rows)))
    joined = get_task(
        "custom",
        source=str(_jsonl(tmp_path / "m.jsonl", [_messages(c, k) for c, k in CAPITALS])),
    )
    a = load_task_rows(split, split="train")
    b = load_task_rows(joined, split="train")
    assert [tokenize_example(tokenizer, split, r) for r in a] == [
        tokenize_example(tokenizer, joined, r) for r in b
    ]


def test_text_prompt_completion_is_used_as_text_with_eos_as_trl_does(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "pairs.jsonl", [_pairs(c, k) for c, k in CAPITALS])
    task = get_task("custom", source=str(path), scorer="contains")
    (row,) = [r for r in load_task_rows(task, split="train") if "Peru" in r["prompt"]]
    assert build_prompt(tokenizer, task, row) == "Capital of Peru:"  # no chat template
    features = tokenize_example(tokenizer, task, row)
    # TRL: prompt and prompt + completion + eos through the tokenizer itself.
    prompt_ids = tokenizer("Capital of Peru:")["input_ids"]
    whole = tokenizer("Capital of Peru: Lima<|im_end|>")["input_ids"]
    assert features["input_ids"] == whole
    assert features["labels"] == [IGNORE_INDEX] * len(prompt_ids) + whole[len(prompt_ids) :]
    assert encode_prompt(tokenizer, "Capital of Peru:", task) == prompt_ids
    assert task.is_correct(task.extract("It is Lima, of course."), row)


def test_columns_name_the_users_own_columns(tmp_path, tokenizer):
    rows = [{"q": f"Capital of {c}:", "a": f" {k}", "id": i} for i, (c, k) in enumerate(CAPITALS)]
    path = _jsonl(tmp_path / "qa.jsonl", rows)
    task = get_task("custom", source=str(path), columns={"prompt": "q", "completion": "a"})
    train, test = load_subsets(task, k=3, n_test=5, seed=0)
    assert len(train) == 3 and len(test) == 5
    chat = [{"chat": m["messages"]} for m in (_messages(c, k) for c, k in CAPITALS)]
    task = get_task(
        "custom", source=str(_jsonl(tmp_path / "c.jsonl", chat)), columns={"messages": "chat"}
    )
    assert load_task_rows(task, split="train")[0]["reference"] == "paris"


@pytest.mark.parametrize(
    "rows,columns,match",
    [
        ([{"q": "x", "a": "y"}], None, "no 'prompt'/'completion' or 'messages' columns"),
        ([{"prompt": "x"}], None, "prompt-only rows have no completion"),
        ([{"text": "x y"}], None, "language-modelling rows"),
        ([{"q": "x", "a": "y"}], {"prompt": "q", "completion": "answer"}, "no column 'answer'"),
        ([{"q": "x", "a": "y"}], {"question": "q"}, "unknown key data.columns.question"),
        ([{"q": "x"}], {"messages": "m", "prompt": "q"}, "both messages and prompt"),
    ],
)
def test_missing_or_unusable_columns_are_config_errors_naming_data_columns(
    tmp_path, rows, columns, match
):
    path = _jsonl(tmp_path / "d.jsonl", rows * 4)
    with pytest.raises(ConfigError, match=match) as err:
        task = get_task("custom", source=str(path), columns=columns)
        load_subsets(task, k=1, n_test=1)
    assert "data.columns" in str(err.value)


@pytest.mark.parametrize(
    "row,match",
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]},
            "must end with an assistant message",
        ),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "after at least one prompt"),
        ({"messages": "hello"}, "must be a non-empty list of messages"),
    ],
)
def test_bad_rows_are_data_errors_naming_the_row(tmp_path, row, match):
    good = _messages("France", "Paris")
    path = _jsonl(tmp_path / "d.jsonl", [good, row] if row["messages"] != "hello" else [row])
    with pytest.raises(DataError, match=match) as err:
        load_task_rows(get_task("custom", source=str(path)), split="train")
    assert str(path) in str(err.value)


def test_a_scorer_that_finds_no_reference_refuses_the_row(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [_pairs("France", "Paris")])
    with pytest.raises(DataError, match="'number' scorer finds no answer in the completion"):
        load_task_rows(get_task("custom", source=str(path), scorer="number"), split="train")


def test_conversations_need_a_chat_template(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", [_messages("France", "Paris")])
    task = get_task("custom", source=str(path))
    (row,) = load_task_rows(task, split="train")
    bare = copy.deepcopy(tokenizer)  # the session fixture stays untouched
    bare.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        tokenize_example(bare, task, row)


# --------------------------------------------------------------------------- sources, splits


def test_one_file_is_one_pool_drawn_disjointly(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [_messages(c, k) for c, k in CAPITALS])
    task = get_task("custom", source=str(path))
    train, test = load_subsets(task, k=4, n_test=6, seed=1)
    answers = {r["answer"] for r in train} | {r["answer"] for r in test}
    assert task.single_split and answers == {k for _, k in CAPITALS}  # all ten, no overlap
    with pytest.raises(ConfigError, match=r"10 usable rows but 11 are needed.*data.train_size"):
        load_subsets(task, k=5, n_test=6)


def test_a_folder_with_split_files_keeps_its_splits(tmp_path):
    _jsonl(tmp_path / "d" / "train.jsonl", [_messages(c, k) for c, k in CAPITALS[:6]])
    _jsonl(tmp_path / "d" / "test.jsonl", [_messages(c, k) for c, k in CAPITALS[6:]])
    task = get_task("custom", source=str(tmp_path / "d"))
    train, test = load_subsets(task, k=6, n_test=4)
    assert {r["answer"] for r in test} == {"Oslo", "Santiago", "Hanoi", "Canberra"}
    assert {r["answer"] for r in train} == {k for _, k in CAPITALS[:6]}
    with pytest.raises(ConfigError, match="data.test_size"):
        load_subsets(task, k=1, n_test=5)  # the test file holds 4 rows


def test_split_fractions_are_datasets_split_expressions(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [_messages(c, k) for c, k in CAPITALS])
    task = get_task("custom", source=str(path), train_split="train[:70%]", test_split="train[70%:]")
    train, test = load_subsets(task, k=7, n_test=3)
    assert {r["answer"] for r in test} == {"Santiago", "Hanoi", "Canberra"}  # rows 8-10
    assert {r["answer"] for r in train} == {k for _, k in CAPITALS[:7]}
    assert not task.single_split


@pytest.mark.parametrize(
    "split_key,value,match",
    [
        ("test_split", "validation", "data.test_split 'validation'.*its splits: train"),
        ("train_split", "dev", "data.train_split 'dev'.*its splits: train"),
    ],
)
def test_a_missing_split_is_a_config_error_naming_its_key(tmp_path, split_key, value, match):
    path = _jsonl(tmp_path / "d.jsonl", [_messages(c, k) for c, k in CAPITALS])
    with pytest.raises(ConfigError, match=match):
        load_subsets(get_task("custom", source=str(path), **{split_key: value}), k=1, n_test=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "data.source is required for task 'custom'"),
        ({"source": "/no/such/file.jsonl"}, "data.source '/no/such/file.jsonl' does not exist"),
        ({"source": "notes.txt"}, "unsupported file type '.txt'"),
    ],
)
def test_bad_sources_are_config_errors_naming_data_source(tmp_path, monkeypatch, kwargs, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=match):
        get_task("custom", **kwargs)


def test_a_hub_dataset_is_read_by_id_and_is_the_tasks_hub_id(hub):
    rows = [_messages(c, k) for c, k in CAPITALS]
    hub.push(
        "alice/capitals-chat",
        {
            "train.jsonl": "".join(json.dumps(r) + "\n" for r in rows[:6]),
            "test.jsonl": "".join(json.dumps(r) + "\n" for r in rows[6:]),
        },
        repo_type="dataset",
    )
    task = get_task("custom", source="alice/capitals-chat")
    assert task.hub_id == "alice/capitals-chat" and not task.local
    train, test = load_subsets(task, k=2, n_test=4)
    assert {r["answer"] for r in test} == {"Oslo", "Santiago", "Hanoi", "Canberra"}
    assert {r["answer"] for r in train} <= {k for _, k in CAPITALS[:6]}
    assert hub.requests("GET", r"^/datasets/alice/capitals-chat/resolve/.*/test\.jsonl$")
    with pytest.raises(ConfigError, match="data.source 'alice/no-such-data'.*Hub dataset"):
        load_subsets(get_task("custom", source="alice/no-such-data"), k=1, n_test=1)


# --------------------------------------------------------------------------- the registry


def test_a_task_needs_no_hub_id_and_then_needs_a_source(tmp_path):
    @register_task
    class Pairs(Task):
        name = "pairs_test"
        fields_help = 'rows need "input" and "target"'

        def parse_row(self, raw, where):
            return {
                "input": self.text(raw, "input", where),
                "target": self.text(raw, "target", where),
            }

        def user_text(self, row):
            return row["input"]

        def target_text(self, row):
            return row["target"]

        def reference(self, row):
            return row["target"]

        def extract(self, text):
            return text.strip() or None

    try:
        assert Pairs.hub_id is None
        with pytest.raises(ConfigError, match="has no Hub id.*data.source"):
            load_task_rows("pairs_test")
        path = _jsonl(tmp_path / "p.jsonl", [{"input": "a", "target": "b"}] * 3)
        assert len(load_task_rows("pairs_test", path)) == 3
    finally:
        del TASKS["pairs_test"]
    with pytest.raises(ConfigError, match="hub_id must be"):

        @register_task
        class Blank(Pairs):
            name = "blank_test"
            hub_id = ""


def test_custom_is_registered_and_declares_its_recipe_keys():
    assert TASKS["custom"] is CustomTask
    assert set(CustomTask.options) == {
        "source",
        "columns",
        "scorer",
        "answer_pattern",
        "train_split",
        "test_split",
    }
