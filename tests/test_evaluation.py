"""Greedy batched evaluation and atomic result files (hf_tsprompt.evaluation)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from hf_tsprompt.data import TASKS, Task, build_prompt, encode_prompt, register_task
from hf_tsprompt.errors import ConfigError, DataError
from hf_tsprompt.evaluation import EvalResult, evaluate_model, greedy_prompt_learning, save_eval

ROWS = [
    {"input": "not True is", "target": "False", "task": ""},
    {"input": "True and ( False or True ) is", "target": "True", "task": ""},
    {"input": "( not False ) or False is", "target": "True", "task": ""},
    {"input": "False or not ( True and False ) and True is", "target": "True", "task": ""},
    {"input": "True is", "target": "True", "task": ""},
    {"input": "not not False is", "target": "False", "task": ""},
]


def _peft(model, method: str = "prompt"):
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        get_peft_model,
    )

    configs = {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p-tuning": PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
        ),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }
    return get_peft_model(model, configs[method])


@pytest.fixture
def echo_task():
    """Scores the raw generation against a gold string, so a test can choose which rows an
    untrained model gets right: gold = its own output (right) or an impossible text (wrong)."""

    @register_task
    class Echo(Task):
        name = "echo_test"
        hub_id = "example/echo"
        fields_help = 'rows need "input" and "gold"'

        def parse_row(self, raw, where):
            return dict(raw)

        def user_text(self, row):
            return row["input"]

        def target_text(self, row):
            return row["gold"]

        def reference(self, row):
            return row["gold"]

        def extract(self, text):
            return text

    yield Echo()
    del TASKS["echo_test"]


def test_accuracy_is_the_fraction_correct_and_matches_the_files(
    echo_task, tokenizer, tiny_model, tmp_path
):
    model = _peft(tiny_model)
    rows = [{"input": r["input"], "gold": "?"} for r in ROWS]
    first = evaluate_model(
        model, tokenizer, echo_task, rows, batch_size=4, max_new_tokens=6, progress=False
    )
    outputs = [p["generation"] for p in first.predictions]
    right = {0, 2, 3}
    scored = [
        {**row, "gold": outputs[i] if i in right else "<never generated>"}
        for i, row in enumerate(rows)
    ]
    result = evaluate_model(
        model, tokenizer, echo_task, scored, batch_size=4, max_new_tokens=6, progress=False
    )
    assert [p["generation"] for p in result.predictions] == outputs  # greedy: deterministic
    assert [p["correct"] for p in result.predictions] == [i in right for i in range(len(rows))]
    assert (result.correct, result.total, result.accuracy) == (3, 6, 0.5)

    summary_path, predictions_path = (
        tmp_path / "eval" / "summary.json",
        tmp_path / "eval" / "predictions.jsonl",
    )
    save_eval(result, summary_path, predictions_path)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    lines = predictions_path.read_text(encoding="utf-8").splitlines()
    predictions = [json.loads(line) for line in lines]  # valid JSONL: one object per line
    assert len(predictions) == summary["total"] == 6
    # Hand check of the file: correctness from extracted vs reference, accuracy = mean.
    hand = [p["extracted"] == p["reference"] for p in predictions]
    assert hand == [p["correct"] for p in predictions]
    assert summary["correct"] == sum(hand) and summary["accuracy"] == sum(hand) / len(hand)
    assert [p["index"] for p in predictions] == list(range(6))
    assert predictions[1]["prompt"] == build_prompt(tokenizer, echo_task, scored[1])
    assert set(predictions[0]) == {
        "index",
        "prompt",
        "generation",
        "extracted",
        "reference",
        "correct",
    }
    assert summary["task"] == "echo_test" and summary["new_tokens"] > 0


@pytest.mark.parametrize("method", ["prompt", "p-tuning", "prefix"])
def test_batched_generation_equals_one_at_a_time(tokenizer, tiny_model, method):
    """Left padding must not change what each row generates (prompts differ in length)."""
    model = _peft(tiny_model, method)
    one = evaluate_model(
        model, tokenizer, "bbh", ROWS, batch_size=1, max_new_tokens=8, progress=False
    )
    batched = evaluate_model(
        model, tokenizer, "bbh", ROWS, batch_size=4, max_new_tokens=8, progress=False
    )
    assert [p["generation"] for p in batched.predictions] == [
        p["generation"] for p in one.predictions
    ]
    assert batched.total == len(ROWS)
    assert batched.accuracy == sum(p["correct"] for p in batched.predictions) / len(ROWS)


@pytest.mark.parametrize("method", ["prompt", "p-tuning", "prefix"])
def test_prompt_learning_decoding_matches_the_training_forward(tokenizer, tiny_model, method):
    """Independent truth: peft's training forward over the whole unpadded sequence (virtual
    tokens inserted once, no cache). Our batched, left-padded, cached decoding must give the
    same next-token logits at every step. (peft 0.21's own generate() fails this under
    transformers 5: it re-inserts the soft prompt each step, or drops the prefix.)"""
    model = _peft(tiny_model, method).eval()
    pad = tokenizer.pad_token_id
    prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, "bbh", r)) for r in ROWS[:3]]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    steps = 5
    with torch.no_grad():
        tokens, logits = greedy_prompt_learning(
            model, input_ids, attention, max_new_tokens=steps, eos_ids=[], pad_id=pad
        )
        assert tokens.shape == (3, steps) and len(logits) == steps
        offset = 0 if method == "prefix" else 4  # prompt/P-tuning logits include virtual tokens
        for row, prompt in enumerate(prompts):
            sequence = torch.tensor([prompt + tokens[row].tolist()])
            full = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0]
            for step in range(steps):
                expected = full[offset + len(prompt) - 1 + step]
                torch.testing.assert_close(logits[step][row], expected, atol=1e-4, rtol=1e-4)
                assert int(tokens[row, step]) == int(expected.argmax())


def test_plain_model_and_restored_state(tokenizer, tiny_model, capfd):
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "right"
    tiny_model.train()
    result = evaluate_model(tiny_model, tok, "bbh", ROWS, batch_size=3, max_new_tokens=4)
    assert tok.padding_side == "right" and tiny_model.training
    assert result.total == 6 and 0 <= result.new_tokens <= 6 * 4
    assert "eval bbh" in capfd.readouterr().err  # the progress bar
    evaluate_model(tiny_model, tok, "bbh", ROWS[:2], max_new_tokens=2, progress=False)
    assert "eval bbh" not in capfd.readouterr().err


def test_stops_at_eos(tokenizer, tiny_model):
    """Everything from the first stop token on is cut (here: every token is a stop token)."""
    tiny_model.generation_config.eos_token_id = list(range(len(tokenizer)))
    result = evaluate_model(
        tiny_model, tokenizer, "bbh", ROWS[:2], max_new_tokens=5, progress=False
    )
    assert [p["generation"] for p in result.predictions] == ["", ""]
    assert result.new_tokens == 2


def test_bad_arguments(tokenizer, tiny_model):
    with pytest.raises(DataError, match="no rows"):
        evaluate_model(tiny_model, tokenizer, "bbh", [], progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_model(tiny_model, tokenizer, "bbh", ROWS, batch_size=0, progress=False)


def _result(correct: bool) -> EvalResult:
    prediction = {"index": 0, "prompt": "p", "generation": "g", "extracted": "g",
                  "reference": "g" if correct else "h", "correct": correct}  # fmt: skip
    return EvalResult(
        accuracy=float(correct), correct=int(correct), total=1, predictions=[prediction]
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_save_eval_is_atomic(tmp_path, monkeypatch):
    summary, predictions = tmp_path / "eval.json", tmp_path / "predictions.jsonl"
    save_eval(_result(True), summary, predictions)
    before = _snapshot(tmp_path)
    assert json.loads(before["eval.json"])["accuracy"] == 1.0

    broken = _result(False)
    broken.predictions[0]["extracted"] = object()  # not JSON-serialisable
    with pytest.raises(TypeError):
        save_eval(broken, summary, predictions)
    assert _snapshot(tmp_path) == before

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # fails mid-write, after the temp file has data
    with pytest.raises(OSError, match="disk full"):
        save_eval(_result(False), summary, predictions)
    assert _snapshot(tmp_path) == before  # old files intact, no temp files left behind
    monkeypatch.undo()

    save_eval(_result(False), summary, predictions)
    assert json.loads(summary.read_text(encoding="utf-8"))["accuracy"] == 0.0
    assert json.loads(predictions.read_text(encoding="utf-8"))["correct"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "predictions.jsonl"]
